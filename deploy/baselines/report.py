"""The results table of the CNN+PPO baseline (``cnn_baseline.md`` / ``.json``) and its curve plot.

Published rows are RL4VLM's (Zhai et al. 2024, Table 2, success %, as quoted in
``shared/docs/anchors.md``); the duet-rl VLM recipes' figures are read from their run summaries
when a run exists (``runs/<recipe>/summary.json``), else written "not measured". Nothing here is
an estimate: every CNN+PPO figure comes from a run's ``summary.json``. Imports no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any, Mapping, Sequence

RL4VLM_ROWS: dict[str, dict[str, float]] = {
    "CNN+RL": {"numberline": 87.1, "ezpoints": 0.0, "points24": 0.0, "blackjack": 38.8},
    "LLaVA-sft": {"numberline": 24.8, "ezpoints": 23.0, "points24": 2.6, "blackjack": 23.1},
    "RL4VLM": {"numberline": 89.4, "ezpoints": 50.0, "points24": 2.3, "blackjack": 40.2},
}
"""RL4VLM's published success rates (%), from anchors.md."""
VLM_RECIPES: dict[str, str] = {"numberline": "numberline_ppo"}
"""duet-rl's VLM recipe per environment (only NumberLine has one so far)."""
TARGETS: dict[str, float] = {"numberline": 0.80, "blackjack": 0.35}
"""Issue 16's held-out success targets (2-core CPU, 10 minutes per environment)."""
TITLES = {"numberline": "NumberLine", "ezpoints": "EZPoints", "points24": "Points24", "blackjack": "Blackjack"}


def vlm_figures(env: str, runs_dir: Path) -> dict[str, Any]:
    """The VLM recipe's held-out success before (SFT/base) and after RL, if it has been run here."""
    recipe = VLM_RECIPES.get(env)
    summary = runs_dir / recipe / "summary.json" if recipe else None
    if summary is None or not summary.is_file():
        return {"recipe": recipe, "before": None, "after": None}
    evals = json.loads(summary.read_text()).get("eval", {})
    labels = list(evals)
    pick = lambda label: evals[label]["success"] if label else None  # noqa: E731
    return {"recipe": recipe, "before": pick(labels[0] if labels else None),
            "after": pick(labels[-1] if len(labels) > 1 else None), "labels": labels}


