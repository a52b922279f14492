"""The driver's fault logic on in-process fakes (no Ray): workers scripted to die during a rollout,
an evaluation or a sync; staleness drops; exact, exactly-once episode accounting; warm start,
checkpoint and restore as driver steps. Every expected count is worked out by hand in the test.

The fakes model what matters to the driver: a worker's process id changes when it dies (the fleet
restarts it); a call started before the death fails with :class:`WorkerDied` when its result is
read; a restarted worker serves no adapter until the sync client catches it up, and refuses a shard
whose required versions it does not serve (as :meth:`rollout.worker.RolloutWorker.check_versions`).
Each fake episode is generated with the version the worker serves when the call starts.
"""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cluster.config import load_recipe
from cluster.driver import Driver
from cluster.fleet import CallKind, WorkerDied
from cluster.schedule import Counters
from cluster.weight_sync import SyncAck, SyncFailure, SyncReport
from rollout.episode_arrow import EpisodeBatch
from rollout.types import Episode, Turn

pytestmark = pytest.mark.unit

IDS = ("rollout-0", "rollout-1")
RERUN = "waiting for its restart and re-running its shard"


class FakeFleet:
    """Two workers; ``die[(kind, worker, n)]``: the worker dies during its n-th call (0-based) of ``kind``."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.pid = {w: 100 + i for i, w in enumerate(IDS)}
        self.up = {w: True for w in IDS}
        self.served: dict[str, dict[str, int]] = {w: {} for w in IDS}
        self.calls = {(k, w): 0 for k in CallKind for w in IDS}
        self.die: set[tuple[CallKind, str, int]] = set()

    def worker_ids(self):
        return list(IDS)

    def kill(self, wid: str) -> None:
        self.up[wid], self.served[wid] = False, {}
        self.pid[wid] += 1000  # the pid Ray's restart will give it

    def start(self, kind, worker_id, items, versions, step, greedy_roles=()):
        n = self.calls[(kind, worker_id)]
        self.calls[(kind, worker_id)] += 1
        if not self.up[worker_id]:
            return FakePending(worker_id, None, self, -1)
        served = self.served[worker_id]
        if any(served.get(a, 0) < v for a, v in versions.items()):
            raise AssertionError(f"{worker_id} serves {served}, shard requires {versions}")
        group = self.group if kind is CallKind.ROLLOUT else 1
        v = served.get("policy", 0)
        batch = EpisodeBatch(tuple(_episode(f"{kind.value}/{step}/{x}/{g}", v) for x in items for g in range(group)))
        pending = FakePending(worker_id, batch, self, self.pid[worker_id])
        if (kind, worker_id, n) in self.die:
            self.kill(worker_id)
        return pending

    def wait_restart(self, worker_id):
        self.up[worker_id] = True
        return self.pid[worker_id]


class FakePending:
    def __init__(self, wid, batch, fleet, pid):
        self.wid, self.batch, self.fleet, self.pid = wid, batch, fleet, pid

    def result(self):
        if self.fleet.pid[self.wid] != self.pid:
            raise WorkerDied(self.wid)
        return self.batch, {"episodes": len(self.batch)}


def _episode(eid: str, version: int) -> Episode:
    turn = Turn(role="policy", prompt_ids=(1,), output_ids=(2,), output_logprobs=(0.0,), adapter_version=version)
    return Episode(eid, eid.rsplit("/", 1)[0], eid.split("/")[2], (turn,), reward=1.0, success=True)


class FakeSync:
    """Syncs every live worker; ``die[(version, worker)]``: the worker dies during that version's sync."""

    def __init__(self, fleet: FakeFleet) -> None:
        self.fleet, self.latest, self.die = fleet, {}, set()
        self.published: list[tuple[str, int]] = []

    def publish(self, role, version):
        self.published.append((role, version))
        for wid in IDS:
            if (version, wid) in self.die:
                self.die.discard((version, wid))
                self.fleet.kill(wid)
        self.latest[role] = version
        return self._sync(role, version, IDS)

    def _sync(self, role, version, ids):
        acks, failures = [], []
        for wid in ids:
            if not self.fleet.up[wid]:
                failures.append(SyncFailure(wid, "actor died", "unreachable"))
                continue
            self.fleet.served[wid][role] = version
            acks.append(SyncAck(wid, "node", role, version, (-1.0,), 0.0))
        return SyncReport(role, version, tuple(acks), 0.0, not failures, tuple(failures))

    def catch_up(self, worker_id):
        return [self._sync(r, v, (worker_id,)) for r, v in sorted(self.latest.items())]

    def served_versions(self):
        return {w: dict(v) for w, v in self.fleet.served.items()}


