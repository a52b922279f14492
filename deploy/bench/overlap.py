"""Async overlap (issue 6, item 4): the async driver's step time against max(generation, training)
and against the synchronous driver, on one running system.

One :func:`deploy.bench.duet_run.run_duet` runs ``warmup + steps`` sync-mode steps, then the same in
async mode, on the same actors. From the sync steps (nothing overlaps there):

- generation time = ``rollout/time/sample`` (launch -> every episode back, scored),
- training time = ``rollout/time/step - rollout/time/sample`` (learner update + adapter publish and
  proof: everything the async driver tries to hide behind the next step's generation).

The bound is ``max(mean generation, mean training)``; the async figure is the mean async step.
The async driver's first step cannot overlap (nothing was launched before it), so its warm-up
covers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from deploy.bench.duet_run import DuetRun, Phase
from deploy.bench.report import Check, Section
from deploy.bench.settings import BenchSettings
from deploy.bench.stats import ratio, steady, summarize

TITLE = "4. Async overlap: async driver step vs max(generation, training) and vs the sync driver"
TARGET = 1.2


def sync_split(phase: Phase, warmup: int) -> tuple[list[float], list[float]]:
    """(generation s, training s) of each steady sync-mode step (see the module doc)."""
    gen = steady(phase.sample_s, warmup)
    step = steady(phase.step_s, warmup)
    return gen, [s - g for s, g in zip(step, gen)]


def section(cfg: BenchSettings, run: DuetRun) -> Section:
    w = cfg.overlap.warmup_steps
    sync_phase = next(p for p in run.phases if p.mode == "sync")
    async_phase = next(p for p in run.phases if p.mode == "async")
    gen, train = sync_split(sync_phase, w)
    sync_steps, async_steps = summarize(steady(sync_phase.step_s, w)), summarize(steady(async_phase.step_s, w))
    bound = max(summarize(gen).mean, summarize(train).mean)
    over_bound, vs_sync = ratio(async_steps.mean, bound), ratio(async_steps.mean, sync_steps.mean)
    rows = (("generation (sync steps)", summarize(gen).n, summarize(gen).mean, summarize(gen).p50),
            ("training: update + publish (sync steps)", summarize(train).n, summarize(train).mean, summarize(train).p50),
            ("  of which learner update (inside the rank)", len(gen), _mean(steady(sync_phase.learner_s, w)), None),
            ("max(generation, training)", None, bound, None),
            ("sync driver step", sync_steps.n, sync_steps.mean, sync_steps.p50),
            ("async driver step", async_steps.n, async_steps.mean, async_steps.p50),
            ("async step / max(generation, training)", None, over_bound, None),
            ("async step / sync step", None, vs_sync, None))
    check = Check(f"async step time <= {TARGET:g}x max(generation, training)",
                  f"{over_bound:.2f}x" if over_bound else "-", None if over_bound is None else over_bound <= TARGET)
    return Section(
        "overlap", TITLE, ("figure", "steps", "mean s (or ratio)", "p50 s"), rows, (check,),
        notes=("Same system, same work as section 1; sync steps first, then async steps (train.mode=\"async\", "
               "max_staleness 1), on the same actors.",
               "Generation and training are measured on the sync steps, where they do not overlap: generation = "
               "the driver's wait for the step's rollouts; training = the rest of the step (update + publish + proof).",
               f"{w} warm-up step(s) per mode left out (the async driver's first step cannot overlap). A publish "
               "waits for the worker's running rollout (one actor, calls run one at a time), so the async step "
               "is bounded below by generation + adapter load, not by generation alone.",
               "Overlap needs idle cores: with Linux's scheduler autogroups (on here) all processes of the benchmark's "
               "session share one CPU share, so on a machine oversubscribed by other users (see the load average "
               f"of this benchmark in the machine section) generation and training cannot both gain. Driver counters: "
               f"{dict(run.counters)}."),
        data={"generation_s": gen, "training_s": train, "sync_step_s": sync_phase.step_s,
              "async_step_s": async_phase.step_s, "async_sample_s": async_phase.sample_s,
              "learner_s": sync_phase.learner_s, "ratio_bound": over_bound, "ratio_sync": vs_sync})


def _mean(values: Sequence[float]) -> float:
    return summarize(values).mean


def run(cfg: BenchSettings, work: Path, duet: DuetRun | None = None) -> list[Section]:
    from deploy.bench.duet_run import run_duet

    o = cfg.overlap
    if duet is None:
        duet = run_duet(cfg.e2e, [("sync", o.warmup_steps + o.steps), ("async", o.warmup_steps + o.steps)], work)
    return [section(cfg, duet)]