def build_table(runs: Sequence[Mapping[str, Any]], machine: Mapping[str, Any], runs_dir: Path,
                settings: Mapping[str, Any], constants: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document: per env, each seed's run summary, the mean, the target, the other rows."""
    envs: dict[str, Any] = {}
    for r in runs:
        envs.setdefault(r["env"], {"runs": []})["runs"].append(dict(r))
    for env, row in envs.items():
        finals = [r["final"]["success"] for r in row["runs"]]
        row["held_out_success_mean"] = mean(finals)
        row["target"] = TARGETS.get(env)
        row["target_met"] = None if env not in TARGETS else all(f >= TARGETS[env] for f in finals)
        row["rl4vlm_percent"] = {method: rows[env] for method, rows in RL4VLM_ROWS.items()}
        row["vlm_recipe"] = vlm_figures(env, runs_dir)
        row["constant_policy"] = (constants or {}).get(env)
    return {"method": "RLlib PPO (new API stack), default conv RLModule, greedy held-out evaluation",
            "settings": dict(settings), "machine": dict(machine), "envs": envs}


def _pct(x: float | None) -> str:
    return "not measured" if x is None else f"{100 * x:.1f}"


def render_markdown(doc: Mapping[str, Any]) -> str:
    """``cnn_baseline.md``: the comparison table, the per-run table and the machine."""
    m = doc["machine"]
    lines = [
        "# RL4VLM's CNN+RL baseline on RLlib (gym_cards)", "",
        f"{doc['method']}. Held-out success (%) over {doc['settings']['eval_episodes']} episodes on the VLM "
        "recipes' held-out seeds (`10**9 + seed * 1_000_003 + i`); success = the env's `info[\"success\"]` "
        "(episode return > 0). Written by `bash deploy/baseline.sh --table`.", "",
        "| environment | CNN+PPO (this, mean of seeds) | per seed | env steps / seed | target | "
        "best constant action | RL4VLM CNN+RL | LLaVA-sft | RL4VLM | duet-rl VLM recipe (before -> after RL) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for env, row in doc["envs"].items():
        runs = row["runs"]
        seeds = ", ".join(f"s{r['seed']}: {_pct(r['final']['success'])}" for r in runs)
        steps = ", ".join(str(r["env_steps"]) for r in runs)
        target = "-" if row["target"] is None else f">= {100 * row['target']:.0f} ({'met' if row['target_met'] else 'NOT met'})"
        pub = row["rl4vlm_percent"]
        vlm = row["vlm_recipe"]
        vlm_text = "not measured (no recipe yet)" if vlm["recipe"] is None else (
            f"`{vlm['recipe']}`: not measured" if vlm["before"] is None
            else f"`{vlm['recipe']}`: {_pct(vlm['before'])} -> {_pct(vlm['after'])}")
        const = row.get("constant_policy")
        const_text = "-" if not const else f"{_pct(const['success'])} (always \"{const['action']}\")"
        lines.append(f"| {TITLES[env]} | **{_pct(row['held_out_success_mean'])}** | {seeds} | {steps} | {target} | {const_text} | "
                     f"{pub['CNN+RL']} | {pub['LLaVA-sft']} | {pub['RL4VLM']} | {vlm_text} |")
    lines += ["", "Best constant action: the held-out success of always playing one action, measured on the same "
              "seeds (two-action environments only), the floor a pixel policy has to beat. RL4VLM columns: the "
              "paper's published success % (LLaVA-1.6-7B, peak within its budget; `shared/docs/anchors.md`), not "
              "re-run here. Curve points in the "
              "plot (`cnn_baseline.png`) use the first 50 held-out seeds.", "",
              "Per run (held-out success before training -> after; training wall time excludes evaluation):", "",
              "| run | before | after | mean return after | env steps | iterations | train wall (s) | run wall (s) | stopped by |",
              "|---|---|---|---|---|---|---|---|---|"]
    for env, row in doc["envs"].items():
        for r in row["runs"]:
            lines.append(f"| {env} s{r['seed']} | {_pct(r['initial']['success'])} | {_pct(r['final']['success'])} | "
                         f"{r['final']['reward']:+.2f} | {r['env_steps']} | {r['iterations']} | {r['train_wall_s']:.0f} | "
                         f"{r['wall_s']:.0f} | {r['stopped_by']} |")
    la = m.get("load_average", {})
    lines += ["", f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gib', 0):.0f} GiB; "
              f"commit {m.get('commit')}; load average (1/5/15 min) at start {la.get('start')}, at end {la.get('end')}; "
              f"table wall time {m.get('wall_s', 0):.0f} s. Versions: "
              + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ".", "",
              "Settings: `" + json.dumps(doc["settings"], sort_keys=True) + "`", ""]
    return "\n".join(lines)


def plot_curves(doc: Mapping[str, Any], path: Path) -> None:
    """One panel per env: held-out (greedy, curve episodes) and training (sampled) success vs env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(doc["envs"])
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for k, r in enumerate(doc["envs"][env]["runs"]):
            xs = [p["env_steps"] for p in r["curve"]]
            ax.plot(xs, [p["success"] for p in r["curve"]], color=f"C{k}", marker="o", ms=3,
                    label=f"held-out greedy s{r['seed']}")
            ax.plot(xs, [p["train_success"] for p in r["curve"]], color=f"C{k}", ls="--",
                    label=f"training (sampled) s{r['seed']}")
        pub = RL4VLM_ROWS["CNN+RL"][env] / 100
        ax.axhline(pub, color="grey", lw=0.8, ls=":", label="RL4VLM CNN+RL")
        ax.set(title=TITLES[env], xlabel="env steps", ylabel="success", ylim=(-0.03, 1.03))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(doc: Mapping[str, Any], results_dir: Path) -> list[Path]:
    """Write ``cnn_baseline.json``, ``.md`` and (matplotlib permitting) ``.png``; return the paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    out = [results_dir / "cnn_baseline.json", results_dir / "cnn_baseline.md"]
    out[0].write_text(json.dumps(doc, indent=2) + "\n")
    out[1].write_text(render_markdown(doc))
    png = results_dir / "cnn_baseline.png"
    plot_curves(doc, png)
    return out + [png]
