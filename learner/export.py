"""Adapter export: the LoRA weights of a state dict as an :class:`rollout.adapter_artifact.AdapterArtifact`.

Only the torch/PEFT part lives here (state dict -> safetensors bytes, ``peft_config`` ->
``adapter_config.json``); the file names, manifest, checksum and the atomic writer are
:mod:`rollout.adapter_artifact`'s. Gathering the partitioned parameters is
:meth:`learner.deepspeed_engine.ZeroEngine.lora_state_dict`.

An adapter holding a NaN or an infinity is refused here (:func:`check_finite`, a
:class:`NonFiniteAdapter`), before any bytes are made: such weights must never reach a rollout worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save as safetensors_save

from rollout.adapter_artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterArtifact, write_artifact
from rollout.engine.base import AdapterRef

__all__ = ["adapter_artifact", "export_dir", "ExportedAdapter", "NonFiniteAdapter", "check_finite"]

ExportedAdapter = AdapterRef
"""Where an adapter version was written (``path``) and its checksum (``sha256``)."""


class NonFiniteAdapter(ValueError):
    """An adapter state dict holds a NaN or an infinity (the message names the tensor)."""


def check_finite(state: Mapping[str, torch.Tensor], role: str, version: int) -> None:
    """Raise :class:`NonFiniteAdapter` naming the first tensor of ``state`` (in key order) with a
    non-finite entry and how many it has."""
    for name in sorted(state):
        bad = int((~torch.isfinite(state[name])).sum())
        if bad:
            raise NonFiniteAdapter(f"adapter {role} v{version} refused: tensor {name!r} has {bad} non-finite "
                                   f"value(s) of {state[name].numel()}; the learner diverged")


def _config_bytes(peft_config, base_model_id: str) -> bytes:
    d = peft_config.to_dict()
    d = {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}
    d["base_model_name_or_path"] = base_model_id
    d["inference_mode"] = True
    return json.dumps(d, indent=2, sort_keys=True, default=str).encode()


def adapter_artifact(state: Mapping[str, torch.Tensor], peft_config, *, role: str, version: int,
                     base_model_id: str, step: int = 0) -> AdapterArtifact:
    """One adapter version from a LoRA state dict (keys as ``peft.get_peft_model_state_dict`` names
    them): PEFT config, safetensors weights and the manifest (learner ``step``, tensor count, rank,
    alpha beside the identity). A non-finite weight is a :class:`NonFiniteAdapter`."""
    check_finite(state, role, version)
    weights = safetensors_save({k: v.contiguous() for k, v in state.items()}, metadata={"format": "pt"})
    files = {ADAPTER_CONFIG: _config_bytes(peft_config, base_model_id), ADAPTER_WEIGHTS: weights}
    return AdapterArtifact.build(role, version, base_model_id, files, learner_step=step, num_tensors=len(state),
                                 lora_r=peft_config.r, lora_alpha=peft_config.lora_alpha)


def export_dir(artifact: AdapterArtifact, out_dir: str | Path) -> ExportedAdapter:
    """Write ``artifact`` to ``out_dir`` atomically; an existing directory holding the same artifact
    is kept, one holding another is a FileExistsError."""
    path = write_artifact(artifact, out_dir)
    return ExportedAdapter(artifact.role, artifact.version, str(path), artifact.sha256)
