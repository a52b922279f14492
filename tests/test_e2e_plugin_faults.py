"""A user's reward with bugs, loaded by dotted path, through the real ``duet train`` (issue 14,
bullet 1): the episodes it raises on score 0 and are counted; too many stop the run after a
checkpoint, in one line, exit 1; with that bug fixed ``--resume`` completes. Real CLI processes on
their own local Ray (vLLM worker, DeepSpeed learner), the ``smoke`` recipe (sync mode, 1 rollout
worker, 2 steps), run twice: the first attempt, then its resume.

``flaky:BrokenFromStep1`` has two bugs: a ``KeyError`` on every 7th call of the worker's one reward
object (it is called once per episode, in order), and on every call after the 16th.

Hand-worked call order, first attempt: evaluation "base" (4 held-out tasks x 1: calls 1-4),
"before_rl" (5-8), step 0 (4 tasks x G=2: 9-16), step 1 (17-24). Call 7 fails one episode of
before_rl (1/4, under the default ``train.max_plugin_error_fraction = 0.5``: contained), call 14
one of step 0 (1/8); step 1's 8 episodes all fail (8/8 > 0.5) -> a checkpoint at step 1 (step 0
trained; the failed batch neither counted produced nor kept in it; 1 + 8 = 9 training faults
counted), one line, exit 1.

The second bug fixed (the factory now builds ``EverySeventh()``: the first bug stays), ``--resume``
from that checkpoint on a fresh worker (its calls count from 1 again; base and warm start are not
run again): "before_rl" (calls 1-4, none fails), step 1 again (5-12: call 7 fails 1 of 8),
"after_rl" (13-16: call 14 fails 1 of 4). It completes: 16 episodes produced, all trained (a
contained fault scores 0 and is trained like any episode); 1 + 8 + 1 = 10 training faults in the
counters (evaluation faults are counted in their evaluation only), a ``plugin_errors/reward/flaky``
row of 1 at steps 0 (first attempt, kept) and 1 (the replay).
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
FAULT = "plugin_errors/reward/flaky"

FLAKY = '''
from rewards import ExactMatch


class EverySeventh:
    """Exact match, with a bug: a KeyError on every 7th call of this process (and, given ``after``,
    another one: on every call after that many)."""

    name = "flaky"

    def __init__(self, period=7, after=None):
        self.period, self.after, self.calls = period, after, 0

    def __call__(self, task, episode):
        self.calls += 1
        if self.calls % self.period == 0 or (self.after is not None and self.calls > self.after):
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


@pytest.fixture(scope="module")
def attempts(tmp_path_factory, models_dir):
    """(first attempt, what its run directory held then, the resumed attempt, the run directory)."""
    tmp = tmp_path_factory.mktemp("plugin_faults")
    first, run_dir = duet_train(tmp, models_dir, "flaky:BrokenFromStep1")
    checkpoints = run_dir / "checkpoints"
    held = {"latest": (checkpoints / "LATEST").read_text().strip() if (checkpoints / "LATEST").exists() else None,
            "summary": (run_dir / "summary.json").exists(),
            "rows": pq.read_table(run_dir / "metrics.parquet").to_pylist()}
    # the second bug fixed (the same recipe: the factory now builds a reward with the first bug only)
    fixed = FLAKY.replace("EverySeventh(after=16)", "EverySeventh()")
    resumed, _ = duet_train(tmp, models_dir, "flaky:BrokenFromStep1", plugin=fixed, resume=True)
    return first, held, resumed, run_dir


def test_a_reward_failing_a_whole_step_stops_after_a_checkpoint(attempts):
    result, held, _, run_dir = attempts
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "step_000001"
    expected = ("duet: reward 'flaky' raised KeyError: 'colour' on 8 of 8 episodes of step 1 (8 failed in a plugin, "
                f"more than train.max_plugin_error_fraction = 0.5); checkpoint written: {checkpoint}")
    lines = result.stderr.splitlines()
    assert lines[-1] == expected and [ln for ln in lines if ln.startswith("duet:")] == [expected]
    assert "Traceback" not in result.stderr
    assert held["latest"] == "step_000001" and checkpoint.is_dir()
    assert not held["summary"]  # the run did not complete
    state = json.loads((checkpoint / "driver.json").read_text())
    assert state["counters"]["produced"] == 8  # step 0 only
    assert state["plugin_errors"] == {"reward/flaky": 9}  # call 14 (step 0), then all 8 of step 1


def test_a_reward_raising_every_seventh_call_is_contained_and_counted(attempts):
    _, held, resumed, run_dir = attempts
    evals = {r["scope"]: r["value"] for r in held["rows"] if r["scope"].startswith("eval/") and r["name"] == FAULT}
    assert evals == {"eval/before_rl": 1.0}  # first attempt: call 7, none in base (calls 1-4)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert FAULT not in summary["eval"]["before_rl"]  # resumed: calls 1-4
    assert summary["eval"]["after_rl"][FAULT] == 1  # resumed: call 14
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    faults = {r["step"]: r["value"] for r in rows if r["scope"] == "rollout" and r["name"] == FAULT}
    assert faults == {0: 1.0, 1: 1.0}  # call 14 of the first attempt, call 7 of the resumed one
    assert "Traceback" not in resumed.stderr


def test_with_the_stopping_bug_fixed_resume_completes_and_keeps_the_counts(attempts):
    _, _, resumed, run_dir = attempts
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True
    assert (summary["counters"]["produced"], summary["counters"]["trained"]) == (16, 16)
    # the 9 faults of the first attempt (counted before the stop, kept in its checkpoint), 1 of the replay
    assert {k: v for k, v in summary["counters"].items() if k.startswith("plugin_errors")} == {FAULT: 10}
