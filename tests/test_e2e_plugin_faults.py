"""A user's reward with a bug, loaded by dotted path, through the real ``duet train`` (issue 14,
bullet 1): the episodes it raises on score 0 and are counted; too many stop the run after a
checkpoint, in one line, exit 1. Real CLI processes on their own local Ray (vLLM worker, DeepSpeed
learner), the ``smoke`` recipe (sync mode, 1 rollout worker).

Hand-worked call order: the worker's one reward object is called once per episode, in order --
evaluation "base" (4 held-out tasks x 1: calls 1-4), "before_rl" (5-8), step 0 (4 tasks x G=2:
9-16), step 1 (17-24), "after_rl" (25-28).

- ``flaky:EverySeventh`` raises ``KeyError`` on calls 7, 14, 21, 28: one episode each of before_rl,
  step 0, step 1 and after_rl. The largest fraction is 1/4 (an evaluation), under the default
  ``train.max_plugin_error_fraction = 0.5``, so the run completes: 2 training faults in the counters, 1 in
  each of those evaluations, a ``plugin_errors/reward/flaky`` row of 1 at steps 0 and 1.
- ``flaky:BrokenFromStep1`` raises on every call after the 16th: step 1's 8 episodes all fail
  (8/8 > the default 0.5) -> a checkpoint at step 1 (step 0 trained; the failed batch neither
  counted produced nor kept in it), one line, exit 1. With the bug fixed, ``--resume`` from that
  checkpoint generates step 1 again and completes: 16 episodes produced, all trained.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]

FLAKY = '''
from rewards import ExactMatch


class EverySeventh:
    """Exact match, with a bug: a KeyError on every 7th call of this process."""

    name = "flaky"

    def __init__(self, period=7, after=None):
        self.period, self.after, self.calls = period, after, 0

    def __call__(self, task, episode):
        self.calls += 1
        broken = self.calls > self.after if self.after is not None else self.calls % self.period == 0
        if broken:
            raise KeyError("colour")
        return ExactMatch()(task, episode)


def BrokenFromStep1():
    return EverySeventh(after=16)
'''


def duet_train(tmp: Path, models_dir: Path, reward: str, *sets: str, plugin: str = FLAKY,
               resume: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    (tmp / "plugins").mkdir(exist_ok=True)
    (tmp / "plugins" / "flaky.py").write_text(plugin)
    run_dir = tmp / "run"
    args = [x for kv in (f'rewards=[{{name="{reward}"}}]', f"output.dir={run_dir}", "output.report=false", *sets)
            for x in ("--set", kv)]
    # the driver (recipe check) and the Ray workers it starts import the plugin from PYTHONPATH
    env = {**os.environ, "DUET_MODELS": str(models_dir),
           "PYTHONPATH": os.pathsep.join([str(tmp / "plugins"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "cluster.cli", "train", "smoke", *args, *(["--resume"] if resume else [])]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result, run_dir


def test_a_reward_raising_every_seventh_call_is_contained_and_counted(tmp_path, models_dir):
    result, run_dir = duet_train(tmp_path, models_dir, "flaky:EverySeventh")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True and summary["counters"]["produced"] == 16
    assert summary["counters"]["plugin_errors/reward/flaky"] == 2  # calls 14 and 21
    assert "plugin_errors/reward/flaky" not in summary["eval"]["base"]  # calls 1-4
    assert summary["eval"]["before_rl"]["plugin_errors/reward/flaky"] == 1  # call 7
    assert summary["eval"]["after_rl"]["plugin_errors/reward/flaky"] == 1  # call 28
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    faults = {r["step"]: r["value"] for r in rows if r["scope"] == "rollout" and r["name"] == "plugin_errors/reward/flaky"}
    assert faults == {0: 1.0, 1: 1.0}
    assert "Traceback" not in result.stderr


def test_a_reward_failing_a_whole_step_stops_after_a_checkpoint(tmp_path, models_dir):
    result, run_dir = duet_train(tmp_path, models_dir, "flaky:BrokenFromStep1")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "step_000001"
    expected = ("duet: reward 'flaky' raised KeyError: 'colour' on 8 of 8 episodes of step 1 (8 failed in a plugin, "
                f"more than train.max_plugin_error_fraction = 0.5); checkpoint written: {checkpoint}")
    lines = result.stderr.splitlines()
    assert lines[-1] == expected and [ln for ln in lines if ln.startswith("duet:")] == [expected]
    assert "Traceback" not in result.stderr
    assert (run_dir / "checkpoints" / "LATEST").read_text().strip() == "step_000001" and checkpoint.is_dir()
    assert not (run_dir / "summary.json").exists()  # the run did not complete
    assert json.loads((checkpoint / "driver.json").read_text())["counters"]["produced"] == 8  # step 0 only
    # the bug fixed (the same recipe: the factory now builds a reward that never raises), --resume goes on
    fixed = FLAKY.replace("EverySeventh(after=16)", "EverySeventh(period=10**9)")
    resumed, _ = duet_train(tmp_path, models_dir, "flaky:BrokenFromStep1", plugin=fixed, resume=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True
    assert (summary["counters"]["produced"], summary["counters"]["trained"]) == (16, 16)
    # the 8 faults of step 1 (counted before the stop, kept in its checkpoint), none after the fix
    assert {k: v for k, v in summary["counters"].items() if k.startswith("plugin_errors")} == {
        "plugin_errors/reward/flaky": 8}
