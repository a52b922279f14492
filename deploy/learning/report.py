"""The learning benchmark's results: ``latest.json`` (every figure), ``latest.md`` (the table) and one
PNG per row (held-out metric and training reward over steps).

Every figure comes from a run's own files (:mod:`deploy.learning.runner`); a row is met only when
every seed's run met it. Imports no Ray; matplotlib only to draw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from deploy.learning.runner import figure, slug
from deploy.learning.targets import Target, meets


def row_doc(target: Target, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One table row: per seed the base / start (after SFT) / after-RL figures and the verdict."""
    seeds = []
    for r in runs:
        ev = r["evals"]
        start, after = figure(ev, "before_rl", target.metric), figure(ev, "after_rl", target.metric)
        seeds.append({"seed": r["seed"], "exit_code": r["exit_code"], "wall_s": round(r["wall_s"], 1),
                      "base": figure(ev, "base", target.metric), "start": start, "after": after,
                      "gain_points": None if start is None or after is None else round(100 * (after - start), 1),
                      "components_after": {k: v for k, v in ev.get("after_rl", {}).items() if k.startswith("reward")},
                      "met": meets(target, start, after) if r["exit_code"] == 0 else False, "error": r["error"]})
    judged = [s["met"] for s in seeds]
    met = None if target.describe() == "-" else (bool(judged) and all(m is True for m in judged))
    return {"label": target.label, "recipe": target.recipe, "paper": target.paper, "algorithm": target.algorithm,
            "metric": target.metric, "target": target.describe(), "paper_figure": target.paper_figure,
            "overrides": list(target.overrides), "seeds": seeds, "met": met}


def build(targets: Sequence[Target], runs: Sequence[Mapping[str, Any]], missing: Sequence[str],
          machine: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document: a row per target (runs grouped by row label), the rows whose recipe does
    not exist yet (``missing``), and the machine."""
    rows = [row_doc(t, [r for r in runs if r["label"] == t.label]) for t in targets if t.label not in missing]
    return {"rows": rows, "missing": list(missing), "machine": dict(machine), "runs": list(runs)}


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _verdict(met: bool | None) -> str:
    return "no target" if met is None else "**met**" if met else "**not met**"


def markdown(doc: Mapping[str, Any]) -> str:
    """``latest.md``: the table (a line per row, every seed's figures in it), then the machine."""
    lines = ["# Learning benchmark (`bash deploy/learn.sh`)", "",
             "Held-out figures of each seed recipe: the base model, the start of RL (after the SFT / warm "
             "start) and after RL, per seed; a row is met when every seed meets it. Written by "
             "`python -m deploy.learning`; every figure is read from the run's `metrics.parquet`.", "",
             "| row | paper | algorithm | metric | target | per seed: base / start -> after RL (gain) | wall (s) | met | paper |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        per_seed = "<br>".join(
            f"s{s['seed']}: {_f(s['base'])} / {_f(s['start'])} -> {_f(s['after'])}"
            + (f" ({s['gain_points']:+.1f})" if s["gain_points"] is not None else "")
            + (f" exit {s['exit_code']}: {s['error']}" if s["exit_code"] else "") for s in row["seeds"]) or "not run"
        walls = ", ".join(f"{s['wall_s']:.0f}" for s in row["seeds"]) or "-"
        lines.append(f"| {row['label']} | {row['paper']} | {row['algorithm']} | {row['metric']} | {row['target']} "
                     f"| {per_seed} | {walls} | {_verdict(row['met'])} | {row['paper_figure']} |")
    for name in doc["missing"]:
        lines.append(f"| {name} | - | - | - | - | no recipe `{name}` yet | - | **not met** | - |")
    m = doc["machine"]
    lines += ["", f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gib', 0):.0f} GiB; commit "
              f"{m.get('commit')}; load average (1/5/15 min) at start {m['load_average'].get('start')}, at end "
              f"{m['load_average'].get('end')}; wall time {m.get('wall_s', 0):.0f} s.", ""]
    return "\n".join(lines)


def plot(row: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """A PNG of one row: the held-out metric at each evaluation and the training reward per step,
    one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_eval, ax_train) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in runs:
        pts = r["curve"].get(f"eval/{row['metric']}", [])
        ax_eval.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"seed {r['seed']}")
        tr = r["curve"].get("train/reward", [])
        ax_train.plot([p[0] for p in tr], [p[1] for p in tr], label=f"seed {r['seed']}", alpha=0.8)
    ax_eval.set(title=f"{row['label']}: held-out {row['metric']}", xlabel="RL step", ylim=(-0.02, 1.02))
    ax_train.set(title="training reward (mean per step)", xlabel="RL step")
    for ax in (ax_eval, ax_train):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """``latest.json``, ``latest.md`` and ``<row>.png`` per row that ran, under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "latest.json", out_dir / "latest.md"]
    paths[0].write_text(json.dumps(doc, indent=2) + "\n")
    paths[1].write_text(markdown(doc))
    for row in doc["rows"]:
        runs = [r for r in doc["runs"] if r["label"] == row["label"]]
        if runs:
            paths.append(plot(row, runs, out_dir / f"{slug(row['label'])}.png"))
    return paths
