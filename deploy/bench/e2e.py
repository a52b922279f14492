"""End-to-end GRPO (issues 6 and 13): duet-rl against TRL 1.16's ``GRPOTrainer`` on the same work.

Two works (:mod:`deploy.bench.settings`): the tiny VLM on easy-VQA (overhead-bound, ~1M parameters)
and SmolLM2-135M on a text task (compute-bound). duet-rl: the real system
(:mod:`deploy.bench.duet_run`, sync driver): a learner rank and a rollout worker as Ray actors, one
CPU each, every step = sample -> score -> update -> publish + prove the new adapter. TRL:
:mod:`deploy.bench.trl_baseline` in its own process on each of ``trl_threads`` torch thread counts;
the faster one of each repetition is the figure duet-rl is held against. The systems run in
interleaved repetitions (:func:`deploy.bench.repeat.interleave`: duet-rl, TRL, duet-rl, TRL, ...),
each run a fresh start; the ratio is taken inside each repetition and reported as median and range.
Samples/s = samples per step x measured steps / their summed wall time; start-up and the first
``warmup_steps`` of each run are left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from deploy.bench.machine import load_average
from deploy.bench.repeat import Side, interleave, load_cell
from deploy.bench.report import Check, Section
from deploy.bench.settings import MODEL, ROOT, TEXT_MODEL, BenchSettings, E2ESettings
from deploy.bench.stats import paired_ratios, ratio_spread, steady, summarize, throughput

TITLE = "End-to-end GRPO: duet-rl vs TRL GRPOTrainer"
NUMBER = {MODEL: "1a", TEXT_MODEL: "1b"}
"""Section number per model (sections are ordered by title)."""
TARGETS = {MODEL: 2.0, TEXT_MODEL: 3.0}
"""Issue 13's end-to-end targets: duet-rl samples/s over TRL's, per model."""


def run_trl(e2e: E2ESettings, threads: int, quick: bool, work: Path, timeout_s: float = 900) -> dict[str, Any]:
    """:mod:`deploy.bench.trl_baseline` on ``e2e``'s model in a child process with torch on ``threads`` threads."""
    out = work / f"trl-{e2e.model}-{threads}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "deploy.bench.trl_baseline", str(out), "--model", e2e.model]
    cmd += ["--quick"] if quick else []
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL baseline ({threads} threads) failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


DUET = "duet-rl"


def trl_name(threads: int) -> str:
    return f"TRL {threads} thread(s)"


def step_s(side: Side) -> Sequence[float]:
    """Per-step seconds of one run: a :class:`DuetRun`'s sync phase, or a TRL result's."""
    if side.name == DUET:
        return next(p for p in side.result.phases if p.mode == "sync").step_s
    return side.result["step_s"]


def samples_per_s(e2e: E2ESettings, side: Side) -> float:
    """Samples/s of one run's steady steps."""
    return throughput(e2e.samples_per_step, steady(step_s(side), e2e.warmup_steps))


def rep_rates(e2e: E2ESettings, reps: Sequence[Sequence[Side]]) -> tuple[list[float], list[float], list[int]]:
    """Per repetition: (duet-rl samples/s, best TRL samples/s, the best TRL's thread count)."""
    duet, best, threads = [], [], []
    for sides in reps:
        rates = {s.name: samples_per_s(e2e, s) for s in sides}
        t = max(e2e.trl_threads, key=lambda k: rates[trl_name(k)])
        duet.append(rates[DUET]), best.append(rates[trl_name(t)]), threads.append(t)
    return duet, best, threads


def rep_rows(e2e: E2ESettings, sides: Sequence[Side], best_threads: int) -> list[tuple]:
    """One row per run of a repetition, then the repetition's ratio to its faster TRL."""
    rows = []
    for s in sides:
        steps = steady(step_s(s), e2e.warmup_steps)
        startup = s.result.startup_s if s.name == DUET else s.result["startup_s"]
        rows.append((s.rep + 1, s.name, len(steps), summarize(steps).p50, samples_per_s(e2e, s), startup,
                     load_cell(s.load_start)))
    best = next(s for s in sides if s.name == trl_name(best_threads))
    ours = next(s for s in sides if s.name == DUET)
    rows.append((sides[0].rep + 1, f"ratio duet-rl / {trl_name(best_threads)}", None, None,
                 samples_per_s(e2e, ours) / samples_per_s(e2e, best), None, None))
    return rows


