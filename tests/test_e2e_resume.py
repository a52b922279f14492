"""Resume: ``duet train`` for 2 steps (a checkpoint after each), then ``duet train --resume`` to 4
steps in the same run directory. Both runs are real CLI processes on their own local Ray (real vLLM
worker, real DeepSpeed learner, tiny budget, async mode as the default recipe), read back from the
files they write.

Hand-worked expectations (tasks_per_step 4 x group_size 2 = 8 episodes per step):
  run 1: adapter v1 (untrained, at start-up), v2 after step 0, v3 after step 1;
         checkpoints step_000001, step_000002 (LATEST), learner step 2, 16 episodes produced.
         The last step's checkpoint is written once (by the loop, not again at the end).
  run 2: no untrained v1 at start-up: the checkpoint is loaded and published as v4 (continuing
         from the saved v3) before any rollout, then v5 after step 2 and v6 after step 3; learner
         steps 3 and 4; 16 + 16 = 32 episodes in the counters; no "base" evaluation or SFT on resume.
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
TINY = ("data.tasks_per_step=4", "rollout.group_size=2", "data.eval_size=4", "train.sft.steps=0",
        "output.transcripts_per_step=1", "name=resume", "train.mode=async", "train.max_staleness=1")


def duet_train(run_dir: Path, models_dir: Path, *args: str) -> subprocess.CompletedProcess:
    sets = [x for kv in (*TINY, f"output.dir={run_dir}") for x in ("--set", kv)]
    env = {**os.environ, "DUET_MODELS": str(models_dir)}
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "train", *sets, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def rollout_steps(table) -> list[int]:
    return [r["step"] for r in table if r["scope"] == "rollout" and r["name"] == "episodes"]


def values(table, scope: str, name: str) -> list[float]:
    return [r["value"] for r in table if r["scope"] == scope and r["name"] == name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models_dir):
    run_dir = tmp_path_factory.mktemp("resume") / "run"
    first = duet_train(run_dir, models_dir, "--set", "train.steps=2", "--set", "train.checkpoint_every=1")
    metrics_1 = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    second = duet_train(run_dir, models_dir, "--set", "train.steps=4", "--resume")
    return run_dir, first, metrics_1, second


def test_first_run_checkpoints_each_step(runs):
    run_dir, first, metrics_1, _ = runs
    ckpts = run_dir / "checkpoints"
    # step_000000 (before step 0: a learner restart's way back), step_000001/2 from run 1 (every
    # step), step_000004 the resumed run's final one
    assert sorted(p.name for p in ckpts.iterdir()) == ["LATEST", "step_000000", "step_000001", "step_000002",
                                                       "step_000004"]
    state = json.loads((ckpts / "step_000002" / "driver.json").read_text())
    assert state["step"] == 2 and state["versions"] == {"policy": 3}
    assert {k: v for k, v in state["counters"].items() if v} == {"produced": 16, "trained": 16}
    assert json.loads((ckpts / "step_000002" / "policy" / "learner_state.json").read_text())["step"] == 2
    assert rollout_steps(metrics_1) == [0, 1]
    assert values(metrics_1, "learner/policy", "learner/step") == [1.0, 2.0]
    assert values(metrics_1, "sync/policy", "version") == [1.0, 2.0, 3.0]
    saved = [ln for ln in first.stdout.splitlines() if ln.startswith("[duet] checkpoint ")]
    assert [ln.rsplit("/", 1)[1] for ln in saved] == ["step_000000", "step_000001", "step_000002"]  # each once


def test_resume_continues_from_the_checkpoint_step(runs):
    run_dir, _, _, second = runs
    out = second.stdout
    assert f"[duet] resumed from {run_dir / 'checkpoints' / 'step_000002'} at step 2" in out
    step_lines = [ln.split("|")[0].split() for ln in out.splitlines() if ln.startswith("step ")]
    assert step_lines == [["step", "3"], ["step", "4"]]  # 1-based display: steps 2 and 3 only
    assert "[eval] base" not in out and "[sft]" not in out  # neither redone on resume
    assert "[eval] before_rl" in out and "[eval] after_rl" in out


def test_learner_step_and_adapter_versions_continue(runs):
    run_dir, _, metrics_1, _ = runs
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    # the earlier attempt's rows are kept in front, the resumed run's follow (file not overwritten)
    assert metrics[: len(metrics_1)] == metrics_1
    resumed = metrics[len(metrics_1):]
    assert rollout_steps(resumed) == [2, 3] and rollout_steps(metrics) == [0, 1, 2, 3]
    assert values(resumed, "rollout", "episodes") == [8.0, 8.0]
    assert values(resumed, "learner/policy", "learner/step") == [3.0, 4.0]
    assert values(resumed, "sync/policy", "version") == [4.0, 5.0, 6.0]
    assert values(resumed, "sync/policy", "proven_workers") == [1.0] * 3
    latest = run_dir / "checkpoints" / "step_000004"
    assert (run_dir / "checkpoints" / "LATEST").read_text() == "step_000004"
    assert json.loads((latest / "driver.json").read_text())["versions"] == {"policy": 6}
    assert json.loads((latest / "policy" / "learner_state.json").read_text())["step"] == 4


def test_final_counters_add_up(runs):
    run_dir, *_ = runs
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True and summary["steps"] == 4
    # 4 steps x 4 tasks x 2 samples, the first 16 carried over from the checkpoint
    assert {k: v for k, v in summary["counters"].items() if v} == {"produced": 32, "trained": 32}  # no fault
    assert summary["versions"] == {"policy": 6}
    assert summary["served"] == {"rollout-0": {"policy": 6}}
    assert set(summary["eval"]) == {"before_rl", "after_rl"}
    assert summary["eval"]["after_rl"]["episodes"] == 4.0
