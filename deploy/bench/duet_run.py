"""Drive the real duet-rl system for a number of steps and keep its per-step figures.

The run is started and stopped by the lifecycle ``duet train`` uses (:func:`cluster.run.live_run`:
Ray, the data, placement groups, a DeepSpeed learner rank, a vLLM rollout worker, the weight-sync
service, version 1 published and proven; then teardown), and :meth:`cluster.driver.Driver.train`
runs the phases one after the other on the same actors: e.g. ``[("sync", 8), ("async", 6)]``.
Per-step figures are the driver's own (the rows of the run's ``metrics.parquet``, long format: step,
scope, name, value): ``rollout/time/step`` (sample -> update -> sync, wall), ``rollout/time/sample``
(waiting for the step's rollouts), the learner rank's ``learner/policy/time/step`` (inside the
rank) and the weight-sync service's latency of the step's publish (``sync/policy/latency_s``).
Start-up (Ray, actors, first publish) is timed separately and never enters a step. Peak memory of
every process is sampled meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from deploy.bench.memory import PeakSampler, RolePeak, own_peak_mib
from deploy.bench.settings import E2ESettings, model_dirs, recipe_overrides


@dataclass(frozen=True)
class Phase:
    """Steps ``[start, end)`` run in one driver mode, with the driver's figures of each step."""

    mode: str
    start: int
    end: int
    step_s: tuple[float, ...]
    """(end - start,) ``rollout/time/step``."""
    sample_s: tuple[float, ...]
    """(end - start,) ``rollout/time/sample``."""
    learner_s: tuple[float, ...]
    """(end - start,) ``learner/policy/time/step``."""
    samples: tuple[float, ...]
    """(end - start,) episodes trained per step (``learner/policy/batch/samples``)."""
    sync_s: tuple[float, ...] = ()
    """(end - start,) the weight-sync service's latency of the step's publishes (``sync/<role>/latency_s``,
    summed; 0 for a step that published nothing), or () when not read."""


@dataclass(frozen=True)
class DuetRun:
    startup_s: float
    """Ray start, actors up, version 1 published and proven (not part of any step)."""
    phases: tuple[Phase, ...]
    memory: tuple[RolePeak, ...]
    driver_peak_mib: float
    counters: Mapping[str, int] = field(default_factory=dict)
    """The driver's counters at the end (worker restarts, retried shards, stale episodes dropped)."""
    processes: tuple[tuple[int, str, float], ...] = ()
    """(pid, role, peak MiB) of every role process seen."""


def step_figures(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Rows of a run's metrics (``step, scope, name, value``) -> step -> ``"scope/name"`` -> value;
    events (step -1) are left out."""
    out: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["step"] >= 0:
            out.setdefault(int(r["step"]), {})[f"{r['scope']}/{r['name']}"] = float(r["value"])
    return out


def sync_latencies(rows: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """Step -> summed ``sync/<role>/latency_s`` of the publishes made during it. Sync rows are events
    (step -1), written by ``Driver.publish`` between the step's loop rows and its step rows, so each
    belongs to the step of the last step row before it; a sync before any step (version 1 at start-up)
    is left out."""
    out: dict[int, float] = {}
    current = None
    for r in rows:
        if r["step"] >= 0:
            current = int(r["step"])
        elif current is not None and r["scope"].startswith("sync/") and r["name"] == "latency_s":
            out[current] = out.get(current, 0.0) + float(r["value"])
    return out


def phase_of(figures: Mapping[int, Mapping[str, float]], mode: str, start: int, end: int,
             syncs: Mapping[int, float] | None = None) -> Phase:
    """The :class:`Phase` of steps ``[start, end)``; raises KeyError naming a missing step/figure."""
    def col(key: str) -> tuple[float, ...]:
        return tuple(figures[s][key] for s in range(start, end))

    sync_s = () if syncs is None else tuple(syncs.get(s, 0.0) for s in range(start, end))
    return Phase(mode, start, end, col("rollout/time/step"), col("rollout/time/sample"),
                 col("learner/policy/time/step"), col("learner/policy/batch/samples"), sync_s)


def with_mode(recipe: Any, mode: str) -> Any:
    """``recipe`` with ``train.mode`` set (pydantic models are frozen: a changed copy)."""
    return recipe.model_copy(update={"train": recipe.train.model_copy(update={"mode": mode})})


def run_duet(e2e: E2ESettings, phases: Sequence[tuple[str, int]], work_dir: Path) -> DuetRun:
    """Start the system once, run ``phases`` (mode, steps) in order, tear it down (module doc)."""
    from cluster.config import load_recipe
    from cluster.progress import RunLog
    from cluster.run import live_run

    total = sum(n for _, n in phases)
    recipe = load_recipe(None, recipe_overrides(e2e, "bench", work_dir, total))
    log = RunLog(recipe.run_dir(), 0, print_lines=False)
    bounds = []
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        with live_run(recipe, log, model_dirs(recipe)) as live:
            startup = time.perf_counter() - t0
            driver, start = live.driver, 0
            for mode, n in phases:
                driver.recipe = with_mode(recipe, mode)
                driver.train(start, start + n, lambda step: None)
                bounds.append((mode, start, start + n))
                start += n
            counters = asdict(driver.counters)
    figures, syncs = step_figures(log.rows), sync_latencies(log.rows)
    processes = tuple((pid, role, kib / 1024) for pid, (role, kib) in sorted(sampler.peaks.items()))
    return DuetRun(startup, tuple(phase_of(figures, *b, syncs) for b in bounds), tuple(sampler.result()), own_peak_mib(),
                   counters, processes)
