"""One learner group: all data-parallel ranks of one role's learner, driven like a single object.

:class:`LearnerGroup` is written once, over a small :class:`Ranks` backend that runs one function
on every rank at once (DeepSpeed collectives need all ranks) and returns every rank's result. The
functions are the ranks' capabilities, ``fn(rank: LearnerRank, *args)`` (:mod:`learner.update`,
:mod:`learner.sft_step`, :mod:`learner.rank_io`), passed as functions, never by name. Backends:

* :class:`learner.local_world.LocalRanks` -- spawned processes without Ray (tests, scripts);
* :class:`cluster.learner_group.RayRanks` -- one Ray actor per rank.

Every method returns rank 0's answer. The other ranks answer None (every rank's answer is the same
global result, or only rank 0 made one, like the adapter's bytes), so nothing of theirs travels;
an error on any rank raises.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

import torch

from learner import rank_io, sft_step, update
from learner.export import ExportedAdapter
from learner.metrics import SFTMetrics, UpdateMetrics
from learner.sft import SFTExample
from learner.update import Probe
from rollout.episode_arrow import EpisodeBatch

if TYPE_CHECKING:
    from learner.rank import LearnerRank

__all__ = ["Ranks", "LearnerGroup", "on_rank0", "rank0_result"]


class Ranks(Protocol):
    """Where the ranks of one learner group run."""

    init_seconds: float
    """Seconds the slowest rank took to join the world and load its model."""

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(rank, *args)`` on every rank at once (``rank``: that process's
        :class:`~learner.rank.LearnerRank`); the results by rank. Raises if any rank failed."""
        ...

    def keep(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """As :meth:`run`, but each non-None result stays where it was made: the results are handles
        to them where the ranks are remote (Ray: a one-element list holding an ObjectRef, so Ray
        does not resolve it when it is passed on), the results themselves where they are local."""
        ...

    def close(self) -> None:
        """Release the ranks (their models and engines)."""
        ...


def on_rank0(fn: Callable[..., Any], rank: LearnerRank, *args: Any) -> Any:
    """``fn(rank, *args)`` on every rank; only rank 0's answer is returned (the others' None)."""
    out = fn(rank, *args)
    return out if rank.rank == 0 else None


def rank0_result(results: Sequence[Any]) -> Any:
    """Rank 0's result of one collective call (ranks > 0 must have answered None)."""
    if any(r is not None for r in results[1:]):
        raise RuntimeError("learner ranks > 0 returned results; only rank 0's are expected")
    return results[0]


class LearnerGroup:
    """All ranks of one role's learner (see the module doc)."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks
        self.init_seconds = ranks.init_seconds

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return rank0_result(self.ranks.run(partial(on_rank0, fn), *args))

    def train_step(self, batch: EpisodeBatch) -> UpdateMetrics:
        """One RL update on ``batch`` (:func:`learner.update.train_step`)."""
        return self._call(update.train_step, batch)

    def sft_step(self, examples: Sequence[SFTExample]) -> SFTMetrics:
        """One supervised step on ``examples`` (:func:`learner.sft_step.sft_step`)."""
        return self._call(sft_step.sft_step, list(examples))

    def logprobs(self, batch: EpisodeBatch, use_adapter: bool = True) -> list[list[float]]:
        """Log-probs of the output tokens of each of the role's trainable turns in ``batch``."""
        return self._call(update.logprobs, batch, use_adapter)

    def probe_logprobs(self, probe: Probe) -> list[float]:
        """Log-probs of the probe's target tokens under the current adapter."""
        return self._call(update.probe_logprobs, probe)

    def adapter_ref(self, version: int) -> Any:
        """The current adapter as artifact ``version`` (:class:`rollout.adapter_artifact.AdapterArtifact`),
        left where rank 0 made it: with Ray a one-element list holding its ObjectRef (the bytes never
        reach the caller), locally the artifact itself."""
        return rank0_result(self.ranks.keep(partial(on_rank0, rank_io.adapter_artifact), version))

    def export_adapter(self, out_dir: str | Path, version: int) -> ExportedAdapter:
        """Write the current adapter as ``version`` to ``out_dir`` (atomic, by rank 0)."""
        return self._call(rank_io.export_adapter, str(out_dir), version)

    def value_head_state(self) -> dict[str, torch.Tensor]:
        """Full value-head weights (empty without one)."""
        return self._call(rank_io.value_head_state)

    def save_checkpoint(self, directory: str | Path) -> str:
        """Save everything needed to resume into ``directory``; returns it."""
        return self._call(rank_io.save_checkpoint, str(directory))

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (same number of ranks)."""
        self._call(rank_io.load_checkpoint, str(directory))

    def shutdown(self) -> None:
        """Release the ranks."""
        self.ranks.close()
