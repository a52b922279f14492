"""Experiment trackers (``output.loggers``): a hand-made run drives :class:`cluster.progress.RunLog`
directly (no Ray) with every tracker selected; each tracker's files are read back with that
library's own reader and compared with ``metrics.parquet``.

The sequence (one role, 2 RL steps), and the tracker step each step -1 row gets (hand-worked from
the naming rule in ``cluster.loggers``: the RL steps completed when it was recorded):

    sync v1 (start-up)      -> step 0     eval "base"      -> step 0
    sync v2 (step 0's)      -> step 0     rows of step 0   -> step 0
    sync v3 (step 1's)      -> step 1     rows of step 1   -> step 1
    eval "after_rl"         -> step 2

``sync/policy/*`` is written twice at step 0 (v1 and v2): TensorBoard and MLflow keep both points,
W&B's one history row per step keeps the later (v2).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cluster.loggers import Trackers, unknown_loggers
from cluster.progress import RunLog
from rollout.episode_arrow import EpisodeBatch
from rollout.types import Episode

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
TRACKERS = ["console", "tensorboard", "wandb", "mlflow"]
# tracker step of each block of step -1 rows of metrics.parquet (one sync or one evaluation), in order
MINUS_ONE_BLOCKS = [("sync/policy", 0), ("eval/base", 0), ("sync/policy", 0), ("sync/policy", 1),
                    ("eval/after_rl", 2)]


@dataclass(frozen=True)
class FakeSync:
    role: str
    version: int
    latency_s: float
    proven: tuple[str, ...]
    probe_gap: float


@dataclass(frozen=True)
class FakeStats:
    tokens_per_s: float


def _batch(rewards: list[float]) -> EpisodeBatch:
    return EpisodeBatch(tuple(Episode(f"e{i}", "g0", "t0", (), reward=r, success=r > 0.5,
                                      reward_components={"exact_match": r}) for i, r in enumerate(rewards)))


def drive(run_dir: Path, loggers=TRACKERS, fail: bool = False, print_lines: bool = False,
          sft_steps: int = 0, pause_s: float = 0.0) -> None:
    """The hand-made run of the module docstring (with ``sft_steps``: an SFT stage after "base";
    ``pause_s``: seconds each SFT and RL step takes, for the progress bar's pace)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(json.dumps({"name": "trial", "seed": 7}))
    log = RunLog(run_dir, 0, print_lines=print_lines, loggers=loggers)
    log.sync(FakeSync("policy", 1, 0.25, ("w0",), 1e-6))
    log.evaluation("base", {"episodes": 2.0, "reward": 0.5, "success": 0.5}, _batch([0.0, 1.0]))
    log.sft_begin("policy", sft_steps)
    for step in range(sft_steps):
        time.sleep(pause_s)
        log.sft_step("policy", step, sft_steps, 0.5 / (step + 1))
    log.begin_steps(0, 2)
    for step in range(2):
        time.sleep(pause_s)
        report = FakeSync("policy", step + 2, 0.5 + step, ("w0", "w1"), 2e-6 * (step + 1))
        log.sync(report)
        updates = {"policy": {"loss/policy": -0.125 * (step + 1), "kl/ref": 0.01 * step, "policy/entropy": 1.5}}
        log.step(step, _batch([0.0, 1.0, 1.0, float(step)]), [FakeStats(100.0 + step)], updates,
                 {"policy": report}, {"policy": step + 2}, {"time/sample": 0.5, "time/step": 1.0 + step})
    if fail:
        log.close(failed=True)
        return
    log.evaluation("after_rl", {"episodes": 2.0, "reward": 1.0, "success": 1.0}, _batch([1.0, 1.0]))
    log.close()


def expected_points(run_dir: Path, blocks=MINUS_ONE_BLOCKS) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(tracker step, value)] in the order metrics.parquet holds them (events left out);
    ``blocks``: the hand-worked (scope, tracker step) of each sync or evaluation, in order."""
    rows = [r for r in pq.read_table(run_dir / "metrics.parquet").to_pylist() if r["scope"] != "event"]
    blocks, points, previous = iter(blocks), defaultdict(list), None
    for r in rows:
        if r["step"] >= 0:
            step, previous = r["step"], None
        else:
            if r["scope"] != previous:  # a new sync or evaluation
                scope, step = next(blocks)
                assert r["scope"] == scope
                previous = scope
        points[f"{r['scope']}/{r['name']}"].append((step, r["value"]))
    assert next(blocks, None) is None  # every hand-worked block seen
    return dict(points)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("trackers") / "trial"
    drive(run_dir)
    return run_dir, expected_points(run_dir)


# ---- readers: each library's own ------------------------------------------------------------------

def tensorboard_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_runs(run_dir: Path) -> tuple:
    from mlflow.tracking import MlflowClient

    from cluster.loggers.mlflow import tracking_uri

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.17 reads its file store only so
    client = MlflowClient(tracking_uri=tracking_uri(run_dir))
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def mlflow_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    client, runs = mlflow_runs(run_dir)
    (run,) = runs
    history = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}
    return {key: [(m.step, m.value) for m in sorted(ms, key=lambda m: (m.step, m.timestamp))]
            for key, ms in history.items()}


def wandb_records(run_dir: Path) -> list[dict]:
    """The records of the run's ``.wandb`` transaction log, read by W&B's own reader
    (``wandb leet inspect --json``: wandb-core's reader of offline runs, one JSON line per record)."""
    (path,) = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(path), "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def wandb_history(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    history = defaultdict(list)
    for rec in records:
        if rec["type"] == "history":
            item = rec["history"]["item"]
            for key, value in item.items():
                if not key.startswith("_"):
                    history[key].append((int(item["_step"]), value))
    return dict(history)


def check_round_trips(run_dir: Path, expected: dict, run_name: str) -> None:
    """Every tracker holds exactly ``expected`` (TensorBoard as float32, MLflow with "." keys, W&B
    the last value per step) and finished cleanly."""
    scalars = tensorboard_scalars(run_dir)
    assert scalars == {tag: [(s, float(np.float32(v))) for s, v in pts] for tag, pts in expected.items()}
    _, (mlflow_run,) = mlflow_runs(run_dir)
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == run_name
    assert mlflow_metrics(run_dir) == {tag.replace("/", "."): pts for tag, pts in expected.items()}
    records = wandb_records(run_dir)
    assert wandb_history(records) == {tag: sorted(dict(pts).items()) for tag, pts in expected.items()}
    (exit_record,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_record.get("exit_code", 0) == 0


# ---- the round trips -----------------------------------------------------------------------------

def test_hand_worked_steps_of_the_sequence(run):
    _, expected = run
    assert expected["sync/policy/version"] == [(0, 1.0), (0, 2.0), (1, 3.0)]
    assert expected["eval/base/success"] == [(0, 0.5)]
    assert expected["eval/after_rl/reward"] == [(2, 1.0)]
    assert expected["rollout/reward"] == [(0, 0.5), (1, 0.75)]  # mean of (0, 1, 1, step)
    assert expected["learner/policy/loss/policy"] == [(0, -0.125), (1, -0.25)]
    assert expected["rollout/tokens_per_s"] == [(0, 100.0), (1, 101.0)]


def test_tensorboard_round_trip(run):
    run_dir, expected = run
    scalars = tensorboard_scalars(run_dir)
    assert set(scalars) == set(expected)
    for tag, points in expected.items():  # TensorBoard keeps scalars as float32
        assert scalars[tag] == [(s, float(np.float32(v))) for s, v in points], tag


def test_mlflow_round_trip(run):
    run_dir, expected = run
    client, (run_info,) = mlflow_runs(run_dir)
    assert run_info.info.status == "FINISHED" and run_info.info.run_name == "trial"
    # MLflow keys: the tags with "." for "/" (its file store cannot hold eval/base/reward beside
    # eval/base/reward/exact_match)
    assert mlflow_metrics(run_dir) == {tag.replace("/", "."): points for tag, points in expected.items()}


def test_wandb_offline_round_trip(run):
    run_dir, expected = run
    records = wandb_records(run_dir)
    last_per_step = {tag: sorted(dict(points).items()) for tag, points in expected.items()}  # later wins
    assert wandb_history(records) == last_per_step
    assert last_per_step["sync/policy/version"] == [(0, 2.0), (1, 3.0)]
    (header,) = [r["run"] for r in records if r["type"] == "run"]
    assert header["display_name"] == "trial" and header["config"]["update"]["seed"] == 7
    (exit_record,) = [r["exit"] for r in records if r["type"] == "exit"]
    assert exit_record.get("exit_code", 0) == 0


def test_failed_run_closes_trackers_as_failed(tmp_path):
    run_dir = tmp_path / "failed"
    drive(run_dir, ["tensorboard", "wandb", "mlflow"], fail=True)
    _, (run_info,) = mlflow_runs(run_dir)
    assert run_info.info.status == "FAILED"
    (exit_record,) = [r["exit"] for r in wandb_records(run_dir) if r["type"] == "exit"]
    assert exit_record["exit_code"] == 1
    # what was recorded before the failure is there: both steps, nothing after
    assert tensorboard_scalars(run_dir)["rollout/tokens_per_s"] == [(0, 100.0), (1, 101.0)]
    assert "eval.after_rl.success" not in mlflow_metrics(run_dir)


def test_console_only_opens_no_tracker(tmp_path):
    drive(tmp_path / "plain", ["console"])
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["metrics.parquet", "recipe.json", "transcripts"]


# ---- selection and errors ------------------------------------------------------------------------

def test_unknown_and_repeated_logger_names_are_named_by_index():
    assert unknown_loggers(["console", "tensorbord", "console"]) == [
        "output.loggers[1]: unknown logger 'tensorbord' (choose from console, tensorboard, wandb, mlflow)",
        "output.loggers[2]: 'console' is listed twice"]
    assert unknown_loggers(["console", "tensorboard", "wandb", "mlflow"]) == []


def test_unknown_logger_fails_at_recipe_load(capsys):
    from cluster.cli import main

    assert main(["check", "smoke", "--set", 'output.loggers=["console","tensorbord"]']) == 2
    err = capsys.readouterr().err
    assert "output.loggers[1]: unknown logger 'tensorbord'" in err


def test_missing_extra_fails_before_ray_with_one_line(tmp_path):
    code = ("import sys\n"
            "sys.modules['wandb'] = None  # as if duet-rl[wandb] were not installed\n"
            "from cluster.cli import main\n"
            f"rc = main(['train', 'smoke', '--set', 'output.loggers=[\"console\",\"wandb\"]', "
            f"'--set', 'output.dir={tmp_path}/{{name}}'])\n"
            "print('ray imported:', 'ray' in sys.modules)\n"
            "sys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "duet: output.loggers[1] = 'wandb' needs the 'wandb' package: pip install duet-rl[wandb]"]
    assert out.stdout.strip() == "ray imported: False"
    assert not (tmp_path / "smoke").exists()  # nothing of the run was started


def test_trackers_with_console_only_queue_nothing(tmp_path):
    trackers = Trackers(tmp_path, ["console"])
    trackers.add(0, "rollout", "reward", 1.0, 0.0)
    assert trackers.opened == [] and trackers.pending == []


def test_trackers_are_imported_only_when_selected():
    code = ("import sys\n"
            "import cluster.loggers, cluster.console, cluster.config, cluster.cli\n"
            "from cluster.config import load_recipe\n"
            "load_recipe(None, ('output.loggers=[\"console\",\"tensorboard\",\"wandb\",\"mlflow\"]',))\n"
            "print(sorted(m for m in ('tensorboard', 'wandb', 'mlflow', 'rich', 'ray') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # a recipe naming them loads without importing any


CONSOLE_RUN = """
import sys
sys.path.insert(0, "tests")
from pathlib import Path
from test_loggers import drive
drive(Path(sys.argv[1]), ["console"], print_lines=True, sft_steps=12, pause_s=0.15)
"""
# the lines of that run, as a job log has them (hand-written: the formats of cluster.progress)
CONSOLE_LINES = [
    "[eval] base       success 0.500  reward +0.500  (2 held-out episodes)",
    "[sft] policy step    1/12 loss 0.5000",
    "[sft] policy step   11/12 loss 0.0455",
    "[sft] policy step   12/12 loss 0.0417",
    "step    1 | reward +0.500 | success 0.50 | policy: loss -0.1250 ent 1.500 kl 0.0000 | sync policy v2 0.50s 2 proven | 1.0s",
    "step    2 | reward +0.750 | success 0.75 | policy: loss -0.2500 ent 1.500 kl 0.0100 | sync policy v3 1.50s 2 proven | 2.0s",
    "[eval] after_rl   success 1.000  reward +1.000  (2 held-out episodes)",
]


def test_console_lines_through_a_pipe_are_exactly_the_job_log_lines(tmp_path):
    out = subprocess.run([sys.executable, "-c", CONSOLE_RUN, str(tmp_path / "run")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == CONSOLE_LINES


def test_console_on_a_terminal_adds_sft_and_rl_bars(tmp_path):
    from test_console import plain, run_in_pty

    rc, raw = run_in_pty([sys.executable, "-c", CONSOLE_RUN, str(tmp_path / "run")], timeout=120)
    text = plain(raw)
    assert rc == 0, text
    for line in CONSOLE_LINES:
        assert line in text, line
    assert re.search(r"SFT policy .*\b12/12\b", text) and re.search(r"RL steps .*\b2/2\b", text)
    # SFT at ~0.15 s a step: after step 1 of 12 the ETA is 11 x its pace (0:00:02 unloaded, counting down)
    assert re.search(r"SFT policy .* 1/12 \d:\d\d:\d\d ETA 0:00:0[1-9]", text), text
    assert re.search(r"RL steps .*\b1/2 \d:\d\d:\d\d ETA 0:00:0[0-9] reward \+0\.500 success 0\.50", text), text
