"""``python -m deploy.offline_models build --out DIR [--only NAME ...]``: build (or reuse) the
built-in models and print one line per model: name, parameters, built/reused, seconds, directory.
On a terminal a spinner with the elapsed time shows the model being built (rich, gone when done)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from deploy.offline_models.builder import DEFAULT_NAMES, MODEL_NAMES, ON_REQUEST, BuildResult, ensure


def _line(r: BuildResult) -> str:
    return f"{r.name:<16} {r.parameters / 1e6:8.2f}M params  {'built ' if r.built else 'reused'}  {r.seconds:5.1f}s  {r.path}"


def _building(name: str):
    """While ``name`` builds: on a terminal a transient spinner line with the elapsed time, else nothing."""
    if not sys.stdout.isatty():
        return contextlib.nullcontext()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn(f"building {name}"), TimeElapsedColumn(), transient=True)
    progress.add_task(name, total=None)
    return progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.offline_models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build or reuse the built-in models")
    cmd.add_argument("--out", required=True, help="directory holding one sub-directory per model")
    cmd.add_argument("--only", nargs="+", choices=MODEL_NAMES, metavar="NAME",
                     help=f"build only these (default: {', '.join(DEFAULT_NAMES)}; "
                          f"{', '.join(ON_REQUEST)} only when named: minutes on a CPU)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    for name in args.only or DEFAULT_NAMES:
        with _building(name):
            result = ensure(name, args.out)
        print(_line(result), flush=True)
    print(f"models ready in {args.out} ({time.perf_counter() - start:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
