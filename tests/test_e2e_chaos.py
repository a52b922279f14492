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

Hand-worked expectations: 20 steps x 4 tasks x group 2 = 160 episodes in the final history, each
counted once (produced = trained + dropped); 3 worker restarts; 1 learner restart, rewound to a
checkpoint C (one at step 0, then every 5 steps), R steps replayed (from the driver's own event);
the adapter reaches v(1 + 20 + 1 + R) and every version 1..final is proven on both workers.
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

from test_e2e_faults import ROOT, WORKER, logged_steps, run_under, sync_rows, titles

pytestmark = pytest.mark.e2e

SEED = 14
STEPS, TASKS, GROUP, EVERY = 20, 4, 2, 5
RECIPE = (f"train.steps={STEPS}", f"data.tasks_per_step={TASKS}", f"rollout.group_size={GROUP}",
          "data.eval_size=4", "train.sft.steps=0", "output.transcripts_per_step=0", "name=chaos",
          "cluster.rollout_workers=2", "cluster.rollout_cpus=0.5", "train.mode=async", "train.max_staleness=1",
          f"train.checkpoint_every={EVERY}", "rollout.single_turn.policy.sampling.max_tokens=8")
RANK = "ray::RankActor"
RESTART = re.compile(r"\[duet\] learner restart 1: back at step (\d+), running the (\d+) step\(s\)")
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
                return Kill(what, step, victim, steps)
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


def replay_of(out: str) -> tuple[int, int]:
    """(checkpoint step rewound to, steps replayed) of the run's one learner restart."""
    [(back, replayed)] = [tuple(map(int, m)) for m in RESTART.findall(out)]
    return back, replayed


def test_every_planned_kill_happened(chaos_run):
    _, out, chaos = chaos_run
    assert [k.what if k.what != "update" else "sync" for k in chaos.kills] == [w for w, _ in chaos.plan], out[-3000:]
    assert len({k.pid for k in chaos.kills}) == 4
    assert chaos.kills[-1].steps_logged == list(range(STEPS))  # the evaluation after RL
    assert sum(1 for ln in out.splitlines() if "died during evaluate" in ln) == 1
    assert any("died during the sync of policy v" in ln for ln in out.splitlines())
    assert any("died during rollout" in ln for ln in out.splitlines())


def test_the_counts_are_exact_after_every_fault(chaos_run):
    run_dir, out, _ = chaos_run
    back, replayed = replay_of(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    c = summary["counters"]
    assert summary["completed"] is True and back % EVERY == 0
    assert c["produced"] == c["trained"] + c["dropped_stale"] == STEPS * TASKS * GROUP
    assert (c["worker_restarts"], c["learner_restarts"], c["steps_replayed"]) == (3, 1, replayed)
    assert c["retried_shards"] >= 2  # the rollout kill's shard and the evaluation's
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    episodes = [(r["step"], r["value"]) for r in rows if r["scope"] == "rollout" and r["name"] == "episodes"]
    assert episodes == [(s, 8.0) for s in range(STEPS)]  # each step once, every episode of it
    assert summary["eval"]["after_rl"]["episodes"] == 4.0


def test_every_version_is_proven_on_every_worker(chaos_run):
    run_dir, out, _ = chaos_run
    _, replayed = replay_of(out)
    final = 1 + STEPS + 1 + replayed
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["versions"] == {"policy": final}
    assert summary["served"] == {"rollout-0": {"policy": final}, "rollout-1": {"policy": final}}
    pairs = sync_rows(pq.read_table(run_dir / "metrics.parquet").to_pylist())
    versions = [v for v, _ in pairs]
    assert versions == sorted(versions)
    assert {v for v, n in pairs if n == 2.0} == set(map(float, range(1, final + 1)))
