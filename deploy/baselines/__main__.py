"""``python -m deploy.baselines``: RL4VLM's CNN+RL baseline on RLlib (``bash deploy/baseline.sh`` runs it).

    python -m deploy.baselines [RECIPE.toml] [--set a.b=v ...]            one run (recipe's env and seed)
    python -m deploy.baselines [RECIPE.toml] --table [--set ...]          every env x seed of [benchmark],
                                                                          then the results table and plot
    python -m deploy.baselines --redraw                                   rewrite the table's .md and .png from its .json

Exit status: 0 done, 2 a bad recipe (the message names the dotted field).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deploy.baselines.config import BaselineConfig, ConfigError, held_out_seeds, load_config

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.baselines", description=__doc__.splitlines()[0])
    p.add_argument("recipe", nargs="?", help="baseline recipe TOML (default: deploy/baselines/cnn_ppo.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set env.name=blackjack (repeatable)")
    p.add_argument("--table", action="store_true", help="run the [benchmark] grid and write the results table")
    p.add_argument("--redraw", action="store_true", help="rewrite cnn_baseline.md and .png from cnn_baseline.json")
    return p


def run_table(cfg: BaselineConfig) -> list[Path]:
    """Every (env, seed) run of ``cfg.benchmark``, then ``cnn_baseline.{md,json,png}``."""
    from deploy.baselines.report import build_table, write_results
    from deploy.baselines.train import run_baseline
    from deploy.bench.machine import describe, load_average

    t0, machine = time.time(), describe(ROOT)
    runs = [asdict(run_baseline(cfg.for_run(env, seed))) for env in cfg.benchmark.envs for seed in cfg.benchmark.seeds]
    machine["load_average"]["end"] = load_average()
    machine["wall_s"] = time.time() - t0
    settings = {"eval_episodes": cfg.eval.episodes, "env": cfg.env.model_dump(), "ppo": cfg.ppo.model_dump(),
                "model": cfg.model.model_dump(), "cluster": cfg.cluster.model_dump(exclude={"address"}),
                "env_steps": {e: cfg.for_run(e, 0).train.env_steps for e in cfg.benchmark.envs},
                "time_limit_s": cfg.train.time_limit_s}
    doc = build_table(runs, machine, ROOT / "runs", settings, constant_policies(cfg))
    return write_results(doc, _results_dir(cfg))


def constant_policies(cfg: BaselineConfig) -> dict[str, dict[str, Any]]:
    """Per two-action env: the best always-the-same-action policy's held-out success over the
    table's seeds (measured with the same evaluator and seeds as the CNN)."""
    import numpy as np

    from deploy.baselines.evaluate import evaluate
    from rollout.envs import ENVS

    out: dict[str, dict[str, Any]] = {}
    for env in cfg.benchmark.envs:
        actions = ENVS[env].ACTIONS
        if len(actions) > 2:
            continue
        env_cfg = cfg.for_run(env, 0).env_config()
        seeds = [s for seed in cfg.benchmark.seeds for s in held_out_seeds(seed, cfg.eval.episodes)]
        scores = [evaluate(lambda obs, a=a: np.full(len(obs), a), env_cfg, seeds).success for a in range(len(actions))]
        best = int(np.argmax(scores))
        out[env] = {"action": actions[best], "success": scores[best], "episodes": len(seeds)}
    return out


def _results_dir(cfg: BaselineConfig) -> Path:
    d = Path(cfg.benchmark.results_dir)
    return d if d.is_absolute() else ROOT / d


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from deploy.baselines.train import check_output_dir

    try:
        cfg = load_config(args.recipe, tuple(args.overrides))
        check_output_dir(cfg)
    except (ConfigError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    if args.redraw:
        from deploy.baselines.report import write_results

        d = _results_dir(cfg)
        for path in write_results(json.loads((d / "cnn_baseline.json").read_text()), d):
            print(f"[baseline] wrote {path}")
        return 0
    if args.table:
        for path in run_table(cfg):
            print(f"[baseline] wrote {path}")
        return 0
    from deploy.baselines.train import run_baseline

    result = run_baseline(cfg)
    print(json.dumps({"env": result.env, "seed": result.seed, "held_out_success": result.final["success"],
                      "episodes": result.final["episodes"], "env_steps": result.env_steps, "run_dir": result.run_dir}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
