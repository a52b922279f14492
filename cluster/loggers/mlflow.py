"""MLflow: a local file store under ``RUN_DIR/mlruns`` (``mlflow ui --backend-store-uri file://RUN_DIR/mlruns``).

One MLflow run per run attempt, in the experiment named after the recipe's run; metrics by
:class:`mlflow.tracking.MlflowClient` against that store (no global tracking URI is set, nothing
leaves the machine). Metric keys are the tags with "/" written "." (:func:`metric_key`): the file
store keeps each key as a file path, and ``eval/base/reward`` beside ``eval/base/reward/exact_match``
cannot both be files; characters MLflow refuses become ``_``. MLflow 3.17 keeps its file store "in maintenance mode" and refuses it unless
``MLFLOW_ALLOW_FILE_STORE`` is true; a database store needs SQLAlchemy, which ``mlflow-skinny``
leaves out, so the tracker sets that variable (unless it is already set). Extra:
``duet-rl[mlflow]`` (``mlflow-skinny``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from cluster.loggers import Point

_REFUSED = re.compile(r"[^\w\-. ]")  # MLflow keys: alphanumerics, _ - . space (and /, not used)
BATCH = 1000  # MLflow's log_batch limit on metrics per call


def metric_key(tag: str) -> str:
    """``tag`` as an MLflow metric key: ``"learner/policy/kl/ref"`` -> ``"learner.policy.kl.ref"``."""
    return _REFUSED.sub("_", tag.replace("/", "."))


def tracking_uri(run_dir: Path) -> str:
    return (run_dir / "mlruns").resolve().as_uri()


class MlflowTracker:
    """Metrics of one run attempt in MLflow's file store under the run directory."""

    def __init__(self, run_dir: Path, run_name: str, config: dict) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=tracking_uri(run_dir))
        experiment = self.client.get_experiment_by_name(run_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(run_name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id

    def write(self, points: Sequence[Point]) -> None:
        metrics = [Metric(metric_key(p.tag), p.value, int(p.wall_time * 1000), p.step) for p in points]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i: i + BATCH])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