class FakeLearner:
    def __init__(self) -> None:
        self.batches: list[EpisodeBatch] = []
        self.sft_batches: list[list] = []
        self.saved: list[str] = []
        self.loaded: list[str] = []

    def train_step(self, batch):
        self.batches.append(batch)
        return {"policy/loss": 0.5}

    def sft_step(self, examples):
        self.sft_batches.append(list(examples))
        return SimpleNamespace(loss=0.25)  # the part of learner.metrics.SFTMetrics the driver reads

    def save_checkpoint(self, directory):
        directory.mkdir(parents=True)
        self.saved.append(directory.name)

    def load_checkpoint(self, directory):
        self.loaded.append(str(directory))


class FakeLog:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.syncs: list[tuple[int, int]] = []
        self.loops: list[tuple] = []
        self.evals: dict = {}

    def event(self, text):
        self.events.append(text)

    def sync(self, report):
        self.syncs.append((report.version, len(report.proven)))

    def loop(self, step, produced, dropped, staleness, in_flight):
        self.loops.append((step, produced, dropped, dict(staleness), in_flight))

    def step(self, *args):
        pass

    def evaluation(self, label, result, batch):
        self.evals[label] = result

    def sft_begin(self, role, total):
        pass

    def sft_step(self, role, step, total, loss):
        pass


def make(mode="sync", staleness=1, steps=3, **extra):
    """A driver over two fake workers with v1 published (4 tasks per step, group 2: 8 episodes a step)."""
    sets = (f"train.mode={mode}", f"train.max_staleness={staleness}", f"train.steps={steps}",
            "data.tasks_per_step=4", "rollout.group_size=2", *(f"{k}={v}" for k, v in extra.items()))
    recipe = load_recipe(None, sets)
    fleet = FakeFleet(group=2)
    sync, learner, log = FakeSync(fleet), FakeLearner(), FakeLog()
    driver = Driver(recipe, fleet, {"policy": learner}, sync, log, [f"t{i}" for i in range(8)],
                    recipe.resolve().adapters(), pids=dict(fleet.pid))
    assert driver.adapters == {"policy": "policy"}
    driver.publish("policy")
    return driver, fleet, sync, learner, log


def trained_ids(learner: FakeLearner) -> list[str]:
    return [e.episode_id for b in learner.batches for e in b.episodes]


ACCOUNTING = ("produced", "trained", "dropped_stale", "retried_shards", "worker_restarts")
"""The counters these tests check (the others have their own tests)."""


def counts(driver: Driver) -> dict[str, int]:
    return {k: v for k, v in vars(driver.counters).items() if k in ACCOUNTING}


def test_sync_mode_without_faults_trains_every_episode_once():
    driver, _, sync, learner, log = make()
    driver.train(0, 3, lambda step: None)
    assert counts(driver) == {"produced": 24, "trained": 24, "dropped_stale": 0,
                              "retried_shards": 0, "worker_restarts": 0}
    ids = trained_ids(learner)
    assert len(ids) == len(set(ids)) == 24
    assert driver.versions == {"policy": 4} and sync.published == [("policy", v) for v in (1, 2, 3, 4)]
    assert [lp[:3] for lp in log.loops] == [(0, 8, 0), (1, 8, 0), (2, 8, 0)]


def test_death_during_rollout_reruns_the_shard_on_the_caught_up_worker():
    driver, fleet, _, learner, log = make()
    fleet.die.add((CallKind.ROLLOUT, "rollout-1", 1))  # step 1's shard of rollout-1 (tasks t6, t7)
    driver.train(0, 3, lambda step: None)
    assert counts(driver) == {"produced": 24, "trained": 24, "dropped_stale": 0,
                              "retried_shards": 1, "worker_restarts": 1}
    ids = trained_ids(learner)
    assert len(ids) == len(set(ids)) == 24 and [len(b) for b in learner.batches] == [8, 8, 8]
    assert log.events == [f"rollout worker rollout-1 died during rollout; {RERUN}"]
    # syncs: v1 (2 workers), v2 (2), then rollout-1's catch-up to v2 (1), v3 (2), v4 (2)
    assert log.syncs == [(1, 2), (2, 2), (2, 1), (3, 2), (4, 2)]
    assert driver.pids["rollout-1"] == 1101


