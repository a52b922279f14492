"""Fault tolerance end to end: rollout-worker processes and the learner rank are killed (SIGKILL)
in the middle of one real ``duet train`` run (2 vLLM rollout workers, a DeepSpeed learner, local Ray
in the CLI process); the run survives every death and its counts stay exact.

The test watches the run from outside, like an operator would, and kills processes of *this* run
only (descendants of the CLI process; other Ray instances on the machine are never touched). Ray
titles an actor process by the method it executes, which times the kills, one after another (each
death its own restart):

1. once step 0 is in metrics.parquet, a worker showing ``ray::RolloutWorkerHost.rollout``: the
   driver sees the rollout call fail, waits for Ray's restart (``max_restarts=-1``), catches the
   worker up to the current adapter through the weight-sync service and re-runs the lost shard;
2. after that replacement is up, the other worker while a learner rank runs (``ray::RankActor.run``:
   the update, then the adapter's export and probe scoring, all before the sync): the weight sync of
   that update finds it dead; the driver waits for the restart and publishes the same version
   again, proven on both workers;
3. once the driver has met both deaths (an event line names each worker) and logged a step more,
   at least step 2, the learner rank while it executes a call (``ray::RankActor.run``): the driver
   sees :class:`cluster.fleet.LearnerDied`, ends the group, starts a new one on the same placement
   bundle, loads the last checkpoint (one at step 0, then every 2 steps), publishes that adapter as
   a new version (proven on both workers) and runs the steps since the checkpoint again;
4. during the held-out evaluation after RL, a worker showing ``ray::RolloutWorkerHost.evaluate``:
   its evaluation shard is re-run on the restarted worker once it serves the final adapter.

The run is async (the default recipe's mode, pinned here): the update of step t and its weight sync
overlap the rollouts of step t+1, so a worker's death may be met by a sync and by a failed rollout
call (then its shard is re-run); each restart is counted once, however many calls met it.

Hand-worked expectations: 5 steps x 4 tasks x group 2 = 40 episodes in the final history, 8 per
step, each counted once (produced = trained + dropped, over the run's final history); 3 worker
restarts, 1 learner restart; with C the checkpoint step rewound to and R the replayed steps (from
the driver's own event line, checked against the steps logged at the kill), the adapter reaches
v(1 + 5 + 1 + R): v1 at start-up, one per step run, one republish (a worker's death republishes
the same version). Every version 1..final is proven on both workers exactly once, in order; the
only other sync reports are one per worker death, on one worker (the catch-up after a re-run
shard, or the sync that met the death). One metrics row per step (no duplicates); checkpoints at
steps 0, 2, 4 and the final 5; the evaluation after RL still has all its 8 episodes.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
STEPS, TASKS, GROUP, EVERY = 5, 4, 2, 2
RECIPE = (f"train.steps={STEPS}", f"data.tasks_per_step={TASKS}", f"rollout.group_size={GROUP}",
          "data.eval_size=8", "train.sft.steps=0", "output.transcripts_per_step=1", "name=faults",
          "cluster.rollout_workers=2", "cluster.rollout_cpus=0.5", "train.mode=async", "train.max_staleness=1",
          f"train.checkpoint_every={EVERY}",
          # longer replies make a rollout call last long enough to be caught executing
          "rollout.single_turn.policy.sampling.max_tokens=32")
WORKER = "ray::RolloutWorkerHost"
RANK = "ray::RankActor"
DIED = re.compile(r"\[duet\] rollout worker (\S+) died during ")
RESTART = re.compile(r"\[duet\] learner restart 1: back at step (\d+), running the (\d+) step\(s\)")


def logged_steps(run_dir: Path) -> list[int]:
    """Steps with a rollout row in the metrics file (it is rewritten while we read: retry)."""
    try:
        rows = pq.read_table(run_dir / "metrics.parquet", columns=["step", "scope"]).to_pylist()
    except Exception:  # noqa: BLE001 - absent or half-written
        return []
    return sorted({r["step"] for r in rows if r["scope"] == "rollout"})


def titles(root_pid: int) -> dict[int, str]:
    """pid -> process title of every descendant of the run's CLI process (its Ray and actors)."""
    out = {}
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:  # the run just ended
        return out
    for p in children:
        try:
            out[p.pid] = " ".join(p.cmdline())
        except psutil.Error:
            continue
    return out


def workers(procs: dict[int, str]) -> set[int]:
    return {pid for pid, t in procs.items() if t.startswith(WORKER)}


def ranks(procs: dict[int, str]) -> set[int]:
    return {pid for pid, t in procs.items() if t.startswith(RANK)}


def busy_in_rollout(procs: dict[int, str]) -> list[int]:
    """Workers executing a rollout call (Ray titles an actor process by the method it runs)."""
    return [pid for pid, t in procs.items() if t.startswith(f"{WORKER}.rollout")]


def busy_in_evaluate(procs: dict[int, str]) -> list[int]:
    return [pid for pid, t in procs.items() if t.startswith(f"{WORKER}.evaluate")]


