"""A learner rank's process SIGKILLed in the middle of a real ``duet train`` run (1 vLLM rollout
worker, 1 DeepSpeed learner rank, local Ray in the CLI process): the run survives it.

The test watches the run from outside and kills a process of *this* run only (a descendant of the
CLI process). Once step 2 is in metrics.parquet it kills the learner rank while it executes a call
(Ray titles it ``ray::RankActor.run``: an update, the adapter's export or probe, a checkpoint). The
driver sees :class:`cluster.fleet.LearnerDied`, ends the group, starts a new one on the same
placement bundle, loads the last checkpoint (one at step 0, then every 2 steps), publishes that
adapter as a new version (proven by the worker), and runs the steps since the checkpoint again.

Hand-worked expectations: 5 steps x 4 tasks x group 2 = 40 episodes produced, trained or dropped
(each counted once, over the run's final history); 1 learner restart; with C the checkpoint step
rewound to and R the replayed steps (from the driver's own event line, checked against the steps
logged at the kill), the adapter reaches v(1 + 5 + 1 + R): v1 at start-up, one per step run, one
republish; every version 1..final proven, in order; one metrics row per step (no duplicates).
"""

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from test_e2e_faults import ROOT, logged_steps, run_under, sync_rows, titles

pytestmark = pytest.mark.e2e

STEPS, TASKS, GROUP, EVERY = 5, 4, 2, 2
RECIPE = (f"train.steps={STEPS}", f"data.tasks_per_step={TASKS}", f"rollout.group_size={GROUP}",
          "data.eval_size=4", "train.sft.steps=0", "output.transcripts_per_step=1", "name=learner_death",
          "cluster.rollout_workers=1", "train.mode=async", "train.max_staleness=1",
          f"train.checkpoint_every={EVERY}")
RANK = "ray::RankActor"
RESTART = re.compile(r"\[duet\] learner restart 1: back at step (\d+), running the (\d+) step\(s\)")


def ranks(procs: dict[int, str]) -> set[int]:
    return {pid for pid, t in procs.items() if t.startswith(RANK)}


class RankKiller(threading.Thread):
    """Once ``after`` is logged, SIGKILLs the learner rank while it runs a call; records the steps
    logged at the kill and the rank process Ray's new group started."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, after: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.run_dir, self.after = proc, run_dir, after
        self.killed: int | None = None
        self.steps_logged: list[int] = []
        self.replacement: int | None = None

    def run(self) -> None:
        while self.proc.poll() is None and self.after not in logged_steps(self.run_dir):
            time.sleep(0.05)
        while self.proc.poll() is None and self.killed is None:
            procs = titles(self.proc.pid)
            busy = [pid for pid, t in procs.items() if t.startswith(f"{RANK}.run")]
            if busy:
                self.steps_logged = logged_steps(self.run_dir)
                psutil.Process(busy[0]).kill()
                self.killed = busy[0]
            time.sleep(0.02)
        while self.proc.poll() is None and self.replacement is None:
            new = ranks(titles(self.proc.pid)) - {self.killed}
            self.replacement = min(new) if new else None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def learner_death(tmp_path_factory, models_dir):
    run_dir = tmp_path_factory.mktemp("learner_death") / "run"
    rc, out, killer = run_under(lambda proc, _: RankKiller(proc, run_dir, after=2), run_dir, RECIPE, models_dir)
    assert rc == 0, out[-4000:]
    return run_dir, out, killer


def test_the_learner_rank_was_killed_mid_run_and_replaced(learner_death):
    run_dir, out, killer = learner_death
    assert killer.killed is not None and killer.replacement not in (None, killer.killed), out[-3000:]
    assert 2 in killer.steps_logged and max(killer.steps_logged) < STEPS - 1  # mid-run
    assert len(re.findall(r"\[duet\] learner policy: 1 rank\(s\)", out)) == 2  # started, then again
    assert "[duet] learner policy died: " in out


def test_the_run_rewound_to_a_checkpoint_and_replayed_exactly(learner_death):
    run_dir, out, killer = learner_death
    [(back, replayed)] = [tuple(map(int, m)) for m in RESTART.findall(out)]
    reached = back + replayed  # the step the learner died in (or whose checkpoint it died writing)
    assert back % EVERY == 0 and reached in (len(killer.steps_logged), len(killer.steps_logged) + 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    c = summary["counters"]
    assert summary["completed"] is True
    assert (c["learner_restarts"], c["steps_replayed"]) == (1, replayed)
    assert c["produced"] == c["trained"] + c["dropped_stale"] == STEPS * TASKS * GROUP
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    episodes = [(r["step"], r["value"]) for r in rows if r["scope"] == "rollout" and r["name"] == "episodes"]
    assert episodes == [(s, 8.0) for s in range(STEPS)]  # the replayed steps' rows replace the first ones
    faults = {r["name"]: r["value"] for r in rows if r["scope"] == "faults"}
    assert faults == {"learner_restarts": 1.0, "steps_replayed": float(replayed)}


def test_every_version_proven_in_order_including_the_republished_checkpoint(learner_death):
    run_dir, out, _ = learner_death
    [(_, replayed)] = [tuple(map(int, m)) for m in RESTART.findall(out)]
    final = 1 + STEPS + 1 + replayed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["versions"] == {"policy": final} and summary["served"] == {"rollout-0": {"policy": final}}
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert sync_rows(rows) == [(float(v), 1.0) for v in range(1, final + 1)]
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["LATEST", "step_000000", "step_000002", "step_000004", "step_000005"]
