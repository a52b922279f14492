"""Header-only safetensors checks (rollout.engine.adapters): a base model's shards are never read.

The data section of the "model" here is a sparse 3 GiB file (a header for one big tensor, then
``truncate``): reading it whole would allocate 3 GiB; parsing the header costs kilobytes.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
from pathlib import Path

import pytest

from rollout.engine.adapters import base_linear_modules, tensor_shapes

pytestmark = pytest.mark.unit

SHAPE = (49152, 16384)  # F32: 49152 * 16384 * 4 bytes = 3 GiB exactly
DATA_BYTES = SHAPE[0] * SHAPE[1] * 4
NAME = "model.language_model.layers.0.mlp.down_proj.weight"


def sparse_shard(path: Path, data_bytes: int = DATA_BYTES) -> Path:
    """A safetensors file with one (49152, 16384) F32 tensor whose data is a hole of ``data_bytes``."""
    header = json.dumps({"__metadata__": {"format": "pt"},
                         NAME: {"dtype": "F32", "shape": list(SHAPE), "data_offsets": [0, DATA_BYTES]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    os.truncate(path, 8 + len(header) + data_bytes)
    return path


def test_3gib_shard_is_parsed_from_its_header_alone(tmp_path: Path) -> None:
    shard = sparse_shard(tmp_path / "model.safetensors")
    assert DATA_BYTES == 3 << 30
    assert shard.stat().st_size > 3 << 30
    tracemalloc.start()
    try:
        shapes = tensor_shapes(shard)
        modules = base_linear_modules(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert shapes == {NAME: SHAPE}
    assert modules == {(False, "layers.0.mlp.down_proj"): SHAPE}
    assert peak < 16 << 20, f"peak {peak} bytes: the data section was read"


def test_shard_cut_short_is_refused_with_its_sizes(tmp_path: Path) -> None:
    shard = sparse_shard(tmp_path / "model.safetensors", DATA_BYTES - 4096)
    size = shard.stat().st_size
    n = size - 8 - (DATA_BYTES - 4096)
    with pytest.raises(ValueError, match=rf"tensors end at byte {8 + n + DATA_BYTES} but the file has {size} "
                                         r"\(truncated\?\)"):
        tensor_shapes(shard)
    with pytest.raises(ValueError, match="truncated"):
        base_linear_modules(tmp_path)


def test_shard_with_trailing_bytes_is_refused(tmp_path: Path) -> None:
    shard = sparse_shard(tmp_path / "model.safetensors", DATA_BYTES + 1)
    with pytest.raises(ValueError, match="but the file has"):
        tensor_shapes(shard)


def test_header_length_beyond_the_file_is_refused_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ValueError, match=r"header of 1099511627776 bytes runs past the end of the file \(10 bytes\)"):
        tensor_shapes(f)
    f.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="2 bytes, too short for a safetensors header"):
        tensor_shapes(f)
