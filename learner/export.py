"""Adapter export: the LoRA weights as a PEFT directory (``adapter_config.json`` +
``adapter_model.safetensors``) plus ``manifest.json``, written so readers never see half of it.

The files are first built in memory (:func:`adapter_files`: what the weight-sync service publishes
as bytes), then :func:`write_adapter` writes them into a private temporary sibling directory,
fsyncs them, writes a ``STABLE`` marker last (prime-rl's filesystem LoRA transport) and renames the
directory into place (atomic on POSIX). The manifest names the version, role, base model and the
sha256 of the safetensors bytes; :func:`verify_adapter_dir` recomputes it.

Only the rank-0-free part lives here (pure functions over a state dict); gathering the partitioned
parameters is :meth:`learner.deepspeed_engine.ZeroEngine.lora_state_dict`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save as safetensors_save

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "MANIFEST", "STABLE", "ExportedAdapter", "adapter_files",
           "write_adapter", "verify_adapter_dir", "sha256_hex"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "manifest.json"
STABLE = "STABLE"
FORMAT = "duet-rl-adapter/1"


@dataclass(frozen=True)
class ExportedAdapter:
    """Where an adapter version was written and its checksum."""

    path: str
    """The version directory (complete: manifest and STABLE marker present)."""
    sha256: str
    """Hex sha256 of ``adapter_model.safetensors``."""
    version: int
    role: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _config_bytes(peft_config, base_model_id: str) -> bytes:
    d = peft_config.to_dict()
    d = {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}
    d["base_model_name_or_path"] = base_model_id
    d["inference_mode"] = True
    return json.dumps(d, indent=2, sort_keys=True, default=str).encode()


def adapter_files(state: Mapping[str, torch.Tensor], peft_config, *, role: str, version: int,
                  base_model_id: str, step: int) -> dict[str, bytes]:
    """The three files of one adapter version as bytes: PEFT config, safetensors weights (keys as
    ``peft.get_peft_model_state_dict`` names them) and the manifest with their checksum."""
    weights = safetensors_save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    manifest = {"format": FORMAT, "role": role, "version": version, "base_model": base_model_id,
                "sha256": sha256_hex(weights), "learner_step": step, "num_tensors": len(state),
                "lora_r": peft_config.r, "lora_alpha": peft_config.lora_alpha}
    return {ADAPTER_CONFIG: _config_bytes(peft_config, base_model_id), ADAPTER_WEIGHTS: weights,
            MANIFEST: json.dumps(manifest, indent=2, sort_keys=True).encode()}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_adapter(files: Mapping[str, bytes], out_dir: str | Path) -> ExportedAdapter:
    """Write ``files`` to ``out_dir`` atomically (temp sibling + STABLE + rename). An existing
    complete directory with the same checksum is kept (idempotent); one with another is an error."""
    out = Path(out_dir)
    manifest = json.loads(files[MANIFEST])
    done = ExportedAdapter(str(out), manifest["sha256"], manifest["version"], manifest["role"])
    if out.exists():
        if verify_adapter_dir(out)["sha256"] != manifest["sha256"]:
            raise FileExistsError(f"{out} already holds a different adapter")
        return done
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _fsync_write(tmp / name, data)
        _fsync_write(tmp / STABLE, b"")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return done


def verify_adapter_dir(path: str | Path) -> dict:
    """The manifest of a complete adapter directory, after checking the STABLE marker and that the
    safetensors bytes hash to the manifest's sha256. Raises ValueError otherwise."""
    p = Path(path)
    if not (p / STABLE).exists():
        raise ValueError(f"{p}: no {STABLE} marker (incomplete adapter)")
    manifest = json.loads((p / MANIFEST).read_text())
    got = sha256_hex((p / ADAPTER_WEIGHTS).read_bytes())
    if got != manifest["sha256"]:
        raise ValueError(f"{p}: sha256 {got} != manifest {manifest['sha256']}")
    return manifest
