"""Chaos soak: a real async ``duet train`` run of 20 steps (2 vLLM rollout workers, a DeepSpeed
learner, local Ray in the CLI process) while a seeded script SIGKILLs processes of *this* run (the
CLI's descendants only) at random points: a rollout worker during a rollout, a rollout worker during
a weight sync, the learner rank during one of its calls, and a rollout worker during the held-out
evaluation after RL. The run must complete with every count exact.

How kills are timed: Ray titles an actor process by the method it executes
(``ray::RolloutWorkerHost.rollout`` / ``.sync_adapter`` / ``.evaluate``, ``ray::RankActor.run``);
the script reads the titles of the run's actor processes from ``/proc`` every few milliseconds, so
even a sync (tens of milliseconds) is caught. The random steps after which each mid-run kill is
armed come from ``SEED``; kills are at least 3 steps apart and each one waits until the driver has
met the previous one (its event line), so every death is its own restart. A sync that is not
caught executing within 3 steps is replaced by a kill while the learner trains (the next call the
driver makes to that worker is then that update's sync: the driver still meets it in a sync).

After each kill the script waits for the driver to meet it, then for the process Ray started in
the victim's place (a new rollout worker, or the new learner group's rank).

Hand-worked expectations: 20 steps x 4 tasks x group 2 = 160 episodes in the final history, 8 per
step, each counted once (produced = trained + dropped; one metrics row per step, the replayed
steps' rows replacing the first ones); the evaluation after RL still has its 4 episodes; 3 worker
restarts, each counted once however many calls met it (a rollout or evaluation death re-runs its
shard: retried shards = rollout re-runs + 1 evaluation re-run); 1 learner restart (the group
started twice), rewound to a checkpoint C (one at step 0, then every 5 steps: checkpoints 0, 5, 10,
15, 20), R steps replayed (from the driver's own event line; C + R is the step the learner died in,
or whose checkpoint it died writing); the adapter reaches v(1 + 20 + 1 + R): v1 at start-up, one
per step run, one republish of the checkpoint's adapter (a worker's death republishes the same
version). Every version 1..final is proven on both workers exactly once, in order; the only other
sync reports are one per death event (a death can be met by a sync and then a rollout call: two events), on one worker: the catch-up of a restarted worker to the
latest version (after a rollout or evaluation death), or vK on 1 of 2 workers when the sync of vK
met the death (then vK again, on both, once the worker is back).
"""

import json
import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from fault_harness import RANK, WORKER, events, logged_steps, replay_of, run_under, sync_rows, titles

pytestmark = pytest.mark.e2e

SEED = 14
STEPS, TASKS, GROUP, EVERY = 20, 4, 2, 5
RECIPE = (f"train.steps={STEPS}", f"data.tasks_per_step={TASKS}", f"rollout.group_size={GROUP}",
          "data.eval_size=4", "train.sft.steps=0", "output.transcripts_per_step=0", "name=chaos",
          "cluster.rollout_workers=2", "cluster.rollout_cpus=0.5", "train.mode=async", "train.max_staleness=1",
          f"train.checkpoint_every={EVERY}", "rollout.single_turn.policy.sampling.max_tokens=8")
MID_RUN = ("rollout", "sync", "learner")


def plan(seed: int) -> list[tuple[str, int]]:
    """(what, the step after whose logging it is armed) for the mid-run kills, in order, at least 3
    steps apart, then the evaluation kill (armed once every step is logged)."""
    rng = random.Random(seed)
    while True:
        steps = sorted(rng.sample(range(1, STEPS - 4), len(MID_RUN)))
        if min(b - a for a, b in zip(steps, steps[1:])) >= 3:
            break
    kinds = list(MID_RUN)
    rng.shuffle(kinds)
    return [*zip(kinds, steps), ("evaluate", STEPS - 1)]


def title(pid: int) -> str:
    """A process's title now ('' once it is gone): one read of /proc, fast enough to catch a sync."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Kill:
    what: str
    """"rollout" / "sync" / "learner" / "evaluate": what the victim was executing; "update" when
    the sync kill fell back to a kill while the learner trained."""
    armed_at: int
    pid: int
    steps_logged: list[int]
    """Steps in metrics.parquet at the kill."""
    before: set[int]
    """The processes of the victim's kind (rollout workers, or learner ranks) at the kill."""
    replacement: int | None = None
    """The new process Ray started for it."""


