"""One learning-benchmark run: ``duet train <recipe> --set seed=S`` as a user runs it, then its figures.

Each run is a separate ``duet train`` process (its own local Ray, as ``bash deploy/train.sh``), so
a run's failure is one failed row, never the benchmark's end. Its figures are read back from what
the run wrote: ``summary.json`` (evaluations, counters) and ``metrics.parquet`` (every held-out
evaluation's success, reward and reward components; the training reward per step), so nothing here
is a second measurement. Imports no Ray.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.learning.targets import Target

STEP_LABEL = re.compile(r"step_(\d+)$")


@dataclass(frozen=True)
class RunFigures:
    """What one (row, seed) run measured."""

    label: str
    """The row (:attr:`Target.label`)."""
    recipe: str
    seed: int
    exit_code: int
    """``duet train``'s exit status (0: the run completed)."""
    wall_s: float
    """Wall time of the whole ``duet train`` process (the model build is done before, by set-up)."""
    evals: dict[str, dict[str, float]] = field(default_factory=dict)
    """Evaluation label (``base``, ``before_rl``, ``step_N``, ``after_rl``) -> metric -> held-out mean."""
    curve: dict[str, list[list[float]]] = field(default_factory=dict)
    """``train/reward``: [step, mean training reward] per RL step; ``eval/<metric>``: [step, value]
    per evaluation (``before_rl`` at the first RL step, ``step_N`` at N, ``after_rl`` at the end)."""
    run_dir: str = ""
    error: str = ""
    """Last line of the run's stderr when it failed."""


def command(target: Target, seed: int, run_dir: Path, duet: str) -> list[str]:
    """The ``duet train`` command line of one run (the row's overrides, the seed, the run directory)."""
    sets = [*target.overrides, f"seed={seed}", f"output.dir={run_dir}"]
    return [duet, "train", target.recipe, *(a for s in sets for a in ("--set", s))]


def run(target: Target, seed: int, runs_root: Path, duet: str) -> RunFigures:
    """Run one row at one seed and read its figures back (its output goes to this process's stderr)."""
    run_dir = runs_root / f"{slug(target.label)}_s{seed}"
    t0 = time.time()
    proc = subprocess.run(command(target, seed, run_dir, duet), stdout=sys.stderr, stderr=subprocess.PIPE,
                          text=True)
    wall = time.time() - t0
    sys.stderr.write(proc.stderr)
    error = proc.stderr.strip().splitlines()[-1] if proc.returncode and proc.stderr.strip() else ""
    evals, curve = read_figures(run_dir)
    return RunFigures(target.label, target.recipe, seed, proc.returncode, wall, evals, curve, str(run_dir), error)


def slug(label: str) -> str:
    """A file-name form of a row label: lower case, runs of other characters as one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def read_figures(run_dir: Path) -> tuple[dict[str, dict[str, float]], dict[str, list[list[float]]]]:
    """(evaluations, curves) of a run directory's ``metrics.parquet`` (empty when there is none)."""
    path = run_dir / "metrics.parquet"
    if not path.is_file():
        return {}, {}
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=["step", "scope", "name", "value"]).to_pylist()
    evals: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["scope"].startswith("eval/"):
            evals.setdefault(r["scope"][5:], {})[r["name"]] = float(r["value"])
    train = [[r["step"], float(r["value"])] for r in rows if r["scope"] == "rollout" and r["name"] == "reward"]
    return evals, {"train/reward": train, **eval_curves(evals, _last_step(run_dir, train))}


def _last_step(run_dir: Path, train: list[list[float]]) -> int:
    summary = run_dir / "summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text()).get("steps", 0))
    return int(train[-1][0]) + 1 if train else 0


def eval_curves(evals: dict[str, dict[str, float]], last_step: int) -> dict[str, list[list[float]]]:
    """``eval/<metric>`` -> [step, value] over the RL evaluations, in step order (the base model's
    and other non-step labels are left out)."""
    points: list[tuple[int, dict[str, float]]] = []
    for label, metrics in evals.items():
        m = STEP_LABEL.match(label)
        step = 0 if label == "before_rl" else last_step if label == "after_rl" else int(m.group(1)) if m else None
        if step is not None:
            points.append((step, metrics))
    points.sort(key=lambda p: p[0])
    names = sorted({n for _, m in points for n in m if n != "episodes"})
    return {f"eval/{n}": [[s, m[n]] for s, m in points if n in m] for n in names}


def figure(evals: dict[str, dict[str, float]], label: str, metric: str) -> float | None:
    """One evaluation's metric (None when that evaluation or metric is missing)."""
    value = evals.get(label, {}).get(metric)
    return None if value is None else float(value)


def as_dict(f: RunFigures) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(f)
