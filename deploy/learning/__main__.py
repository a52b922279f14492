"""``python -m deploy.learning``: the learning benchmark (``bash deploy/learn.sh`` runs it).

    python -m deploy.learning [RECIPE ...] [--seeds 0 1] [--out DIR] [--runs DIR]

Runs every row of :data:`deploy.learning.targets.TARGETS` whose recipe is named (all rows when none
is), each at every seed, one ``duet train`` process after another, then writes
``DIR/latest.{json,md}`` and a PNG per row (default DIR: ``deploy/learning/results``). A recipe
with no row is run and reported without a target. Not part of the test run: each recipe takes
minutes. Exit status: 0 when every judged row met its target, 1 when one did not, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deploy.learning.targets import targets_for

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.learning", description=__doc__.splitlines()[0])
    p.add_argument("recipes", nargs="*", help="recipes to run (default: every row of the table)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds per recipe (default: 0 1)")
    p.add_argument("--out", default=str(ROOT / "deploy" / "learning" / "results"), help="results directory")
    p.add_argument("--runs", default=str(ROOT / "runs" / "learning"), help="where the runs' directories go")
    return p


def main(argv: list[str] | None = None) -> int:
    from deploy.bench.machine import describe, load_average
    from deploy.learning.report import build, write
    from deploy.learning.runner import as_dict, run

    args = _parser().parse_args(argv)
    recipes_dir = ROOT / "cluster" / "recipes"
    targets = targets_for(args.recipes)
    missing = sorted({t.label for t in targets if not (recipes_dir / f"{t.recipe}.toml").is_file()})
    if args.recipes and missing:
        print(f"deploy.learning: no recipe {', '.join(missing)} in {recipes_dir}", file=sys.stderr)
        return 2
    duet = str(Path(sys.executable).with_name("duet"))
    t0, machine = time.time(), describe(ROOT)
    runs = []
    for target in (t for t in targets if t.label not in missing):
        for seed in args.seeds:
            print(f"[learn] {target.label} seed {seed}", file=sys.stderr, flush=True)
            runs.append(as_dict(run(target, seed, Path(args.runs), duet)))
    machine["load_average"]["end"] = load_average()
    machine["wall_s"] = time.time() - t0
    doc = build(targets, runs, missing, machine)
    for path in write(doc, Path(args.out)):
        print(path)
    return 1 if any(row["met"] is False for row in doc["rows"]) or missing else 0


if __name__ == "__main__":
    sys.exit(main())