class Chaos(threading.Thread):
    """Carries out :func:`plan` against the run of ``proc`` (see the module doc)."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, log_path: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.proc, self.run_dir, self.log_path = proc, run_dir, log_path
        self.plan = plan(seed)
        self.kills: list[Kill] = []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def out(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, ready, poll: float = 0.05) -> bool:
        while self.alive() and not ready():
            time.sleep(poll)
        return self.alive()

    def run(self) -> None:
        for what, step in self.plan:
            if not self.wait_for(lambda: max(logged_steps(self.run_dir), default=-1) >= step):
                return
            deaths, restarts = self.out().count("[duet] rollout worker"), self.out().count("[duet] learner restart")
            kill = self.strike(what, step)
            if kill is None:
                return
            self.kills.append(kill)
            if what == "learner":  # met: the driver restarted the group (and replays from its checkpoint)
                self.wait_for(lambda: self.out().count("[duet] learner restart") > restarts)
            else:  # met: the driver logged the worker's death
                self.wait_for(lambda: self.out().count("[duet] rollout worker") > deaths)
            self.await_replacement(kill)

    def await_replacement(self, kill: Kill) -> None:
        """Record the process Ray started in the victim's place (one of its kind not there at the kill)."""
        kind = RANK if kill.what == "learner" else WORKER
        while self.alive() and kill.replacement is None:
            new = {p for p, t in titles(self.proc.pid).items() if t.startswith(kind)} - kill.before
            kill.replacement = min(new) if new else None
            time.sleep(0.1)

    def strike(self, what: str, step: int) -> Kill | None:
        """Kill the first process found executing ``what`` (see the module doc for the sync fallback)."""
        prefix = {"rollout": f"{WORKER}.rollout", "sync": f"{WORKER}.sync_adapter",
                  "evaluate": f"{WORKER}.evaluate", "learner": f"{RANK}.run"}[what]
        pids, refreshed = [], 0.0
        while self.alive():
            if time.monotonic() - refreshed > 0.5:  # new processes (restarts) show up here
                pids = [p for p, t in titles(self.proc.pid).items() if t.startswith((WORKER, RANK))]
                refreshed = time.monotonic()
            now = {p: title(p) for p in pids}
            victim = next((p for p, t in now.items() if t.startswith(prefix)), None)
            if victim is None and what == "sync" and max(logged_steps(self.run_dir), default=-1) >= step + 3:
                if any(t.startswith(f"{RANK}.run") for t in now.values()):
                    victim, what = next((p for p, t in now.items() if t.startswith(WORKER)), None), "update"
            if victim is not None:
                steps = logged_steps(self.run_dir)
                psutil.Process(victim).kill()
                kind = RANK if what == "learner" else WORKER
                return Kill(what, step, victim, steps, {p for p, t in now.items() if t.startswith(kind)})
            time.sleep(0.005)
        return None


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory, models_dir):
    run_dir = tmp_path_factory.mktemp("chaos") / "run"
    t0 = time.monotonic()
    rc, out, chaos = run_under(lambda proc, log_path: Chaos(proc, run_dir, log_path, SEED), run_dir, RECIPE,
                               models_dir, timeout_s=480)
    assert rc == 0, out[-4000:]
    print(f"chaos: {[(k.what, k.armed_at, k.steps_logged[-1:]) for k in chaos.kills]} in {time.monotonic() - t0:.0f}s")
    return run_dir, out, chaos


def test_every_planned_kill_happened(chaos_run):
    run_dir, out, chaos = chaos_run
    assert [k.what if k.what != "update" else "sync" for k in chaos.kills] == [w for w, _ in chaos.plan], out[-3000:]
    assert len({k.pid for k in chaos.kills}) == 4
    for k in chaos.kills[:3]:  # mid-run: after the step it was armed at, before the last
        assert 0 in k.steps_logged and k.armed_at in k.steps_logged and max(k.steps_logged) < STEPS - 1
    assert chaos.kills[-1].steps_logged == list(range(STEPS))  # the evaluation after RL
    for k in chaos.kills:  # Ray started a new process in each victim's place
        assert k.replacement is not None and k.replacement not in k.before
    reruns = events(out, "died during rollout; waiting for its restart and re-running its shard")
    resyncs = events(out, "died during the sync of policy v")
    reevals = events(out, "died during evaluate; waiting for its restart and re-running its shard")
    # the rollout kill always fails a rollout call, the sync kill always a sync; each may also meet the other
    assert 1 <= len(reruns) <= 2 and 1 <= len(resyncs) <= 2, out[-4000:]
    assert len(reevals) == 1, out[-4000:]
    c = json.loads((run_dir / "summary.json").read_text())["counters"]
    assert c["retried_shards"] == len(reruns) + len(reevals)
    assert c["worker_restarts"] == 3  # three worker processes died, each counted once


def test_the_learner_rank_was_replaced_and_the_run_replayed_exactly(chaos_run):
    run_dir, out, chaos = chaos_run
    [learner] = [k for k in chaos.kills if k.what == "learner"]
    assert len(re.findall(r"\[duet\] learner policy: 1 rank\(s\)", out)) == 2  # started, then again
    assert "[duet] learner policy died: " in out
    back, replayed = replay_of(out)
    reached = back + replayed  # the step the learner died in (or whose checkpoint it died writing)
    assert back % EVERY == 0 and reached in (len(learner.steps_logged), len(learner.steps_logged) + 1)
    c = json.loads((run_dir / "summary.json").read_text())["counters"]
    assert (c["learner_restarts"], c["steps_replayed"]) == (1, replayed)
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    faults = {r["name"]: r["value"] for r in rows if r["scope"] == "faults"}
    assert faults == {"learner_restarts": 1.0, "steps_replayed": float(replayed)}
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["LATEST", "step_000000", "step_000005", "step_000010", "step_000015", "step_000020"]


def test_the_counts_are_exact_after_every_fault(chaos_run):
    run_dir, out, _ = chaos_run
    summary = json.loads((run_dir / "summary.json").read_text())
    c = summary["counters"]
    assert summary["completed"] is True
    assert c["produced"] == c["trained"] + c["dropped_stale"] == STEPS * TASKS * GROUP == 160
    assert (c["worker_restarts"], c["learner_restarts"], c["steps_replayed"]) == (3, 1, replay_of(out)[1])
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    episodes = [(r["step"], r["value"]) for r in rows if r["scope"] == "rollout" and r["name"] == "episodes"]
    # each step once, every episode of it (a re-run shard's step too; the replayed steps' rows replace the first ones)
    assert episodes == [(s, 8.0) for s in range(STEPS)]
    assert summary["eval"]["after_rl"]["episodes"] == 4.0  # so does the evaluation


def test_every_version_is_proven_on_every_worker(chaos_run):
    run_dir, out, _ = chaos_run
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
