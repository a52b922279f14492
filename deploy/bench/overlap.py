"""Async overlap (issue 6, item 4): the async driver's step time against max(generation, training)
and against the synchronous driver, on one running system.

One :func:`deploy.bench.duet_run.run_duet` runs ``warmup + steps`` sync-mode steps, then the same in
async mode, on the same actors. From the sync steps (nothing overlaps there):

- generation time = ``rollout/time/sample`` (launch -> every episode back, scored),
- training time = ``rollout/time/step - rollout/time/sample`` (learner update + adapter publish and
  proof: everything the async driver tries to hide behind the next step's generation).

The bound is ``max(mean generation, mean training)``; the async figure is the mean async step; the
ratio of the two is taken per run (each repetition of section 1a is a fresh system) and reported as
median and range. The async driver's first step cannot overlap (nothing was launched before it), so
its warm-up covers it.
"""

from __future__ import annotations

from typing import Sequence

from deploy.bench.duet_run import DuetRun, Phase
from deploy.bench.report import Check, Section
from deploy.bench.settings import BenchSettings
from deploy.bench.stats import spread, steady, summarize

TITLE = "4. Async overlap: async driver step vs max(generation, training) and vs the sync driver"
TARGET = 1.1
SYNC_TARGET_S = 0.1


def sync_split(phase: Phase, warmup: int) -> tuple[list[float], list[float]]:
    """(generation s, training s) of each steady sync-mode step (see the module doc)."""
    gen = steady(phase.sample_s, warmup)
    step = steady(phase.step_s, warmup)
    return gen, [s - g for s, g in zip(step, gen)]


def run_ratio(cfg: BenchSettings, run: DuetRun) -> tuple[float, dict[str, float]]:
    """One run's async step mean / max(mean generation, mean training) (module doc), and its figures."""
    w = cfg.overlap.warmup_steps
    sync_phase = next(p for p in run.phases if p.mode == "sync")
    async_phase = next(p for p in run.phases if p.mode == "async")
    gen, train = sync_split(sync_phase, w)
    g, t = summarize(gen).mean, summarize(train).mean
    sync_step, async_step = summarize(steady(sync_phase.step_s, w)).mean, summarize(steady(async_phase.step_s, w)).mean
    figures = {"generation": g, "training": t, "learner": _mean(steady(sync_phase.learner_s, w)),
               "bound": max(g, t), "sync_step": sync_step, "async_step": async_step,
               "vs_sync": async_step / sync_step,
               "async_sync_p50": summarize(steady(async_phase.sync_s, w)).p50 if async_phase.sync_s else float("nan")}
    return async_step / max(g, t), figures


def section(cfg: BenchSettings, runs: Sequence[DuetRun]) -> Section:
    """Per run (repetition) the async step against its bound; the ratio's median and range."""
    per = [run_ratio(cfg, r) for r in runs]
    ratios, sync_p50 = spread([r for r, _ in per]), spread([f["async_sync_p50"] for _, f in per])
    rows = [(k + 1, f["generation"], f["training"], f["learner"], f["bound"], f["sync_step"], f["async_step"], r,
             f["vs_sync"], f["async_sync_p50"]) for k, (r, f) in enumerate(per)]
    rows.append(("median", None, None, None, None, None, None, ratios.median, spread([f["vs_sync"] for _, f in per]).median,
                 sync_p50.median))
    checks = (Check(f"async step <= {TARGET:g}x max(generation, training)", ratios.text(), ratios.median <= TARGET,
                    "async-step"),
              Check(f"adapter sync during async training p50 <= {SYNC_TARGET_S:g} s (this benchmark's async steps)",
                    sync_p50.text(" s", 3), sync_p50.median <= SYNC_TARGET_S, "sync-p50"))
    return Section(
        "overlap", TITLE, ("rep", "generation s", "training s", "of which update s", "max(gen, train) s",
                           "sync step s", "async step s", "async / max", "async / sync", "sync p50 s (async)"),
        tuple(rows), checks,
        notes=("Same system, same work as section 1a, in each of its repetitions (a fresh system each): sync steps "
               "first, then async steps (train.mode=\"async\", max_staleness 1), on the same actors. Means over steps.",
               "Generation and training are measured on the sync steps, where they do not overlap: generation = "
               "the driver's wait for the step's rollouts; training = the rest of the step (update + publish + proof).",
               f"{cfg.overlap.warmup_steps} warm-up step(s) per mode left out (the async driver's first step cannot "
               "overlap). \"sync p50 (async)\" = the weight-sync service's latency of the async steps' publishes "
               "(this benchmark's run, not the default recipe's run).",
               "Overlap needs idle cores: on a machine oversubscribed by other work (see the load averages of "
               f"section 1a) generation and training cannot both gain. Driver counters of the last run: "
               f"{dict(runs[-1].counters)}."),
        data={"ratios": [r for r, _ in per], "reps": [f for _, f in per],
              "async_step_s": [next(p for p in r.phases if p.mode == "async").step_s for r in runs]})


def _mean(values: Sequence[float]) -> float:
    return summarize(values).mean
