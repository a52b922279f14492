"""Checkpoint / resume of a learner group: resuming gives the same next update as not stopping.

Layout of one checkpoint directory (every rank calls :func:`save`)::

    deepspeed/state/...     DeepSpeed: trainable weights (adapter + value head; the frozen base is
                            excluded), each rank's optimizer partition, LR scheduler state, and the
                            learner counters as client state
    rng_rank<r>.pt          each rank's torch (and Python) RNG state (LoRA dropout stream): tensors,
                            a tuple of ints, a dict
    learner_state.json      the learner counters, readable without torch
    COMPLETE                written last by rank 0 after all ranks finished; :func:`load` refuses a
                            directory without it (a crash mid-save leaves no usable half-checkpoint)

The learner counters hold the train-step count (it seeds the minibatch shuffle), the SFT step
count and the running reward-normalisation statistics. Resume needs the same world size (ZeRO
optimizer partitions are per rank).

Loading never runs code from the checkpoint: every file is unpickled with torch's restricted
unpickler (``weights_only=True``: tensors, containers, primitives), DeepSpeed's files with a short
allow-list of its own plain classes (:class:`learner.deepspeed_engine.SafeCheckpointEngine`); a file
that names anything else is refused (:class:`UnsafeCheckpoint`). Checksums of the files are the
run's business (:mod:`cluster.checkpoints` writes and verifies a manifest per checkpoint step).
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import torch

__all__ = ["save", "load", "COMPLETE", "UnsafeCheckpoint"]

COMPLETE = "COMPLETE"
TAG = "state"


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that the restricted unpickler refused: it names a class or function outside
    the allow-list (a checkpoint from elsewhere, or a malicious one); nothing of it was executed."""


def safe_load(path: Path, what: str, loader):
    """``loader()`` (a restricted torch load of ``path``), a refusal re-raised as one line."""
    try:
        return loader()
    except pickle.UnpicklingError as err:
        lines = str(err).splitlines() or [""]
        reason = next((ln.strip() for ln in lines if "GLOBAL" in ln), lines[0])  # the class it named
        raise UnsafeCheckpoint(f"{path}: {what} refused by the restricted unpickler ({reason})") from None


def rng_state() -> dict:
    """This process's torch (CPU and, if present, CUDA) and Python RNG states."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(zero, directory: str | Path, learner_state: dict, rank: int) -> str:
    """Write a checkpoint of ``zero`` (a :class:`~learner.deepspeed_engine.ZeroEngine`) and the
    learner counters; collective: every rank must call it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    zero.save(d / "deepspeed", TAG, {"learner": learner_state})
    torch.save(rng_state(), d / f"rng_rank{rank}.pt")
    zero.barrier()
    if rank == 0:
        (d / "learner_state.json").write_text(json.dumps(learner_state, indent=2, sort_keys=True))
        (d / COMPLETE).write_text("")
    zero.barrier()
    return str(d)


def load(zero, directory: str | Path, rank: int, config: dict) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the learner counters.
    Raises if the checkpoint is incomplete or was written for another role."""
    d = Path(directory)
    if not (d / COMPLETE).exists():
        raise FileNotFoundError(f"{d}: no {COMPLETE} marker (missing or interrupted checkpoint)")
    state = safe_load(d / "deepspeed", "DeepSpeed state", lambda: zero.load(d / "deepspeed", TAG))["learner"]
    saved_role = state["config"]["role"]
    if saved_role != config["role"]:
        raise ValueError(f"{d}: checkpoint of role {saved_role!r}, this learner trains {config['role']!r}")
    rng_file = d / f"rng_rank{rank}.pt"
    if not rng_file.exists():
        raise FileNotFoundError(f"{rng_file}: checkpoint was written by a smaller world")
    set_rng_state(safe_load(rng_file, "RNG state", lambda: torch.load(rng_file, weights_only=True)))
    return state
