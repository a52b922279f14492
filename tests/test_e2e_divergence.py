"""A run whose learning rate blows up stops plainly, through the real ``duet`` command line (issue 14).

The ``smoke`` recipe at ``optim.lr = 1e6``: the first update is finite but wrecks the adapter (the
policy's entropy jumps to log(vocab)); every later step's gradient norm is infinite, so each is
skipped (weights untouched) and nothing is published after the first skip; after
``train.max_skipped_steps`` = 2 skipped updates in a row the run stops with exit 1 and one line
naming the last complete checkpoint.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SETS = ("train.steps=5", "train.checkpoint_every=1", "train.max_skipped_steps=2", "data.eval_size=0",
        "roles.policy.learner.optim.lr=1e6", "output.progress=false")


@pytest.fixture(scope="module")
def run(tmp_path_factory, models_dir):
    run_dir = tmp_path_factory.mktemp("diverge") / "run"
    sets = [x for kv in (*SETS, f"output.dir={run_dir}") for x in ("--set", kv)]
    env = {**os.environ, "DUET_MODELS": str(models_dir)}
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "smoke", *sets], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    return run_dir, result, time.monotonic() - t0, pq.read_table(run_dir / "metrics.parquet").to_pylist()


def test_the_run_stops_with_exit_1_and_one_line_naming_the_last_good_checkpoint(run):
    run_dir, result, elapsed, _ = run
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("duet: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = run_dir / "checkpoints" / "step_000002"  # the stop comes before step 3's checkpoint
    assert lines[0] == (f"duet: training diverged: policy's updates of steps 2-3 were all skipped (loss or "
                        f"gradient norm not finite; train.max_skipped_steps = 2); last good checkpoint: {last}")
    assert (last / "driver.json").is_file() and not (run_dir / "checkpoints" / "step_000003").exists()
    assert elapsed < 120


def test_skipped_steps_are_counted_and_nothing_is_published_after_the_first_skip(run):
    _, _, _, rows = run
    learner = {(r["step"], r["name"]): r["value"] for r in rows if r["scope"] == "learner/policy"}
    assert [learner[(s, "optim/skipped")] for s in range(3)] == [0.0, 1.0, 1.0]
    assert learner[(0, "optim/grad_norm")] < 1e3 and learner[(1, "optim/grad_norm")] == float("inf")
    first_skip = next(i for i, r in enumerate(rows) if r["scope"] == "event" and "skipped" in r["name"])
    versions = [(i, r["value"]) for i, r in enumerate(rows) if r["scope"] == "sync/policy" and r["name"] == "version"]
    assert [v for _, v in versions] == [1.0, 2.0]  # the base adapter, then step 1's update: no more
    assert all(i < first_skip for i, _ in versions)
    skip_events = [r["name"] for r in rows if r["scope"] == "event" and "optimizer step(s) skipped" in r["name"]]
    assert len(skip_events) == 2


def test_the_divergence_warning_is_logged_once(run):
    _, _, _, rows = run
    warnings = [r["name"] for r in rows if r["scope"] == "event" and r["name"].startswith("divergence warning")]
    assert len(warnings) == 1 and "is at its maximum log(vocab) = 8.235" in warnings[0], warnings