def busy_rank(procs: dict[int, str]) -> list[int]:
    """The learner rank while it executes a call (an update, the adapter's export or probe, a checkpoint)."""
    return [pid for pid, t in procs.items() if t.startswith(f"{RANK}.run")]


def during_update(procs: dict[int, str]) -> list[int]:
    """Workers (idle ones first) while the learner trains: the driver's next call to every worker
    is the weight sync of this update (in async mode a worker may still be rolling out step t+1)."""
    if not busy_rank(procs):
        return []
    return sorted(workers(procs), key=lambda pid: procs[pid] != WORKER)


@dataclass
class Kill:
    when: str
    """"rollout" / "evaluate" (a worker killed while running one), "update" (a worker, while the
    learner trained) or "learner" (the learner rank, while it ran a call)."""
    pid: int
    steps_logged: list[int]
    """Steps in metrics.parquet at the kill."""
    before: set[int]
    """The processes of the victim's kind (rollout workers, or learner ranks) at the kill."""
    replacement: int | None = None
    """The new process Ray started for it."""


class Killer(threading.Thread):
    """Carries out the module doc's four kills in order: each one waits for the replacement of the
    one before; the learner's waits until the driver has met both worker deaths and logged a step
    more (at least step 2)."""

    PLAN = (("rollout", busy_in_rollout, workers), ("update", during_update, workers),
            ("learner", busy_rank, ranks), ("evaluate", busy_in_evaluate, workers))

    def __init__(self, proc: subprocess.Popen, run_dir: Path, log_path: Path) -> None:
        super().__init__(daemon=True)
        self.proc, self.run_dir, self.log_path = proc, run_dir, log_path
        self.kills: list[Kill] = []
        self.spared: set[int | None] = set()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, ready, poll: float = 0.05) -> bool:
        while self.alive() and not ready():
            time.sleep(poll)
        return self.alive()

    def last_step(self) -> int:
        return max(logged_steps(self.run_dir), default=-1)

    def run(self) -> None:
        if not self.wait_for(lambda: self.last_step() >= 0):
            return
        for when, choose, kind in self.PLAN:
            if when == "learner" and not self.arm_learner_kill():
                return
            if when == "evaluate":  # by the final evaluation the driver has met both replacements
                self.spared.clear()
            kill = self.kill_first(when, choose, kind)
            if kill is None:
                return
            self.kills.append(kill)
            while self.alive() and kill.replacement is None:
                new = kind(titles(self.proc.pid)) - kill.before
                kill.replacement = min(new) if new else None
                time.sleep(0.1)
            # never kill a replacement: the driver may not have met it yet, and two deaths it sees
            # as one process change would be one restart
            self.spared.add(kill.replacement)

    def arm_learner_kill(self) -> bool:
        """Wait until an event line names each worker's death, then until a step more is logged (at least 2)."""
        if not self.wait_for(lambda: len(set(DIED.findall(self.log_path.read_text(errors="replace")))) == 2):
            return False
        armed = max(2, self.last_step() + 1)
        return self.wait_for(lambda: self.last_step() >= armed)

    def kill_first(self, when: str, choose, kind) -> Kill | None:
        while self.alive():
            procs = titles(self.proc.pid)
            victims = [pid for pid in choose(procs) if pid not in self.spared]
            if victims:
                steps = logged_steps(self.run_dir)
                psutil.Process(victims[0]).kill()
                return Kill(when, victims[0], steps, kind(procs))
            time.sleep(0.02)
        return None


def run_under(make_killer, run_dir: Path, recipe: tuple[str, ...], models_dir: Path, timeout_s: float = 600):
    """``duet train`` of ``recipe`` into ``run_dir`` as a process group of its own, with the thread
    ``make_killer(proc, log_path)`` started beside it (it kills processes of the run); returns
    (exit status, the run's stdout and stderr, that thread). A run still going at ``timeout_s`` is
    killed, its group only (the CLI, its Ray and actors)."""
    sets = [x for kv in (*recipe, f"output.dir={run_dir}") for x in ("--set", kv)]
    log_path = run_dir.parent / "stdout.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", *sets], cwd=ROOT,
                                env={**os.environ, "DUET_MODELS": str(models_dir)}, stdout=log,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        killer = make_killer(proc, log_path)
        killer.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        killer.join(timeout=5)
    return rc, log_path.read_text(), killer


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, models_dir):
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    rc, out, killer = run_under(lambda proc, log_path: Killer(proc, run_dir, log_path), run_dir, RECIPE, models_dir)
    assert rc == 0, out[-4000:]
    return run_dir, out, killer


def events(out: str, what: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("[duet] rollout worker") and what in ln]


def replay_of(out: str) -> tuple[int, int]:
    """(checkpoint step rewound to, steps replayed) of the run's one learner restart."""
    [(back, replayed)] = [tuple(map(int, m)) for m in RESTART.findall(out)]
    return back, replayed