def test_death_during_evaluation_reruns_its_shard():
    driver, fleet, _, _, log = make()
    fleet.die.add((CallKind.EVALUATE, "rollout-0", 0))
    result = driver.evaluate([f"e{i}" for i in range(5)], "after_rl", 3)
    assert result == {"episodes": 5.0, "reward": 1.0, "success": 1.0}  # 3 + 2 items, one sample each
    assert counts(driver)["retried_shards"] == 1 and counts(driver)["worker_restarts"] == 1
    assert counts(driver)["produced"] == 0  # evaluations are not training episodes
    assert log.events == [f"rollout worker rollout-0 died during evaluate; {RERUN}"]


def test_death_during_sync_republishes_the_same_version():
    driver, _, sync, _, log = make()
    sync.die.add((3, "rollout-0"))
    driver.train(0, 3, lambda step: None)
    assert sync.published == [("policy", 1), ("policy", 2), ("policy", 3), ("policy", 3), ("policy", 4)]
    assert log.syncs == [(1, 2), (2, 2), (3, 1), (3, 2), (4, 2)]
    assert log.events == ["rollout worker rollout-0 died during the sync of policy v3; waiting for its restart "
                          "and syncing it again"]
    assert counts(driver) == {"produced": 24, "trained": 24, "dropped_stale": 0,
                              "retried_shards": 0, "worker_restarts": 1}
    assert driver.versions == {"policy": 4}


def test_one_death_failing_a_sync_and_a_rollout_counts_one_restart():
    # async: step 1's rollouts (at v1) are in flight while v2 syncs; rollout-1 dies during that sync,
    # so the sync and its in-flight step-1 shard both fail; the shard is re-run at v2
    driver, _, sync, learner, log = make(mode="async", staleness=1)
    sync.die.add((2, "rollout-1"))
    driver.train(0, 3, lambda step: None)
    assert counts(driver) == {"produced": 24, "trained": 24, "dropped_stale": 0,
                              "retried_shards": 1, "worker_restarts": 1}
    assert len(log.events) == 2 and "died during the sync of policy v2" in log.events[0]
    assert "died during rollout" in log.events[1]
    step1 = [e.policy_versions["policy"] for e in learner.batches[1].episodes]
    assert step1 == [1, 1, 1, 1, 2, 2, 2, 2]  # rollout-0's shard from v1, rollout-1's re-run from v2
    assert [lp[3] for lp in log.loops] == [{"policy": 0.0}, {"policy": 0.5}, {"policy": 1.0}]


def test_the_same_death_with_max_staleness_0_drops_the_lagging_episodes():
    driver, _, sync, learner, _ = make(mode="async", staleness=0)
    sync.die.add((2, "rollout-1"))
    driver.train(0, 3, lambda step: None)
    # step 0: 8 at v1, lag 0; step 1: 4 at v1 (lag 1, dropped) + 4 re-run at v2; step 2: 8 at v2, now v3 (dropped)
    assert counts(driver) == {"produced": 24, "trained": 12, "dropped_stale": 12,
                              "retried_shards": 1, "worker_restarts": 1}
    assert [len(b) for b in learner.batches] == [8, 4, 0]


def test_async_staleness_drops_and_in_flight():
    driver, _, _, learner, log = make(mode="async", staleness=0)
    driver.train(0, 3, lambda step: None)
    # steps 1 and 2 were launched one version before their update: lag 1 > 0, all 8 dropped
    assert counts(driver) == {"produced": 24, "trained": 8, "dropped_stale": 16,
                              "retried_shards": 0, "worker_restarts": 0}
    assert [lp[:3] + lp[4:] for lp in log.loops] == [(0, 8, 0, 8), (1, 8, 8, 8), (2, 8, 8, 0)]
    assert [len(b) for b in learner.batches] == [8, 0, 0]


