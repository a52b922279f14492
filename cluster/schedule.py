"""Pure pieces of the driver loop (no Ray): the training schedule, sharding, staleness, accounting."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Sequence

from cluster.config import TrainConfig
from rollout.types import Episode


def roles_at(train: TrainConfig, trainable: Sequence[str], step: int) -> tuple[str, ...]:
    """Roles updated at ``step``: all of them ("joint"), or one per phase in turn ("alternating")."""
    if train.schedule == "joint":
        return tuple(trainable)
    order = train.role_order or tuple(trainable)
    return (order[(step // train.phase_steps) % len(order)],)


def greedy_roles_at(train: TrainConfig, roles: Sequence[str], trainable: Sequence[str], step: int) -> tuple[str, ...]:
    """Roles that act greedily at ``step``: with ``frozen_roles = "greedy"``, every role of the
    rollout not trained at that step (sorted); else none."""
    if train.frozen_roles != "greedy":
        return ()
    return tuple(sorted(set(roles) - set(roles_at(train, trainable, step))))


def shard(items: Sequence[Any], n: int) -> list[list[Any]]:
    """Split ``items`` into ``n`` contiguous, near-equal shards (the first ones one larger)."""
    k, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + k + (1 if i < r else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def stale_episodes(episodes: Sequence[Episode], versions: dict[str, int], adapters: dict[str, str],
                   max_staleness: int) -> list[bool]:
    """For each episode: does any trained role's turn lag the adapter's current version by more than
    ``max_staleness``? ``adapters`` maps role -> adapter name."""
    out = []
    for e in episodes:
        lag = max((versions.get(adapters.get(r, ""), 0) - v for r, v in e.policy_versions.items()), default=0)
        out.append(lag > max_staleness)
    return out


@dataclass
class Counters:
    """Exact episode accounting: produced = trained + dropped (a test checks it).

    After a learner's death the run rewinds to its last checkpoint (:meth:`cluster.driver.Driver.recover`):
    every count goes back to the checkpoint's except the :data:`FAULTS`, so produced = trained +
    dropped still holds and counts each episode of the run's final history once; the episodes of the
    discarded history (the steps since the checkpoint, and what was in flight) are
    ``episodes_discarded``, so every episode generated is produced + episodes_discarded."""

    produced: int = 0
    trained: int = 0
    dropped_stale: int = 0
    retried_shards: int = 0
    worker_restarts: int = 0
    learner_restarts: int = 0
    """Learner groups started again after one of their ranks died."""
    steps_replayed: int = 0
    """Steps completed after the checkpoint a learner restart rewound to, then run again (the step
    the learner died in is not counted: it had not completed)."""
    episodes_discarded: int = 0
    """Training episodes of a history a learner restart discarded: those counted as produced after
    the checkpoint it rewound to, plus the rollouts in flight at the death (collected and thrown
    away). A batch the checkpoint itself held (async mode) is counted produced again when the
    replay trains it."""
    skipped_updates: int = 0
    """Role updates whose every optimizer step was skipped as non-finite (:mod:`cluster.divergence`)."""
    divergence_warnings: int = 0
    """Divergence warnings (entropy at its maximum, KL runaway), one per episode of divergence."""

    FAULTS: ClassVar[tuple[str, ...]] = ("retried_shards", "worker_restarts", "learner_restarts",
                                         "steps_replayed", "episodes_discarded")
    """Counts of what happened to the run, kept when a learner restart rewinds the others."""

    def restore(self, saved: Mapping[str, int]) -> None:
        """Take the counts of a checkpoint's ``driver.json`` (``saved``: field name -> count; a count
        it lacks, from an older checkpoint, keeps its value)."""
        unknown = set(saved) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"checkpoint counters: unknown names {sorted(unknown)}")
        for f in fields(self):
            setattr(self, f.name, int(saved.get(f.name, getattr(self, f.name))))

    def faults(self) -> dict[str, int]:
        """The :data:`FAULTS` counts now (to put back with :meth:`restore` after a rewind)."""
        return {name: getattr(self, name) for name in self.FAULTS}


def summarize(episodes: Sequence[Episode]) -> dict[str, float]:
    """Mean reward, success rate (over episodes where success is defined) and episode count."""
    n = len(episodes)
    defined = [e.success for e in episodes if e.success is not None]
    return {
        "episodes": float(n),
        "reward": sum(e.reward for e in episodes) / n if n else 0.0,
        "success": sum(defined) / len(defined) if defined else 0.0,
    }


def component_means(episodes: Sequence[Episode]) -> dict[str, float]:
    """``reward/<component>`` -> the mean of that reward component over the episodes that have it
    (composite rewards keep every part in ``Episode.reward_components``)."""
    values: dict[str, list[float]] = {}
    for e in episodes:
        for name, v in e.reward_components.items():
            values.setdefault(name, []).append(float(v))
    return {f"reward/{name}": sum(vs) / len(vs) for name, vs in sorted(values.items())}
