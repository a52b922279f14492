"""Experiment trackers (``output.loggers``): every scalar a run records goes to each selected one.

``"console"`` is the run's own display on stdout (:mod:`cluster.console`); the others are
trackers, one leaf module each, imported only when a recipe selects them:

- ``"tensorboard"`` (``pip install duet-rl[tensorboard]``): event files under ``RUN_DIR/tensorboard/``;
- ``"wandb"`` (``pip install duet-rl[wandb]``): an offline W&B run under ``RUN_DIR/wandb/``;
- ``"mlflow"`` (``pip install duet-rl[mlflow]``): a local MLflow file store, ``RUN_DIR/mlruns``.

One naming rule for all of them: a row ``(step, scope, name, value)`` of ``metrics.parquet``
becomes the scalar ``f"{scope}/{name}"`` (MLflow: with "." for "/", see its module) at
tracker step ``step``; rows the Parquet file keeps at step -1 (adapter syncs, evaluations) go at
the RL step the run was at when they were taken: the number of RL steps completed, so a sync
published by step t's update is at t, the "before_rl" evaluation at the first step trained and
"after_rl" at ``train.steps``. Event rows (scope "event", free text) are not scalars and stay in
the Parquet file only. Points are written at each :meth:`Trackers.flush` (the run flushes after
every step and evaluation) and the trackers are closed at the end of the run, marked failed when
the run raised.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

CONSOLE = "console"


@dataclass(frozen=True)
class Point:
    """One scalar for the trackers."""

    tag: str
    """``f"{scope}/{name}"`` of the metrics row."""
    step: int
    """Tracker step (>= 0): the row's RL step, or the run's position for a step -1 row."""
    value: float
    wall_time: float
    """Seconds since the epoch when the row was recorded."""


class Tracker(Protocol):
    """One experiment tracker backend."""

    def write(self, points: Sequence[Point]) -> None:
        """Record ``points`` (in order; steps never decrease) and make them durable."""
        ...

    def close(self, failed: bool) -> None:
        """Finish the tracker's run (``failed``: the training run raised)."""
        ...


@dataclass(frozen=True)
class Backend:
    """A selectable tracker: the package it needs, the extra that installs it, how to open it."""

    package: str
    """Top-level module imported to check the extra is installed."""
    extra: str
    """``pip install duet-rl[extra]``."""
    open: Callable[[Path, str, dict], Tracker]
    """``open(run_dir, run_name, config)`` (imports the leaf module)."""


def _tensorboard(run_dir: Path, name: str, config: dict) -> Tracker:
    from cluster.loggers.tensorboard import TensorBoardTracker

    return TensorBoardTracker(run_dir)


def _wandb(run_dir: Path, name: str, config: dict) -> Tracker:
    from cluster.loggers.wandb import WandbTracker

    return WandbTracker(run_dir, name, config)


def _mlflow(run_dir: Path, name: str, config: dict) -> Tracker:
    from cluster.loggers.mlflow import MlflowTracker

    return MlflowTracker(run_dir, name, config)


BACKENDS: dict[str, Backend] = {
    "tensorboard": Backend("tensorboard", "tensorboard", _tensorboard),
    "wandb": Backend("wandb", "wandb", _wandb),
    "mlflow": Backend("mlflow", "mlflow", _mlflow),
}
LOGGER_NAMES: tuple[str, ...] = (CONSOLE, *BACKENDS)


class MissingExtra(RuntimeError):
    """A selected tracker's package is not installed; the message says which extra installs it."""


def unknown_loggers(names: Sequence[str]) -> list[str]:
    """One message per bad entry of ``output.loggers`` (unknown or repeated name), naming its index."""
    problems = []
    for i, name in enumerate(names):
        if name not in LOGGER_NAMES:
            problems.append(f"output.loggers[{i}]: unknown logger {name!r} (choose from {', '.join(LOGGER_NAMES)})")
        elif name in names[:i]:
            problems.append(f"output.loggers[{i}]: {name!r} is listed twice")
    return problems


def require_installed(names: Sequence[str]) -> None:
    """Raise :class:`MissingExtra` (one line) for the first selected tracker whose package is
    missing; called before Ray starts."""
    for i, name in enumerate(names):
        backend = BACKENDS.get(name)
        if backend is None:
            continue
        try:
            importlib.import_module(backend.package)
        except ImportError:
            raise MissingExtra(f"output.loggers[{i}] = {name!r} needs the {backend.package!r} package: "
                               f"pip install duet-rl[{backend.extra}]") from None


class Trackers:
    """The selected trackers of one run, fed the metrics rows of :class:`cluster.progress.RunLog`."""

    def __init__(self, run_dir: Path, names: Sequence[str], run_name: str = "", config: dict | None = None) -> None:
        require_installed(names)
        self.position = 0
        """RL steps completed: the tracker step of a step -1 row."""
        self.pending: list[tuple[str, int | None, float, float]] = []
        self.opened: list[Tracker] = []
        try:
            for name in names:
                if name in BACKENDS:
                    self.opened.append(BACKENDS[name].open(run_dir, run_name or run_dir.name, dict(config or {})))
        except BaseException:
            self.close(failed=True)  # the ones already open
            raise

    def add(self, step: int, scope: str, name: str, value: float, wall_time: float) -> None:
        """Queue one metrics row (event rows are skipped); a step -1 row takes the position the run
        is at when it is flushed (the rows of one sync or evaluation are flushed together)."""
        if scope == "event" or not self.opened:
            return
        self.pending.append((f"{scope}/{name}", step if step >= 0 else None, float(value), wall_time))

    def completed(self, steps: int) -> None:
        """``steps`` RL steps are done: later step -1 rows go at this tracker step."""
        self.position = max(self.position, steps)

    def flush(self) -> None:
        """Send the queued rows to every tracker."""
        rows, self.pending = self.pending, []
        points = [Point(tag, self.position if step is None else step, value, t) for tag, step, value, t in rows]
        if points:
            for tracker in self.opened:
                tracker.write(points)

    def close(self, failed: bool = False) -> None:
        """Write what is pending and finish every tracker (each is closed even if another fails)."""
        try:
            self.flush()
        finally:
            trackers, self.opened = self.opened, []
            errors = []
            for tracker in trackers:
                try:
                    tracker.close(failed)
                except Exception as err:  # noqa: BLE001 - close the others, then report
                    errors.append(err)
            if errors:
                raise errors[0]