def test_checkpoint_then_restore_into_a_new_driver(tmp_path):
    driver, _, _, learner, log = make(steps=2, **{"train.checkpoint_every": 2})
    driver.train(0, 2, lambda step: driver.checkpoint(tmp_path, step))
    ckpt = tmp_path / "checkpoints" / "step_000002"
    state = {"step": 2, "versions": {"policy": 3}, "counters": vars(Counters(produced=16, trained=16)),
             "warm_started": False, "plugin_errors": {}}  # (this test never ran the warm start)
    assert (ckpt / "driver.json").read_text() == json.dumps(state)
    assert (tmp_path / "checkpoints" / "LATEST").read_text() == "step_000002"
    assert learner.saved == ["policy"] and log.events == [f"checkpoint {ckpt}"]
    fleet = FakeFleet(group=2)
    sync, fresh, log2 = FakeSync(fleet), FakeLearner(), FakeLog()
    resumed = Driver(driver.recipe, fleet, {"policy": fresh}, sync, log2, driver.train_items, {"policy": "policy"})
    assert resumed.restore(tmp_path) == 2
    assert fresh.loaded == [str(ckpt / "policy")]
    assert vars(resumed.counters) == state["counters"]
    assert resumed.versions == {"policy": 4} and sync.published == [("policy", 4)]  # the next version
    assert log2.events == [f"resumed from {ckpt} at step 2"]


def test_restore_without_checkpoint_refuses(tmp_path):
    driver, *_ = make()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        driver.restore(tmp_path)


def test_warm_start_cycles_the_examples_then_publishes():
    driver, _, sync, learner, _ = make(**{"train.sft.steps": 4, "train.sft.batch_size": 2})
    driver.warm_start({"policy": ["a", "b", "c"]})
    # batch k = (step * 2) % 3 of (examples + examples): 0, 2, 1, 0
    assert learner.sft_batches == [["a", "b"], ["c", "a"], ["b", "c"], ["a", "b"]]
    assert sync.published == [("policy", 1), ("policy", 2)] and driver.versions == {"policy": 2}


def test_counters_restore_takes_saved_counts_and_refuses_unknown_names():
    c = Counters()
    c.restore({"produced": 5, "trained": 3, "dropped_stale": 2})
    assert vars(c) == vars(Counters(produced=5, trained=3, dropped_stale=2))
    with pytest.raises(ValueError, match="unknown names"):
        c.restore({"episodes": 1})


def test_the_driver_and_its_interfaces_import_no_ray():
    code = "import sys, cluster.driver, cluster.fleet; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_eval_every_evaluates_between_steps(mode):
    # 5 steps, eval_every = 2: held-out evaluations after steps 2 and 4 (labelled by the step count);
    # the one after the last step is the run's after_rl (cluster.run), not repeated here
    driver, fleet, _, learner, log = make(mode=mode, steps=5, **{"train.eval_every": 2})
    driver.eval_items = ["e0", "e1", "e2"]
    driver.train(0, 5, lambda step: None)
    assert list(log.evals) == ["step_000002", "step_000004"]
    assert all(r["episodes"] == 3 for r in log.evals.values())  # one greedy sample per held-out item
    assert fleet.calls[(CallKind.EVALUATE, "rollout-0")] + fleet.calls[(CallKind.EVALUATE, "rollout-1")] == 4
    assert len(learner.batches) == 5 and driver.counters.produced == driver.counters.trained == 40


@pytest.mark.parametrize("saved, restored", [(True, True), (False, False), (None, True)])
def test_the_warm_start_is_done_once_across_a_resume(tmp_path, saved, restored):
    # a checkpoint written after the warm start (step 0's, which learner restarts add, included)
    # resumes without repeating the base evaluation and SFT (cluster.run.train_run reads the flag);
    # one written before it (a plugin failure during the base evaluation) repeats them; a checkpoint
    # of an older version (no flag) was only ever written after them
    driver, *_ = make(steps=1)
    driver.warm_started = bool(saved)
    driver.checkpoint(tmp_path, 0)
    if saved is None:
        path = tmp_path / "checkpoints" / "step_000000" / "driver.json"
        state = json.loads(path.read_text())
        del state["warm_started"]
        path.write_text(json.dumps(state))
        (path.parent / "MANIFEST.json").unlink()  # as an older version wrote it
    fleet = FakeFleet(group=2)
    resumed = Driver(driver.recipe, fleet, {"policy": FakeLearner()}, FakeSync(fleet), FakeLog(), driver.train_items,
                     {"policy": "policy"})
    assert resumed.warm_started is False and resumed.restore(tmp_path) == 0
    assert resumed.warm_started is restored
