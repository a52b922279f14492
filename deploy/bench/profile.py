"""Step profile (issue 13, item 5): where a duet-rl driver step's time goes, from the run's own timings.

Read from the rows every run writes to ``metrics.parquet`` (via :class:`deploy.bench.duet_run.Phase`),
nothing re-timed here. Per step:

- generation = ``rollout/time/sample``: the driver's wait for the step's rollouts (launch -> every
  episode back, scored). In async mode this is only the part not hidden behind the previous update;
- update = ``learner/policy/time/step``: the learner rank's update, timed inside the rank;
- publish + proof = ``sync/policy/latency_s``: the weight-sync service's latency (adapter handed over
  -> every worker loaded it and proved it with the probe);
- driver overhead = step - the three: Ray round trips, the adapter export and the learner's probe,
  the driver's Python work per episode and logging.

Means and medians are over the steady steps (warm-up left out) of every repetition pooled.
"""

from __future__ import annotations

from typing import Sequence

from deploy.bench.duet_run import Phase
from deploy.bench.report import Section
from deploy.bench.stats import steady, summarize

TITLE = "Step profile: where a duet-rl step's time goes"
PARTS = ("generation (wait for rollouts)", "update (inside the learner rank)",
         "publish + proof (weight-sync service)", "driver overhead (rest of the step)")


def step_parts(phase: Phase, warmup: int) -> dict[str, list[float]]:
    """Seconds of each of :data:`PARTS` and of the whole step, per steady step of ``phase``."""
    step, gen = steady(phase.step_s, warmup), steady(phase.sample_s, warmup)
    update = steady(phase.learner_s, warmup)
    sync = steady(phase.sync_s, warmup) if phase.sync_s else [0.0] * len(step)
    rest = [s - g - u - p for s, g, u, p in zip(step, gen, update, sync)]
    return {"step": step, PARTS[0]: gen, PARTS[1]: update, PARTS[2]: sync, PARTS[3]: rest}


def pooled(phases: Sequence[Phase], warmup: int) -> dict[str, list[float]]:
    """:func:`step_parts` of every phase, concatenated part by part."""
    out: dict[str, list[float]] = {}
    for phase in phases:
        for name, values in step_parts(phase, warmup).items():
            out.setdefault(name, []).extend(values)
    return out


def profile_rows(label: str, phases: Sequence[Phase], warmup: int) -> list[tuple]:
    """Rows (work, mode, part, steps, mean s, p50 s, share of the mean step %) for each mode."""
    rows = []
    for mode in sorted({p.mode for p in phases}, key=("sync", "async").index):
        parts = pooled([p for p in phases if p.mode == mode], warmup)
        step_mean = summarize(parts["step"]).mean
        for name in ("step", *PARTS):
            s = summarize(parts[name])
            share = 100.0 * s.mean / step_mean if step_mean > 0 else None
            rows.append((label, mode, "whole step (wall)" if name == "step" else name, s.n, s.mean, s.p50, share))
    return rows


def section(works: Sequence[tuple[str, Sequence[Phase], int]], number: str = "6") -> Section:
    """The profile section (numbered ``number``) of ``works``: (label, the runs' phases, warm-up steps per phase)."""
    rows = [row for label, phases, warmup in works for row in profile_rows(label, phases, warmup)]
    title = f"{number}. {TITLE}, {', '.join(label for label, _, _ in works)}"
    return Section(
        "profile", title, ("work", "driver mode", "part", "steps", "mean s", "p50 s", "% of mean step"), tuple(rows),
        notes=("From the run's own timings (metrics.parquet rows): generation = `rollout/time/sample`, update = "
               "`learner/policy/time/step` (inside the rank), publish + proof = `sync/policy/latency_s` (service: "
               "adapter handed over -> every worker proved it), driver overhead = the rest of `rollout/time/step` "
               "(Ray round trips, adapter export and the learner's probe, per-episode Python work, logging).",
               "In async mode generation of step t+1 runs during the update of step t: its row is only the wait "
               "left over, and the parts need not add up to a sum of work done.",
               "Steady steps of every repetition pooled (warm-up steps of each run left out)."),
        data={"rows": [list(r) for r in rows]})
