"""Command line of the benchmark suite.

    python -m deploy.bench                  the whole suite -> deploy/bench/results/latest.{md,json}
    python -m deploy.bench sync rollout     some benchmarks (Markdown on stdout; --out DIR to keep it)
    python -m deploy.bench --quick          the same code paths with less work (a smoke run)

Benchmarks: e2e, e2e-smollm2, rollout, sync, overlap, memory, profile. Each runs in a child process
of its own (a clean peak-memory figure, vLLM's once-per-process settings, no Ray left behind); the
whole suite runs e2e, overlap, memory and the tiny-VLM profile on the same repetitions ("system"),
and e2e-smollm2 with its profile ("smollm2"). The load average is recorded before and after each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from deploy.bench import machine
from deploy.bench.report import Section, failed, render_json, render_markdown
from deploy.bench.settings import ROOT, BenchSettings, settings

RESULTS = ROOT / "deploy" / "bench" / "results"
SUITE = ("system", "smollm2", "rollout", "sync")
PUBLIC = ("e2e", "e2e-smollm2", "rollout", "sync", "overlap", "memory", "profile")
TITLES = {"e2e": "1a. End-to-end GRPO, tiny VLM", "e2e-smollm2": "1b. End-to-end GRPO, SmolLM2-135M",
          "rollout": "2. Rollout throughput", "sync": "3. Weight sync", "overlap": "4. Async overlap",
          "memory": "5. Memory", "profile": "6. Step profile", "system": "1a, 4, 5, 6: duet-rl tiny-VLM runs",
          "smollm2": "1b, 6: SmolLM2-135M runs"}
COVERS = {"system": ("e2e", "overlap", "memory", "profile"), "smollm2": ("e2e-smollm2",)}
"""The public benchmarks a combined unit's sections belong to (a failed unit fails each of them)."""
CHILD_TIMEOUT_S = 1500


def _tiny(cfg: BenchSettings, work: Path, quick: bool) -> tuple[list, list[Section]]:
    """Section 1a's interleaved repetitions, each duet-rl run going on with async steps (section 4)."""
    from deploy.bench import e2e

    o = cfg.overlap
    return e2e.run(cfg, cfg.e2e, work, quick, async_phase=(o.warmup_steps, o.steps))


def _system(cfg: BenchSettings, work: Path, quick: bool) -> list[Section]:
    """1a, 4, 5 and 6 from the same repetitions: each duet-rl run = sync steps then async steps."""
    from deploy.bench import overlap, profile
    from deploy.bench.e2e import DUET
    from deploy.bench.memory import memory_section
    from deploy.bench.repeat import column

    reps, sections = _tiny(cfg, work, quick)
    runs = [s.result for s in column(reps, DUET)]
    trl = {int(s.name.split()[1]): s.result for s in reps[0] if s.name != DUET}
    works = [(cfg.e2e.label, [p for r in runs for p in r.phases], cfg.e2e.warmup_steps)]
    return [*sections, overlap.section(cfg, runs), memory_section(runs[0], trl), profile.section(works, "6a")]


def _smollm2(cfg: BenchSettings, work: Path, quick: bool) -> list[Section]:
    """1b and its step profile."""
    from deploy.bench import e2e, profile
    from deploy.bench.repeat import column

    reps, sections = e2e.run(cfg, cfg.e2e_text, work, quick)
    phases = [p for s in column(reps, e2e.DUET) for p in s.result.phases]
    return [*sections, profile.section([(cfg.e2e_text.label, phases, cfg.e2e_text.warmup_steps)], "6b")]


def _one(name: str) -> Callable[[BenchSettings, Path, bool], list[Section]]:
    """A public benchmark that is part of a combined unit: that unit, keeping its section ``name``."""
    unit = {"e2e": _system, "overlap": _system, "memory": _system, "profile": _system, "e2e-smollm2": _smollm2}[name]
    return lambda cfg, work, quick: [s for s in unit(cfg, work, quick) if s.name == name]


