"""What leaves a :class:`learner.rank.LearnerRank` and what restores it: the adapter artifact (on
rank 0), its export to a directory, the value head, and checkpoints. Every function is collective
(under ZeRO-3 all ranks take part in gathering the partitioned parameters)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from learner import checkpoint
from learner.algos import RunningMeanStd
from learner.export import ExportedAdapter, adapter_artifact as build_artifact, check_finite, export_dir
from rollout.adapter_artifact import AdapterArtifact

if TYPE_CHECKING:
    from learner.rank import LearnerRank

__all__ = ["adapter_artifact", "export_adapter", "value_head_state", "save_checkpoint", "load_checkpoint"]


def adapter_artifact(r: LearnerRank, version: int) -> AdapterArtifact | None:
    """The current adapter as artifact ``version`` on rank 0, None on the other ranks (they only
    join the gather, so one copy of the bytes is ever made). Every rank checks the gathered weights
    first, so a non-finite adapter is refused (:class:`learner.export.NonFiniteAdapter`) on all of
    them alike, before anything leaves the rank and before any later collective."""
    state = r.zero.lora_state_dict()
    check_finite(state, r.config.role, version)
    if r.rank != 0:
        return None
    peft_cfg = r.zero.module.peft_model.peft_config["default"]
    return build_artifact(state, peft_cfg, role=r.config.role, version=version, base_model_id=r.base_model_id,
                          step=r.step)


def export_adapter(r: LearnerRank, out_dir: str | Path, version: int) -> ExportedAdapter | None:
    """Write the adapter atomically to ``out_dir``; rank 0 writes and returns what it wrote, the
    other ranks return None once it is written."""
    artifact = adapter_artifact(r, version)
    result = export_dir(artifact, out_dir) if r.rank == 0 else None
    r.zero.barrier()
    return result


def value_head_state(r: LearnerRank) -> dict[str, torch.Tensor]:
    """Full value-head weights (empty without one)."""
    return r.zero.value_head_state()


def save_checkpoint(r: LearnerRank, directory: str | Path) -> str:
    """Save everything needed to resume; returns the directory (:mod:`learner.checkpoint`)."""
    state = {"step": r.step, "sft_steps": r.sft_steps, "reward_stats": r.reward_stats.state_dict(),
             "config": r.config.model_dump(mode="json")}
    return checkpoint.save(r.zero, directory, state, r.rank)


def load_checkpoint(r: LearnerRank, directory: str | Path) -> None:
    """Restore a checkpoint written by :func:`save_checkpoint` with the same world size."""
    state = checkpoint.load(r.zero, directory, r.rank, r.config.model_dump(mode="json"))
    r.step, r.sft_steps = int(state["step"]), int(state["sft_steps"])
    r.reward_stats = RunningMeanStd.from_state_dict(state["reward_stats"])
