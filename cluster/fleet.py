"""The two small interfaces the driver runs on: a rollout fleet and a sync client (no Ray here).

A :class:`RolloutFleet` is the set of rollout workers: start a rollout or an evaluation of one shard
on one worker, get its result from the returned :class:`Pending` handle (which raises
:class:`WorkerDied` when the worker's process died during the call), and wait for a worker's
restart. A :class:`SyncClient` publishes a trained role's adapter version to every worker and proves
it (:class:`cluster.weight_sync.SyncReport`), and brings one worker up to date after a restart.
A :class:`Learner` whose rank dies during a call raises :class:`LearnerDied`; a
:class:`LearnerFactory` starts a fresh learner group for that role in its place.

Ray implementations live at the edge, in :mod:`cluster.ray_fleet`; ``tests/test_driver.py`` drives
:class:`cluster.driver.Driver` on in-process fakes of both.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from cluster.weight_sync import SyncReport
    from rollout.episode_arrow import EpisodeBatch


class CallKind(Enum):
    """What a worker runs on a shard: sampled rollouts for training, or the greedy evaluation."""

    ROLLOUT = "rollout"
    EVALUATE = "evaluate"


class WorkerDied(Exception):
    """The worker's process died during a call (its fleet restarts it; wait with
    :meth:`RolloutFleet.wait_restart`)."""

    def __init__(self, worker_id: str, detail: str = "") -> None:
        super().__init__(f"rollout worker {worker_id} died" + (f": {detail}" if detail else ""))
        self.worker_id = worker_id


class LearnerDied(Exception):
    """A rank of trained role ``role``'s learner group died during a call (update, adapter export,
    probe, checkpoint): the group is unusable (its world lost a member); the driver replaces it
    (:meth:`LearnerFactory.relaunch`) and rewinds the run to the last checkpoint."""

    def __init__(self, role: str, detail: str = "") -> None:
        super().__init__(f"learner {role} died" + (f": {detail}" if detail else ""))
        self.role = role


class LearnerRestartsSpent(RuntimeError):
    """A learner died once more than ``train.max_learner_restarts`` allows: the run stops."""


class Pending(Protocol):
    """A started call on one worker."""

    def result(self) -> tuple[EpisodeBatch, Any]:
        """(episodes, the call's stats); blocks until done; raises :class:`WorkerDied`."""
        ...


class RolloutFleet(Protocol):
    """The rollout workers of a run, by id."""

    def worker_ids(self) -> Sequence[str]:
        """Ids of every worker, sorted (shards are assigned in this order)."""
        ...

    def start(self, kind: CallKind, worker_id: str, items: Sequence[Any], versions: Mapping[str, int],
              step: int, greedy_roles: Sequence[str] = ()) -> Pending:
        """Start ``kind`` on ``items`` at worker ``worker_id``, requiring adapter ``versions``
        (adapter -> minimum version); ``greedy_roles`` only applies to rollouts."""
        ...

    def wait_restart(self, worker_id: str) -> int:
        """Block until worker ``worker_id`` is up (restarted after a death); its process id."""
        ...


class SyncClient(Protocol):
    """Publishes trained roles' adapters to every rollout worker and proves them."""

    def publish(self, role: str, version: int) -> SyncReport:
        """Export ``role``'s adapter as ``version``, load it on every worker, prove it; publishing
        the same version again (after a worker died during the sync) re-syncs only what is missing."""
        ...

    def catch_up(self, worker_id: str) -> list[SyncReport]:
        """Bring one (restarted) worker to the latest proven version of every role."""
        ...

    def served_versions(self) -> dict[str, dict[str, int]]:
        """Worker id -> adapter -> version it last proved serving."""
        ...


class Learner(Protocol):
    """One trained role's learner as the driver uses it (a :class:`cluster.learner_group.LearnerGroup`)."""

    def train_step(self, batch: EpisodeBatch) -> Any:
        """One RL update on ``batch``; the update's metrics (:class:`learner.metrics.UpdateMetrics`)."""
        ...

    def sft_step(self, examples: Sequence[Any]) -> Any:
        """One supervised step; its metrics (:class:`learner.metrics.SFTMetrics`, ``.loss`` read here)."""
        ...

    def save_checkpoint(self, directory: str | Path) -> Any: ...

    def load_checkpoint(self, directory: str | Path) -> None: ...


class LearnerFactory(Protocol):
    """Starts a trained role's learner group again after one of its ranks died."""

    def relaunch(self, role: str) -> Learner:
        """Release ``role``'s (dead) learner group and start a fresh one in its place (same ranks and
        resources; the sync client exports from the new one from now on); returns the new group,
        whose state the caller loads from a checkpoint."""
        ...