def section(e2e: E2ESettings, reps: Sequence[Sequence[Side]]) -> Section:
    """Per repetition a row per system and the ratio to the faster TRL; then median and range."""
    duet, best, threads = rep_rates(e2e, reps)
    ratios, target, tiny = ratio_spread(duet, best), TARGETS.get(e2e.model, 3.0), e2e.model == MODEL
    rows = [row for sides, t in zip(reps, threads) for row in rep_rows(e2e, sides, t)]
    rows.append(("all", "ratio: median (range)", None, None, ratios.median, None, f"{ratios.low:.2f}-{ratios.high:.2f}"))
    check = Check(f"end-to-end GRPO samples/s >= {target:g}x TRL GRPOTrainer ({e2e.label})", ratios.text(),
                  ratios.median >= target, "e2e-tiny" if tiny else "e2e-smollm2")
    return Section(
        "e2e" if tiny else "e2e-smollm2", f"{NUMBER.get(e2e.model, '1c')}. {TITLE}, {e2e.label}",
        ("rep", "system", "steps", "s/step p50", "samples/s", "start-up s", "load avg 1/5/15 at start"),
        tuple(rows), (check,), notes=_notes(e2e, len(reps)),
        data={"ratios": paired_ratios(duet, best), "duet_samples_per_s": duet, "trl_samples_per_s": best,
              "trl_threads": threads, "reps": [[_side_data(s) for s in sides] for sides in reps]})


def _side_data(side: Side) -> dict[str, Any]:
    figures = ({"step_s": step_s(side), "startup_s": side.result.startup_s} if side.name == DUET
               else dict(side.result))
    return {"system": side.name, "load_start": side.load_start, "load_end": side.load_end,
            "wall_s": side.wall_s, **figures}


def _notes(e2e: E2ESettings, n: int) -> tuple[str, ...]:
    task = (f"easy-VQA colour questions (real 64x64 images scaled to 112x112: 16 image tokens), duet's exact_match "
            "reward of the whole reply" if e2e.task == "easy_vqa" else
            "two-digit additions (text, `deploy.bench.text_task`), duet's exact_match reward of the reply's last integer")
    return (f"Same work on both: {task}; {e2e.model}, {e2e.tasks_per_step} tasks x G={e2e.group_size} = "
            f"{e2e.samples_per_step} samples per optimizer step, up to {e2e.max_tokens} completion tokens, temperature 1, "
            f"LoRA r={e2e.lora_r} alpha={e2e.lora_alpha} on q/k/v/o/gate/up/down, AdamW lr {e2e.lr:g} constant, no KL, "
            "1 epoch x 1 minibatch, token-mean loss.",
            f"{n} interleaved repetitions (duet-rl, then TRL on {', '.join(map(str, e2e.trl_threads))} torch thread(s), "
            "then the next repetition), each a fresh start of every system; the ratio is taken inside each repetition "
            "against the faster TRL of that repetition, and reported as median and range over repetitions.",
            f"Per run {e2e.warmup_steps} warm-up step(s) left out, then the measured steps; samples/s = samples per "
            "step x steps / summed step time; start-up is not in any step. duet-rl's step (sync driver) includes "
            "publishing the new adapter to the worker and proving it (TRL generates with the weights it trains).",
            "duet-rl runs its learner and rollout worker as two Ray actors of 1 CPU each (2 cores); TRL is one process.")


def run(cfg: BenchSettings, e2e: E2ESettings, work: Path, quick: bool,
        async_phase: tuple[int, int] | None = None) -> tuple[list[list[Side]], list[Section]]:
    """``e2e.repetitions`` interleaved repetitions of duet-rl (sync steps, then ``async_phase``
    (warm-up, steps) async steps when given) and TRL on each of ``e2e.trl_threads``; returns the
    repetitions and the e2e section."""
    from deploy.bench.duet_run import run_duet

    phases = [("sync", e2e.warmup_steps + e2e.steps)] + ([("async", sum(async_phase))] if async_phase else [])

    def duet(rep: int) -> Any:
        return run_duet(e2e, phases, work / f"duet-{e2e.model}-{rep}")

    def trl(threads: int) -> Any:
        return lambda rep: run_trl(e2e, threads, quick, work / f"trl-{rep}")

    systems = [(DUET, duet)] + [(trl_name(t), trl(t)) for t in e2e.trl_threads]
    reps = interleave(e2e.repetitions, systems, load_average)
    return reps, [section(e2e, reps)]
