"""Fault tolerance end to end: a rollout worker's process is killed (SIGKILL) in the middle of a real
``duet train`` run (2 vLLM rollout workers, DeepSpeed learner, local Ray in the CLI process).

The test watches the run from outside, like an operator would: once step 0 is in metrics.parquet
it waits until a rollout-worker process of *this* run (a descendant of the CLI process; other Ray
instances on the machine are never touched) shows Ray's process title
``ray::RolloutWorkerHost.rollout`` (a rollout call executing), and kills it. Ray restarts the actor
(``max_restarts=-1``); the driver sees the failed call, waits for the restart, catches the worker up
to the current adapter through the weight-sync service and re-runs the lost shard.

Hand-worked expectations: 4 steps x 4 tasks x group 2 = 32 episodes, 8 per step, each counted once;
adapter v1 at start-up plus one per step = v5 at the end, served (and probe-proven) by both workers.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
STEPS, TASKS, GROUP = 4, 4, 2
RECIPE = (f"train.steps={STEPS}", f"data.tasks_per_step={TASKS}", f"rollout.group_size={GROUP}",
          "data.eval_size=4", "train.sft.steps=0", "output.transcripts_per_step=1", "name=faults",
          "cluster.rollout_workers=2", "cluster.rollout_cpus=0.5",
          # longer replies make a rollout call last long enough to be caught executing
          "rollout.single_turn.policy.sampling.max_tokens=32")


def logged_steps(run_dir: Path) -> list[int]:
    """Steps with a rollout row in the metrics file (it is rewritten while we read: retry)."""
    try:
        rows = pq.read_table(run_dir / "metrics.parquet", columns=["step", "scope"]).to_pylist()
    except Exception:  # noqa: BLE001 - absent or half-written
        return []
    return sorted({r["step"] for r in rows if r["scope"] == "rollout"})


def worker_processes(root_pid: int, title: str = "ray::RolloutWorkerHost") -> dict[int, str]:
    """pid -> process title of this run's rollout-worker actor processes."""
    out = {}
    for p in psutil.Process(root_pid).children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if cmd.startswith(title):
            out[p.pid] = cmd
    return out


class Killer(threading.Thread):
    """Kills one rollout-worker process of the run while it executes a rollout after step 0, then
    waits for Ray to start its replacement process."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.proc, self.run_dir = proc, run_dir
        self.killed_pid: int | None = None
        self.replacement_pid: int | None = None
        self.steps_before_kill: list[int] = []

    def run(self) -> None:
        while self.proc.poll() is None and 0 not in logged_steps(self.run_dir):
            time.sleep(0.05)
        while self.proc.poll() is None and self.killed_pid is None:
            before = worker_processes(self.proc.pid)
            busy = [pid for pid, title in before.items() if title.startswith("ray::RolloutWorkerHost.rollout")]
            if busy:
                self.steps_before_kill = logged_steps(self.run_dir)
                psutil.Process(busy[0]).kill()
                self.killed_pid = busy[0]
            time.sleep(0.01)
        while self.proc.poll() is None and self.replacement_pid is None:
            new = set(worker_processes(self.proc.pid)) - set(before)
            self.replacement_pid = min(new) if new else None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, models_dir):
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    sets = [x for kv in (*RECIPE, f"output.dir={run_dir}") for x in ("--set", kv)]
    log_path = run_dir.parent / "stdout.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", *sets], cwd=ROOT,
                                env={**os.environ, "DUET_MODELS": str(models_dir)}, stdout=log,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        killer = Killer(proc, run_dir)
        killer.start()
        try:
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:  # only our own process group: the CLI, its Ray and actors
                os.killpg(proc.pid, 9)
        killer.join(timeout=5)
    out = log_path.read_text()
    assert rc == 0, out[-4000:]
    return run_dir, out, killer


def test_a_worker_was_killed_mid_run_and_restarted(faulty_run):
    _, out, killer = faulty_run
    assert killer.killed_pid is not None, "no rollout call was caught executing"
    assert 0 in killer.steps_before_kill and max(killer.steps_before_kill) < STEPS - 1  # mid-run
    assert killer.replacement_pid is not None and killer.replacement_pid != killer.killed_pid
    died = [ln for ln in out.splitlines() if "died; waiting for its restart" in ln]
    assert len(died) == 1, out[-4000:]


def test_no_episode_lost_or_counted_twice(faulty_run):
    run_dir, _, _ = faulty_run
    summary = json.loads((run_dir / "summary.json").read_text())
    c = summary["counters"]
    assert summary["completed"] is True
    assert c["produced"] == c["trained"] + c["dropped_stale"] == STEPS * TASKS * GROUP == 32
    assert c["worker_restarts"] == 1 and c["retried_shards"] == 1
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    per_step = [r["value"] for r in metrics if r["scope"] == "rollout" and r["name"] == "episodes"]
    assert per_step == [8.0] * STEPS  # the step whose shard was re-run still has all its episodes


def test_restarted_worker_caught_up_and_serves_the_current_adapter(faulty_run):
    run_dir, out, _ = faulty_run
    summary = json.loads((run_dir / "summary.json").read_text())
    final = 1 + STEPS
    assert summary["versions"] == {"policy": final}
    assert summary["served"] == {"rollout-0": {"policy": final}, "rollout-1": {"policy": final}}
    # The catch-up sync sits between the death event and the step it interrupted; it brought the
    # restarted worker to the version current at the kill (v1 + the steps finished before it), not v1.
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    i_died = next(i for i, r in enumerate(rows) if "died; waiting for its restart" in r["name"])
    done = [r["step"] for r in rows[:i_died] if r["scope"] == "rollout" and r["name"] == "episodes"]
    catch_up = next(r for r in rows[i_died:] if r["scope"] == "sync/policy" and r["name"] == "version")
    proven = next(r for r in rows[i_died:] if r["scope"] == "sync/policy" and r["name"] == "proven_workers")
    assert catch_up["value"] == 1 + len(set(done)) and proven["value"] == 1.0  # one worker caught up
    versions = [r["value"] for r in rows if r["scope"] == "sync/policy" and r["name"] == "version"]
    assert versions == sorted(versions) and versions[-1] == final
    assert len(versions) == final + 1  # v1..v5 to both workers, plus the one catch-up
