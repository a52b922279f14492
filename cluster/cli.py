"""``duet``: the command line.

    duet train [RECIPE] [--set KEY=VALUE ...] [--resume]   run a recipe (default: the embedded one)
    duet check RECIPE [--set ...]                          validate a recipe and print it resolved
    duet recipes                                           list the shipped recipes
    duet report RUN_DIR [--out DIR]                        draw RUN_DIR/report/index.html (plots, transcripts)

RECIPE is a path or the name of a shipped recipe (``cluster/recipes/*.toml``). A bad recipe exits
with status 2 and a message naming each bad field; so does ``duet train`` given an ``output.dir``
another live run holds (one line naming the directory and that run's pid; nothing of it touched).
SIGTERM and SIGINT stop a run as an error would (actors and Ray stopped, trackers closed): one line,
exit 143 and 130.
"""

from __future__ import annotations

import argparse
import json
import sys

from cluster.config import RecipeError, load_recipe
from cluster.recipes import RECIPES_DIR, recipe_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duet", description="duet-rl: RL for vision-language models on Ray")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("train", "run a recipe"), ("check", "validate a recipe and print it")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("recipe", nargs="?", default=None, help="recipe file or shipped recipe name")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set train.steps=5 (repeatable)")
        if name == "train":
            s.add_argument("--resume", action="store_true",
                           help="continue from the run directory's last checkpoint")
    sub.add_parser("recipes", help="list the shipped recipes")
    r = sub.add_parser("report", help="draw a run's report: one HTML page with plots and transcripts")
    r.add_argument("run_dir", help="a run directory (output.dir of a run)")
    r.add_argument("--out", default=None, help="where to write index.html and the PNGs (default RUN_DIR/report)")
    return p


def report(run_dir: str, out: str | None) -> int:
    """``duet report``: 0 and the page's path, or 2 and one line when RUN_DIR has no metrics."""
    from cluster.report import NoMetrics, write_report

    try:
        print(write_report(run_dir, out))
    except NoMetrics as err:
        print(f"duet: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "recipes":
        for f in sorted(RECIPES_DIR.glob("*.toml")):
            print(f.stem)
        return 0
    if args.command == "report":
        return report(args.run_dir, args.out)
    try:
        path = recipe_path(args.recipe) if args.recipe else None
        recipe = load_recipe(path, tuple(args.overrides))
    except (RecipeError, FileNotFoundError) as err:
        print(f"duet: {err}", file=sys.stderr)
        return 2
    from cluster.preflight import BadInput, preflight
    from cluster.run import MODELS_DIR

    if args.command == "check":
        try:  # task files and models, as duet train checks them before Ray starts
            preflight(recipe, MODELS_DIR)
        except BadInput as err:
            print(f"duet: {err}", file=sys.stderr)
            return 2
        print(json.dumps(recipe.model_dump(mode="json"), indent=2))
        return 0
    from cluster.loggers import MissingExtra, require_installed
    from cluster.run import settle
    from cluster.storage import StorageError

    try:
        recipe = settle(recipe)
        require_installed(recipe.output.loggers)  # a tracker's extra missing: one line, before Ray
        preflight(recipe)  # task files (models: resolved by run_training, also before Ray)
    except (StorageError, MissingExtra, BadInput) as err:  # before Ray starts: a bad input, like a bad recipe field
        print(f"duet: {err}", file=sys.stderr)
        return 2
    return train(recipe, args.resume)


def stops() -> tuple[tuple[type[BaseException], int], ...]:
    """(error, exit status) of the ways a run stops with one line instead of a traceback: exit 2 for
    what is refused before Ray starts (a model missing, ``output.dir`` in use by another run), 1 for
    a run that could not go on (a placement that does not fit, a missing checkpoint, a diverged
    run, learner restarts spent, a non-finite adapter or step refused by the learner)."""
    from cluster.divergence import TrainingDiverged
    from cluster.fleet import LearnerRestartsSpent
    from cluster.models import ModelNotFound
    from cluster.placement import PlanDoesNotFit
    from cluster.run import RunDirBusy
    from cluster.storage import StorageError
    from learner.export import NonFiniteAdapter
    from learner.update import NonFiniteStepApplied

    return ((ModelNotFound, 2), (RunDirBusy, 2), (PlanDoesNotFit, 1), (FileNotFoundError, 1), (StorageError, 1),
            (TrainingDiverged, 1), (LearnerRestartsSpent, 1), (NonFiniteAdapter, 1), (NonFiniteStepApplied, 1))


def one_line(err: BaseException) -> str:
    """The error's own message: a learner's error that came through Ray carries the remote
    traceback in its text, and the original exception (whose message is the one line) as ``cause``."""
    cause = getattr(err, "cause", None)
    return str(cause if isinstance(cause, BaseException) else err)


def train(recipe, resume: bool) -> int:
    """``duet train`` on a settled recipe: the run's exit status (see :func:`stops`)."""
    from cluster.plugin_faults import PluginFailed
    from cluster.run import Terminated, run_training

    table = stops()
    try:
        summary = run_training(recipe, resume=resume)
    except (Terminated, KeyboardInterrupt) as err:  # the run unwound (cluster.run.unwind_on_sigterm)
        name, code = ("SIGTERM", 143) if isinstance(err, Terminated) else ("SIGINT", 130)
        print(f"duet: stopped by {name} (run directory {recipe.run_dir()})", file=sys.stderr)
        return code
    except PluginFailed as err:  # a reward/env raising on too many episodes; a checkpoint was written
        print(f"duet: {err.line()}", file=sys.stderr)
        return 1
    except tuple(kind for kind, _ in table) as err:
        code = next(c for kind, c in table if isinstance(err, kind))
        print(f"duet: {one_line(err)}", file=sys.stderr)
        return code
    return 0 if summary.completed else 1

if __name__ == "__main__":
    sys.exit(main())
