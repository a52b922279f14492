"""Rollouts in flight at a checkpoint: held as the next step's batch, saved beside the checkpoint,
trained first on ``--resume``.

A checkpoint written at the end of step t (``checkpoints/step_{t+1}``) finds the rollouts of step
t+1 already launched: in async mode before the update of step t, so generated one version behind;
in sync mode after it. Regenerating them on resume would sample from the restored (newer) adapter
and train different episodes than a run that never stopped (OpenRLHF #1322, TRL #7274). So the
driver waits for them at the checkpoint (the next step would wait for them anyway), keeps them as
that step's batch (:class:`Collected`), and writes them into the checkpoint directory::

    checkpoints/step_N/in_flight/episodes.parquet   the episodes (rollout.episode_arrow's storage schema)
    checkpoints/step_N/in_flight/images.parquet     every image their turns reference, once
    checkpoints/step_N/in_flight/stats.json         each shard's rollout stats (the step's logged figures)

plus an ``in_flight`` record in ``driver.json`` (:func:`save`'s return value): the step they were
launched for, how many episodes, the versions their lag is measured against and the versions that
generated them. A ``driver.json`` without that record (older checkpoints, or nothing in flight)
restores with nothing held: the step's rollouts are launched as before.

Staleness across a resume: restore republishes each checkpointed adapter under a new version number
(same weights), so the held episodes' lag is measured against the checkpoint's versions
(:attr:`Collected.versions`), never against the republished numbers, and ``train.max_staleness``
drops exactly what the uninterrupted run drops.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from rollout.episode_arrow import EpisodeBatch
from rollout.worker import RolloutStats

IN_FLIGHT_DIR = "in_flight"
"""Sub-directory of a checkpoint holding its in-flight rollouts."""


@dataclass(frozen=True)
class Collected:
    """One step's rollouts, gathered before that step trains them (at a checkpoint, or read back
    from one)."""

    step: int
    """The training step they were launched for (their episode ids and sampling seeds carry it)."""
    batch: EpisodeBatch
    """Every episode of the step, in shard order, with the images they reference."""
    stats: tuple[Any, ...]
    """One stats record per shard as the workers returned it (:class:`rollout.worker.RolloutStats`)."""
    versions: Mapping[str, int]
    """Adapter -> the version the batch's lag is measured against: the driver's when it was gathered.
    A restored batch keeps its checkpoint's (the republish at restore is the same weights, no update)."""


def generated_versions(batch: EpisodeBatch) -> dict[str, list[int]]:
    """Role -> the distinct adapter versions (sorted) that generated ``batch``'s episodes."""
    seen: dict[str, set[int]] = {}
    for e in batch.episodes:
        for role, v in e.policy_versions.items():
            seen.setdefault(role, set()).add(int(v))
    return {role: sorted(vs) for role, vs in sorted(seen.items())}


def save(checkpoint_dir: Path, held: Collected) -> dict[str, Any]:
    """Write ``held`` under ``checkpoint_dir/in_flight``; returns the ``in_flight`` record of the
    checkpoint's ``driver.json`` (what :func:`load` needs besides the files)."""
    directory = Path(checkpoint_dir) / IN_FLIGHT_DIR
    held.batch.write_parquet(directory)
    (directory / "stats.json").write_text(json.dumps([_stats_record(s) for s in held.stats]))
    return {"step": held.step, "episodes": len(held.batch), "versions": dict(held.versions),
            "generated": generated_versions(held.batch), "dir": IN_FLIGHT_DIR}


def load(checkpoint_dir: Path, record: Mapping[str, Any] | None) -> Collected | None:
    """The rollouts a checkpoint holds (``record``: its ``driver.json``'s ``in_flight``, None when
    absent: nothing was in flight); refuses files that do not match the record."""
    if not record:
        return None
    directory = Path(checkpoint_dir) / str(record.get("dir", IN_FLIGHT_DIR))
    batch = EpisodeBatch.read_parquet(directory)
    if len(batch) != int(record["episodes"]):
        raise ValueError(f"{directory}: {len(batch)} episodes, driver.json records {record['episodes']}")
    stats = tuple(_stats_from(r) for r in json.loads((directory / "stats.json").read_text()))
    versions = {str(a): int(v) for a, v in record["versions"].items()}
    return Collected(int(record["step"]), batch, stats, versions)


def _stats_record(stats: Any) -> dict[str, Any]:
    """A shard's stats as JSON: ``RolloutStats`` field by field, or a plain mapping (test fakes)."""
    if isinstance(stats, RolloutStats):
        return {"kind": "RolloutStats", "fields": asdict(stats)}
    if isinstance(stats, Mapping):
        return {"kind": "mapping", "fields": dict(stats)}
    raise TypeError(f"in-flight stats: cannot save {type(stats).__name__}")


def _stats_from(record: Mapping[str, Any]) -> Any:
    if record["kind"] == "RolloutStats":
        return RolloutStats(**record["fields"])
    if record["kind"] == "mapping":
        return dict(record["fields"])
    raise ValueError(f"in-flight stats: unknown kind {record['kind']!r}")
