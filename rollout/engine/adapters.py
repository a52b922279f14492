"""Checks a PEFT LoRA adapter directory before it reaches the inference engine.

vLLM fails badly on some bad adapters: one of higher rank than ``max_lora_rank`` kills or hangs the
engine, vision-tower modules are silently ignored unless tower LoRA is enabled, a half-written file
fails deep inside the worker (stack.md, "vLLM on CPU"). So the engine calls :func:`check_adapter`
first and refuses the adapter with :class:`~rollout.engine.base.AdapterRejected`, keeping the
previous version in service.

Pure Python: the safetensors header is parsed by hand (8-byte little-endian length + JSON, see
https://github.com/huggingface/safetensors#format), so no tensor is loaded and no heavy import is
needed; only the header is read, the data section is checked against the file size. The feature checks mirror vLLM's ``PEFTHelper.validate_legal`` (vllm/lora/peft_helper.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from rollout.adapter_artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS, file_sha256
from rollout.engine.base import AdapterRejected

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

MAX_HEADER_BYTES = 100_000_000
"""safetensors refuses headers above 100 MB (``N_LEN`` check in the reference implementation)."""

VISION_MARKERS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "mm_projector")
"""Module-path components that place a module in the vision tower or its connector."""

ModuleKey = tuple[bool, str]
"""(in the vision tower?, path from the layer-stack name on, e.g. "layers.0.self_attn.q_proj")."""


@dataclass(frozen=True)
class AdapterInfo:
    """What a passed check found."""

    rank: int
    """Largest rank over the adapter's modules."""
    alpha: float
    modules: tuple[str, ...]
    """Module paths carrying LoRA weights (checkpoint names, ``base_model.model.`` stripped)."""
    sha256: str
    """Hex sha256 of the weights when an expected one was given (and matched), else ""."""


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in a safetensors file, after checking the file is complete.

    Complete means: the header parses, each tensor's byte range matches its dtype and shape, the
    ranges tile the data section, and the file ends exactly where the last tensor does (a file cut
    short by an interrupted copy fails here). Raises ValueError otherwise.

    Reads only the 8-byte length and the JSON header; the data section is checked against the
    file's size from ``stat``, never read (a 7B model's shards are GBs, read at every engine start
    before this change). Content corruption of the same length is the checksum's job (done once
    where the artifact's bytes arrive, :meth:`rollout.adapter_artifact.AdapterArtifact.verify`).
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ValueError(f"{path}: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
            raise ValueError(f"{path}: header of {n} bytes runs past the end of the file ({size} bytes)")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: header of {n} bytes is over safetensors' limit of {MAX_HEADER_BYTES}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: header is not valid JSON ({e})") from e
    header.pop("__metadata__", None)
    shapes, end = _check_tensor_ranges(str(path), header)
    if 8 + n + end != size:
        raise ValueError(f"{path}: tensors end at byte {8 + n + end} but the file has {size} (truncated?)")
    return shapes


def _check_tensor_ranges(path: str, header: dict) -> tuple[dict[str, tuple[int, ...]], int]:
    """Shapes by name and the end offset of the data section; ranges must be contiguous."""
    shapes: dict[str, tuple[int, ...]] = {}
    offset = 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, stop = info["data_offsets"]
        if info["dtype"] not in DTYPE_BYTES:
            raise ValueError(f"{path}: tensor {name} has unknown dtype {info['dtype']!r}")
        size = math.prod(info["shape"]) * DTYPE_BYTES[info["dtype"]]
        if begin != offset or stop - begin != size:
            raise ValueError(f"{path}: tensor {name} occupies [{begin}, {stop}), expected {size} bytes at {offset}")
        shapes[name] = tuple(info["shape"])
        offset = stop
    return shapes, offset


def module_key(path: str) -> ModuleKey:
    """Normalise a module path so checkpoint and adapter names of one module compare equal.

    Keeps the path from the component before the first layer index ("layers.3.mlp.up_proj",
    "blocks.0.attn.qkv"); transformers 5 and PEFT prefix the same module differently
    ("model.language_model.layers.3..." vs "model.layers.3..."). Paths without an index keep
    their last component ("lm_head").
    """
    parts = path.split(".")
    vision = any(p in VISION_MARKERS for p in parts)
    idx = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    tail = parts[idx - 1 :] if idx else parts[-1:]
    return vision, ".".join(tail)


def base_linear_modules(model_dir: str | Path) -> dict[ModuleKey, tuple[int, int]]:
    """``(out_features, in_features)`` of every 2-D ``*.weight`` in the model's safetensors files."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    modules: dict[ModuleKey, tuple[int, int]] = {}
    for f in files:
        for name, shape in tensor_shapes(f).items():
            if name.endswith(".weight") and len(shape) == 2:
                modules[module_key(name.removesuffix(".weight"))] = (shape[0], shape[1])
    return modules


def _read_config(path: Path) -> dict:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except FileNotFoundError as e:
        raise AdapterRejected(f"{path}: {ADAPTER_CONFIG} is missing") from e
    except json.JSONDecodeError as e:
        raise AdapterRejected(f"{path}: {ADAPTER_CONFIG} is not valid JSON ({e})") from e
    if not isinstance(config, dict) or not isinstance(config.get("r"), int):
        raise AdapterRejected(f"{path}: {ADAPTER_CONFIG} has no integer rank 'r'")
    return config


def _config_problems(config: dict, max_rank: int) -> list[str]:
    """Unsupported PEFT features and over-large ranks (as vLLM's ``PEFTHelper.validate_legal``)."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config['peft_type']!r} is not LORA")
    if config.get("use_dora"):
        problems.append("DoRA is not supported by vLLM")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("adapter biases are not supported by vLLM")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save {config['modules_to_save']} is not supported by vLLM")
    rank = max([config["r"], *(config.get("rank_pattern") or {}).values()])
    if rank > max_rank:
        problems.append(f"rank {rank} > max_lora_rank {max_rank}")
    return problems


def _lora_pairs(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Module path -> (lora_A shape, lora_B shape). Raises AdapterRejected on other tensors."""
    pat = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$")
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        m = pat.match(name)
        if m is None:
            raise AdapterRejected(f"unsupported tensor {name!r} (only lora_A/lora_B weights are served)")
        parts.setdefault(m.group(1), {})[m.group(2)] = shape
    missing = [m for m, ab in parts.items() if set(ab) != {"A", "B"}]
    if missing:
        raise AdapterRejected(f"modules with only one of lora_A/lora_B: {missing[:3]}")
    return {m: (ab["A"], ab["B"]) for m, ab in parts.items()}


def _module_problem(module: str, a: tuple[int, ...], b: tuple[int, ...], base: Mapping[ModuleKey, tuple[int, int]],
                    max_rank: int, vision_lora: bool) -> str | None:
    """Why one module's (lora_A, lora_B) pair cannot be served, or None."""
    key = module_key(module)
    if key[0] and not vision_lora:
        return f"{module}: vision-tower LoRA would be ignored (enable_tower_connector_lora is off)"
    if key not in base:
        return f"{module}: no such linear module in the base model"
    out_f, in_f = base[key]
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        return f"{module}: lora_A {a} and lora_B {b} are not (r, in) and (out, r)"
    if a[0] > max_rank:
        return f"{module}: rank {a[0]} > max_lora_rank {max_rank}"
    if (b[0], a[1]) != (out_f, in_f):
        return f"{module}: adapter maps {a[1]} -> {b[0]} but the base layer maps {in_f} -> {out_f}"
    return None


def check_adapter(
    path: str | Path,
    max_rank: int,
    base_modules: Mapping[ModuleKey, tuple[int, int]],
    expected_sha256: str = "",
    vision_lora: bool = False,
) -> AdapterInfo:
    """Check a PEFT LoRA directory against the served base model; raise AdapterRejected if unfit.

    Checks, in order: ``adapter_config.json`` present, JSON, integer ``r``; no unsupported PEFT
    feature; max rank <= ``max_rank``; ``adapter_model.safetensors`` present, complete and matching
    ``expected_sha256`` when given (hashed only then: adapters from a sync were verified on arrival
    and come with an empty checksum); only lora_A/lora_B tensors; every module exists in the base
    model (``base_modules`` from :func:`base_linear_modules`), with shapes (r, in) / (out, r) that fit it;
    no vision-tower module unless ``vision_lora``.
    """
    path = Path(path)
    config = _read_config(path)
    problems = _config_problems(config, max_rank)
    if problems:
        raise AdapterRejected(f"{path}: " + "; ".join(problems))
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterRejected(f"{path}: {ADAPTER_WEIGHTS} is missing")
    digest = file_sha256(weights) if expected_sha256 else ""
    if digest != expected_sha256.lower():
        raise AdapterRejected(f"{weights}: sha256 {digest} != expected {expected_sha256}")
    try:
        shapes = tensor_shapes(weights)
    except ValueError as e:
        raise AdapterRejected(str(e)) from e
    pairs = _lora_pairs(shapes)
    if not pairs:
        raise AdapterRejected(f"{weights}: no LoRA tensors")
    problems = [p for m, (a, b) in pairs.items() if (p := _module_problem(m, a, b, base_modules, max_rank, vision_lora))]
    if problems:
        raise AdapterRejected(f"{path}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
    rank = max(a[0] for a, _ in pairs.values())
    return AdapterInfo(rank, float(config.get("lora_alpha", rank)), tuple(sorted(pairs)), digest)