def test_two_workers_were_killed_mid_run_and_restarted(faulty_run):
    run_dir, out, killer = faulty_run
    assert [k.when for k in killer.kills] == ["rollout", "update", "learner", "evaluate"], out[-4000:]
    for k in killer.kills[:2]:
        assert 0 in k.steps_logged and max(k.steps_logged) < STEPS - 1  # mid-run
    assert killer.kills[3].steps_logged == list(range(STEPS))  # after the last step
    for k in killer.kills:
        assert k.replacement is not None and k.replacement not in k.before
    reruns = events(out, "died during rollout; waiting for its restart and re-running its shard")
    resyncs = events(out, "died during the sync of policy v")
    reevals = events(out, "died during evaluate; waiting for its restart and re-running its shard")
    # the first kill always fails a rollout call, the second always a sync; each may also meet the other
    assert 1 <= len(reruns) <= 2 and 1 <= len(resyncs) <= 2, out[-4000:]
    assert len(reevals) == 1, out[-4000:]
    c = json.loads((run_dir / "summary.json").read_text())["counters"]
    assert c["retried_shards"] == len(reruns) + 1
    assert c["worker_restarts"] == 3  # three worker processes died, each counted once


def test_the_learner_rank_was_killed_mid_run_and_replaced(faulty_run):
    _, out, killer = faulty_run
    learner = killer.kills[2]
    assert learner.when == "learner" and learner.replacement not in (None, learner.pid), out[-3000:]
    assert 2 in learner.steps_logged and max(learner.steps_logged) < STEPS - 1  # mid-run
    assert len(re.findall(r"\[duet\] learner policy: 1 rank\(s\)", out)) == 2  # started, then again
    assert "[duet] learner policy died: " in out


def test_no_episode_lost_or_counted_twice(faulty_run):
    run_dir, _, _ = faulty_run
    summary = json.loads((run_dir / "summary.json").read_text())
    c = summary["counters"]
    assert summary["completed"] is True
    assert c["produced"] == c["trained"] + c["dropped_stale"] == STEPS * TASKS * GROUP == 40
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    episodes = [(r["step"], r["value"]) for r in metrics if r["scope"] == "rollout" and r["name"] == "episodes"]
    # a step whose shard was re-run still has all its episodes; the replayed steps' rows replace the first ones
    assert episodes == [(s, 8.0) for s in range(STEPS)]
    assert summary["eval"]["after_rl"]["episodes"] == 8.0  # so does the evaluation


def test_the_run_rewound_to_a_checkpoint_and_replayed_exactly(faulty_run):
    run_dir, out, killer = faulty_run
    back, replayed = replay_of(out)
    reached = back + replayed  # the step the learner died in (or whose checkpoint it died writing)
    logged = killer.kills[2].steps_logged
    assert back % EVERY == 0 and reached in (len(logged), len(logged) + 1)
    c = json.loads((run_dir / "summary.json").read_text())["counters"]
    assert (c["learner_restarts"], c["steps_replayed"]) == (1, replayed)
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    faults = {r["name"]: r["value"] for r in rows if r["scope"] == "faults"}
    assert faults == {"learner_restarts": 1.0, "steps_replayed": float(replayed)}
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["LATEST", "step_000000", "step_000002", "step_000004", "step_000005"]


def sync_rows(rows):
    """(version, proven workers) of each sync report, in log order."""
    pairs = [r for r in rows if r["scope"] == "sync/policy" and r["name"] in ("version", "proven_workers")]
    return [(a["value"], b["value"]) for a, b in zip(pairs[::2], pairs[1::2])]


def test_restarted_workers_caught_up_and_serve_the_current_adapter(faulty_run):
    run_dir, out, _ = faulty_run
    final = 1 + STEPS + 1 + replay_of(out)[1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["versions"] == {"policy": final}
    assert summary["served"] == {"rollout-0": {"policy": final}, "rollout-1": {"policy": final}}
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    deaths = 0
    for i, r in enumerate(rows):
        if r["scope"] != "event" or " died during " not in r["name"] or "rollout worker" not in r["name"]:
            continue
        deaths += 1
        before, after = sync_rows(rows[:i]), sync_rows(rows[i:])
        if "during rollout" in r["name"] or "during evaluate" in r["name"]:
            # catch-up of that one worker to the latest version published so far (not v1)
            assert after[0] == (before[-1][0], 1.0) and before[-1][0] >= 2
        else:
            # the publish of vK reached 1 of 2 workers; vK again once the worker is back: both
            k = float(r["name"].split(" of policy v")[1].split(";")[0])
            assert before[-1] == (k, 1.0) and after[0] == (k, 2.0)
    pairs = sync_rows(rows)
    versions = [v for v, _ in pairs]
    assert versions == sorted(versions) and versions[-1] == final
    # every version v1..final (the republished checkpoint's included) proven on both workers once, in
    # order; besides, one report on one worker per worker death (its catch-up, or the sync that met it)
    assert [p for p in pairs if p[1] == 2.0] == [(float(v), 2.0) for v in range(1, final + 1)]
    assert sorted(n for _, n in pairs) == [1.0] * deaths + [2.0] * final