def _rollout(cfg: BenchSettings, work: Path, quick: bool) -> list[Section]:
    import torch

    from deploy.bench import generation

    torch.set_num_threads(1)  # as in the rollout-worker actor (1 CPU); transformers gets the same
    return generation.run(cfg, work)


def _sync(cfg: BenchSettings, work: Path, quick: bool) -> list[Section]:
    from deploy.bench import sync

    return sync.run(cfg, work)


UNITS: dict[str, Callable[[BenchSettings, Path, bool], list[Section]]] = {
    "rollout": _rollout, "sync": _sync, "system": _system, "smollm2": _smollm2,
    **{name: _one(name) for name in ("e2e", "overlap", "memory", "profile", "e2e-smollm2")}}
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "OMP_NUM_THREADS": "1"}
"""One torch/OpenMP thread in every benchmark process, as in a 1-CPU Ray actor: with 2 threads on a
loaded 2-core machine OpenMP's spinning made the same vLLM call 5-30x slower (measured here).
The TRL baseline sets its own thread count (1 and 2, see :mod:`deploy.bench.e2e`)."""


def run_child(name: str, quick: bool, work: Path) -> list[Section]:
    """Run benchmark ``name`` in a child process; a failure becomes a failed section."""
    out = work / f"{name}.json"
    cmd = [sys.executable, "-m", "deploy.bench", "--child", name, "--child-out", str(out)] + (["--quick"] if quick else [])
    env = {**os.environ, **CHILD_ENV}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [failed(n, TITLES[n], f"timed out after {CHILD_TIMEOUT_S} s") for n in COVERS.get(name, (name,))]
    if proc.returncode != 0 or not out.is_file():
        error = proc.stderr[-4000:] or f"exit status {proc.returncode}"
        return [failed(n, TITLES[n], error) for n in COVERS.get(name, (name,))]
    return [Section.from_dict(d) for d in json.loads(out.read_text())]


def child(name: str, quick: bool, out: Path) -> None:
    work = out.parent / f"work-{name}"
    work.mkdir(parents=True, exist_ok=True)
    sections = UNITS[name](settings(quick), work, quick)
    out.write_text(json.dumps([asdict(s) for s in sections], default=str))


def suite(names: tuple[str, ...], quick: bool, out_dir: Path | None, keep: bool) -> str:
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    info = machine.describe(ROOT)
    info["started"] = started
    per_unit: dict[str, dict[str, list[float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="duet-bench-"))
    sections: list[Section] = []
    try:
        for name in names:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            load = {"start": machine.load_average()}
            sections += run_child(name, quick, work)
            per_unit[name] = {**load, "end": machine.load_average(), "wall_s": round(time.perf_counter() - t, 1)}
            print(f"[bench] {name} done in {per_unit[name]['wall_s']} s", file=sys.stderr, flush=True)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    info["load_average"] |= {"end": machine.load_average(), "per_benchmark": per_unit}
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    info["quick"] = quick
    sections.sort(key=lambda s: s.title)  # "1. ...", "2. ...": the order
    command = "python -m deploy.bench" + (" " + " ".join(names) if names != SUITE else "") + (" --quick" if quick else "")
    text = render_markdown(info, sections, command)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "latest.md").write_text(text)
        (out_dir / "latest.json").write_text(render_json(info, sections))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help=f"benchmarks to run, of {PUBLIC} (default: the whole suite)")
    p.add_argument("--quick", action="store_true", help="less work per benchmark (a smoke run)")
    p.add_argument("--out", type=Path, default=None, help=f"directory for latest.md/json (suite default: {RESULTS})")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = sorted(set(args.names) - set(PUBLIC))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {PUBLIC}")
    if args.child:
        child(args.child, args.quick, args.child_out)
        return 0
    names = tuple(args.names) or SUITE
    out = args.out if args.out is not None else (RESULTS if not args.names and not args.quick else None)
    print(suite(names, args.quick, out, args.keep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
