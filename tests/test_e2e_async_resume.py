"""A resumed async run trains the same episodes as one that never stopped (issue 14, bullet 5),
through the real CLI (real vLLM worker, real DeepSpeed learner, the ``smoke`` recipe in async mode,
tiny budget), read back from the files the runs write.

Run A: 4 steps, a checkpoint every 2. Its ``step_000002`` checkpoint is taken while step 2's
rollouts are in flight (launched at v2 before step 1's update); it holds them. Run B is a run that
stopped right after that checkpoint: a fresh run directory holding only ``checkpoints/step_000002``
(what a run killed there leaves that resume reads), resumed with ``--resume`` to step 4.

Hand-worked (4 tasks x 2 samples = 8 episodes a step, max_staleness 1):
  A: v1 at start-up, v2..v5 after steps 0..3; step t's batch generated at v_t (v1 for step 0 and 1),
     trained one version behind (lag 1 from step 1 on); checkpoint step_000002 holds step 2's 8
     episodes at v2, the learner at v3.
  B: the checkpoint's adapter republished as v4 (the same weights as v3); step 2 trains the 8 held
     episodes (v2, lag 1 against the checkpoint's v3, not 4 - 2 = 2); step 3's rollouts are sampled
     from v4 (= A's v3 weights) with the same seeds, so they are A's step-3 episodes, numbered v4.
  Counters at the end: 32 produced, 32 trained, 0 dropped, in both runs.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SETS = ("name=async_resume", "train.mode=async", "train.max_staleness=1", "train.steps=4",
        "train.checkpoint_every=2", "output.transcripts_per_step=8", "output.report=false")


def duet_train(run_dir: Path, models_dir: Path, *args: str) -> subprocess.CompletedProcess:
    sets = [x for kv in (*SETS, f"output.dir={run_dir}") for x in ("--set", kv)]
    env = {**os.environ, "DUET_MODELS": str(models_dir), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "smoke", *sets, *args], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("async_resume")
    full, stopped = root / "full", root / "stopped"
    duet_train(full, models_dir)
    shutil.copytree(full / "checkpoints" / "step_000002", stopped / "checkpoints" / "step_000002")
    (stopped / "checkpoints" / "LATEST").write_text("step_000002")
    resumed = duet_train(stopped, models_dir, "--resume")
    return full, stopped, resumed


def transcript(run_dir: Path, step: int) -> list[str]:
    """The step's trained episodes as their transcripts (task line, ``[policy vN]`` turn, result)."""
    return (run_dir / "transcripts" / f"step_{step:05d}.txt").read_text().strip().split("\n\n")


def renumbered(texts: list[str], shift: int) -> list[str]:
    """``texts`` with every ``[policy vN]`` as ``[policy vN+shift]``."""
    return [re.sub(r"\[policy v(\d+)\]", lambda m: f"[policy v{int(m[1]) + shift}]", t) for t in texts]


def rows_of(run_dir: Path, step: int, scope: str = "rollout") -> dict[str, float]:
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return {r["name"]: r["value"] for r in rows if r["step"] == step and r["scope"] == scope}


def test_the_checkpoint_holds_the_rollouts_in_flight(runs):
    full, *_ = runs
    ckpt = full / "checkpoints" / "step_000002"
    state = json.loads((ckpt / "driver.json").read_text())
    assert state["versions"] == {"policy": 3}
    assert state["in_flight"] == {"step": 2, "episodes": 8, "versions": {"policy": 3},
                                  "generated": {"policy": [2]}, "dir": "in_flight"}
    assert sorted(p.name for p in (ckpt / "in_flight").iterdir()) == ["episodes.parquet", "images.parquet",
                                                                      "stats.json"]
    assert pq.read_table(ckpt / "in_flight" / "images.parquet").num_rows >= 1  # the tasks' images, once each
    final = json.loads((full / "checkpoints" / "step_000004" / "driver.json").read_text())
    assert "in_flight" not in final  # the last step launches nothing


def test_resume_trains_the_held_episodes_first(runs):
    full, stopped, resumed = runs
    ckpt = stopped / "checkpoints" / "step_000002"
    assert f"[duet] resumed from {ckpt} at step 2, training first the 8 episodes in flight at it" in resumed.stdout
    held = transcript(stopped, 2)
    assert len(held) == 8 and all("[policy v2]" in t for t in held)
    assert held == transcript(full, 2)  # the same tasks, versions, samples and rewards


def test_the_next_step_samples_the_same_episodes(runs):
    full, stopped, _ = runs
    # step 3: A samples from v3, B from v4, its republished copy: the same text, one number up
    assert transcript(stopped, 3) == renumbered(transcript(full, 3), 1)
    assert all("[policy v4]" in t for t in transcript(stopped, 3))


def test_lags_drops_and_counters_equal_the_uninterrupted_run(runs):
    full, stopped, _ = runs
    for step in (2, 3):
        a, b = rows_of(full, step), rows_of(stopped, step)
        names = ("episodes", "dropped/stale", "staleness/policy", "queue_depth/in_flight", "reward", "success")
        assert {n: b[n] for n in names} == {n: a[n] for n in names}
        assert (a["episodes"], a["dropped/stale"], a["staleness/policy"]) == (8.0, 0.0, 1.0)
        # the same batch on the same restored weights: the same update (entropy of the policy on it)
        learner_a, learner_b = rows_of(full, step, "learner/policy"), rows_of(stopped, step, "learner/policy")
        assert learner_b["policy/entropy"] == pytest.approx(learner_a["policy/entropy"], rel=1e-3)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (full, stopped)]
    assert summaries[0]["counters"] == summaries[1]["counters"]
    c = summaries[0]["counters"]
    assert (c["produced"], c["trained"], c["dropped_stale"]) == (32, 32, 0)
    assert summaries[0]["versions"] == {"policy": 5} and summaries[1]["versions"] == {"policy": 6}
