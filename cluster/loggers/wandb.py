"""Weights & Biases, offline: a run under ``RUN_DIR/wandb/offline-run-*/`` (no network, no login;
``wandb sync`` uploads it later, ``wandb leet inspect`` reads it here).

The run's config is the resolved recipe. W&B's history has one row per step: the points of one
tracker step are logged together (``run.log(..., step=s)``); a tag logged twice at one step keeps
the later value. W&B's console capture is off, so the run's own stdout (lines, progress bar) is
untouched. Extra: ``duet-rl[wandb]``.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path
from typing import Sequence

import wandb

from cluster.loggers import Point


class WandbTracker:
    """One offline W&B run per run attempt."""

    def __init__(self, run_dir: Path, run_name: str, config: dict) -> None:
        settings = wandb.Settings(mode="offline", console="off", silent=True, x_disable_stats=True,
                                  x_disable_meta=True, disable_git=True, save_code=False)
        self.run = wandb.init(dir=str(run_dir), project=run_name, name=run_name, config=config,
                              settings=settings, reinit="create_new")

    def write(self, points: Sequence[Point]) -> None:
        for step, group in groupby(points, key=lambda p: p.step):
            self.run.log({p.tag: p.value for p in group}, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
