"""End-to-end GRPO (issue 6, item 1): duet-rl against TRL 1.16's ``GRPOTrainer`` on the same work.

duet-rl: the real system (:mod:`deploy.bench.duet_run`, sync driver): a learner rank and a rollout
worker as Ray actors, one CPU each, every step = sample -> score -> update -> publish + prove the
new adapter. TRL: :mod:`deploy.bench.trl_baseline` in its own process, once with torch on 1 thread
and once on 2 (the machine's cores); the faster of the two is the figure duet-rl is held against.
Samples/s = samples per step x measured steps / their summed wall time; start-up and the first
``warmup_steps`` of each system are left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from deploy.bench.duet_run import DuetRun, Phase
from deploy.bench.report import Check, Section
from deploy.bench.settings import MODEL, ROOT, BenchSettings, E2ESettings
from deploy.bench.stats import ratio, steady, summarize, throughput

TITLE = "1. End-to-end GRPO: duet-rl vs TRL GRPOTrainer"
TARGET_SPEEDUP = 3.0
TRL_THREADS = (1, 2)


def run_trl(threads: int, quick: bool, work: Path, timeout_s: float = 900) -> dict[str, Any]:
    """:mod:`deploy.bench.trl_baseline` in a child process with torch on ``threads`` threads."""
    out = work / f"trl-{threads}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "deploy.bench.trl_baseline", str(out)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL baseline ({threads} threads) failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def system_row(name: str, step_s: Sequence[float], samples_per_step: int, startup_s: float | None) -> tuple:
    s = summarize(step_s)
    return (name, s.n, s.mean, s.p50, s.p95, throughput(samples_per_step, step_s), startup_s)


def section(e2e: E2ESettings, duet: Phase, duet_startup: float, trl: Mapping[int, Mapping[str, Any]]) -> Section:
    n = e2e.samples_per_step
    duet_steps = steady(duet.step_s, e2e.warmup_steps)
    rows = [system_row("duet-rl (sync driver, 1 learner rank + 1 vLLM worker)", duet_steps, n, duet_startup)]
    rates = {}
    for threads, result in sorted(trl.items()):
        steps = steady(result["step_s"], e2e.warmup_steps)
        rows.append(system_row(f"TRL 1.16 GRPOTrainer (torch {threads} thread(s))", steps, n, result["startup_s"]))
        rates[threads] = throughput(n, steps)
    best = max(rates, key=rates.get) if rates else None
    ours = throughput(n, duet_steps)
    speedup = ratio(ours, rates.get(best)) if best else None
    rows.append((f"ratio duet-rl / best TRL ({best} thread(s))", None, None, None, None, speedup, None))
    check = Check(f"end-to-end samples/s >= {TARGET_SPEEDUP:g}x TRL's on the same work",
                  f"{speedup:.2f}x" if speedup else "-", None if speedup is None else speedup >= TARGET_SPEEDUP)
    return Section(
        "e2e", TITLE, ("system", "steps", "s/step mean", "s/step p50", "s/step p95", "samples/s", "start-up s"),
        tuple(rows), (check,),
        notes=(f"Same work on both: easy-VQA colour questions (real 64x64 images scaled to 112x112: 16 image tokens), {MODEL}, {e2e.tasks_per_step} tasks "
               f"x G={e2e.group_size} = {n} samples per optimizer step, up to {e2e.max_tokens} completion tokens, "
               f"temperature 1, LoRA r={e2e.lora_r} alpha={e2e.lora_alpha} on q/k/v/o/gate/up/down, AdamW lr "
               f"{e2e.lr:g} constant, no KL, 1 epoch x 1 minibatch, token-mean loss, duet's exact_match reward.",
               f"{e2e.warmup_steps} warm-up step(s) per system left out, then {len(duet_steps)} measured steps; "
               "samples/s = samples per step x steps / summed step time. duet-rl's step includes publishing the "
               "new adapter to the worker and proving it (TRL generates with the weights it trains).",
               "duet-rl runs its learner and rollout worker as two Ray actors of 1 CPU each (2 cores); TRL is one "
               "process, measured with torch on 1 and on 2 threads."),
        data={"duet": {"step_s": duet.step_s, "sample_s": duet.sample_s, "learner_s": duet.learner_s,
                       "startup_s": duet_startup},
              "trl": {str(k): dict(v) for k, v in trl.items()}, "ratio": speedup})


def run(cfg: BenchSettings, work: Path, quick: bool, duet: DuetRun | None = None) -> list[Section]:
    """duet-rl (unless its run is given) then TRL on 1 and 2 threads; the e2e and memory sections."""
    from deploy.bench.duet_run import run_duet
    from deploy.bench.memory import memory_section

    e2e = cfg.e2e
    if duet is None:
        duet = run_duet(e2e, [("sync", e2e.warmup_steps + e2e.steps)], work)
    trl = {t: run_trl(t, quick, work) for t in TRL_THREADS}
    sync_phase = next(p for p in duet.phases if p.mode == "sync")
    return [section(e2e, sync_phase, duet.startup_s, trl), memory_section(duet, trl)]
