"""A learner's death on in-process fakes (no Ray): a learner group scripted to die during an update,
an adapter export, a checkpoint or its own restart; the driver starts it again, rewinds every count
and the run log to the last checkpoint, republishes the checkpoint's adapter as a new version and
runs the steps since then again. Every expected count is worked out by hand in the test.

The fake learner's state is the number of updates it made (saved in and loaded from its checkpoint
directory), so a restored learner that skipped or repeated a step shows in its count. The fleet,
sync client and log fakes are :mod:`test_driver`'s (a worker serves the version it was synced to;
each fake episode is stamped with it).
"""

import json

import pytest

from cluster.config import load_recipe
from cluster.driver import Driver
from cluster.fleet import CallKind, LearnerDied, LearnerRestartsSpent
from test_driver import FakeFleet, FakeLog, FakeSync

pytestmark = pytest.mark.unit

EPISODES = 8
"""Per step: 4 tasks x group 2."""


class Script:
    """Deaths to come, shared by every learner group of the run: ``(what, n)`` dies at the n-th
    (0-based, counted over all groups) call of ``what`` ("train_step", "save", "load")."""

    def __init__(self, *deaths: tuple[str, int]) -> None:
        self.deaths, self.calls = set(deaths), {"train_step": 0, "save": 0, "load": 0}

    def call(self, what: str) -> None:
        n = self.calls[what]
        self.calls[what] += 1
        if (what, n) in self.deaths:
            raise LearnerDied("policy", f"a rank died during {what}")


class StatefulLearner:
    """A learner whose state is its update count; ``batches`` are the batches it trained."""

    def __init__(self, script: Script) -> None:
        self.script, self.updates, self.batches = script, 0, []

    def train_step(self, batch):
        self.script.call("train_step")
        self.updates += 1
        self.batches.append(batch)
        return {"policy/loss": 0.5}

    def save_checkpoint(self, directory):
        self.script.call("save")
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "state.json").write_text(json.dumps({"updates": self.updates}))

    def load_checkpoint(self, directory):
        self.script.call("load")
        self.updates = json.loads((directory / "state.json").read_text())["updates"]


class Relauncher:
    """The :class:`cluster.fleet.LearnerFactory` fake: a fresh learner each time (state 0)."""

    def __init__(self, script: Script) -> None:
        self.script, self.started = script, []

    def relaunch(self, role):
        self.started.append(StatefulLearner(self.script))
        return self.started[-1]


class RewindLog(FakeLog):
    def __init__(self) -> None:
        super().__init__()
        self.rewinds: list[tuple[int, dict]] = []

    def rewind(self, step, faults):
        self.rewinds.append((step, dict(faults)))


class RestartSync(FakeSync):
    """``export_dies``: versions whose export (by the learner) dies."""

    def __init__(self, fleet) -> None:
        super().__init__(fleet)
        self.export_dies: set[int] = set()

    def publish(self, role, version):
        if version in self.export_dies:
            self.export_dies.discard(version)
            raise LearnerDied(role, f"a rank died exporting v{version}")
        return super().publish(role, version)


def make(tmp_path, *deaths, mode="sync", steps=6, every=2, restarts=2):
    """A driver over two fake workers and a restartable fake learner, v1 published."""
    sets = (f"train.mode={mode}", "train.max_staleness=1", f"train.steps={steps}", f"train.checkpoint_every={every}",
            f"train.max_learner_restarts={restarts}", "data.tasks_per_step=4", "rollout.group_size=2",
            f"output.dir={tmp_path}")
    recipe = load_recipe(None, sets)
    script = Script(*deaths)
    fleet, log = FakeFleet(group=2), RewindLog()
    sync, learner, relauncher = RestartSync(fleet), StatefulLearner(script), Relauncher(script)
    driver = Driver(recipe, fleet, {"policy": learner}, sync, log, [f"t{i}" for i in range(8)],
                    recipe.resolve().adapters(), pids=dict(fleet.pid), relauncher=relauncher)
    driver.publish("policy")
    return driver, fleet, sync, learner, relauncher, log


def train(driver, tmp_path, steps=6):
    driver.train(0, steps, lambda step: driver.checkpoint(tmp_path, step))


def ids(learner) -> list[str]:
    return [e.episode_id for b in learner.batches for e in b.episodes]


def step_of(episode_id: str) -> int:
    return int(episode_id.split("/")[1])


def test_a_death_during_an_update_rewinds_to_the_checkpoint_and_replays(tmp_path):
    # steps 0, 1, 2 train (v2, v3, v4; checkpoints at 0 and 2); the 4th update (step 3) dies
    driver, _, sync, first, relauncher, log = make(tmp_path, ("train_step", 3))
    train(driver, tmp_path)
    c = vars(driver.counters)
    # steps 0..3 were produced (32), the checkpoint at step 2 had 16: steps 2 and 3 (16) counted
    # produced since; step 2's batch, held by that checkpoint, is trained again: step 3's 8 discarded
    assert (c["produced"], c["trained"], c["dropped_stale"]) == (6 * EPISODES, 6 * EPISODES, 0)
    assert (c["learner_restarts"], c["steps_replayed"], c["episodes_discarded"]) == (1, 1, 8)
    [second] = relauncher.started
    assert first.updates == 3 and second.updates == 2 + 4  # restored at 2 updates, then steps 2..5
    assert [step_of(i) for i in ids(second)] == [2] * 8 + [3] * 8 + [4] * 8 + [5] * 8
    assert len(set(ids(second))) == 32
    assert ids(second)[:8] == ids(first)[16:24]  # step 2's batch, held by its checkpoint, is trained again
    # v5: the checkpoint's adapter republished (every worker proves it); v6..v9: steps 2..5
    assert sync.published == [("policy", v) for v in range(1, 10)] and driver.versions == {"policy": 9}
    assert all(n == 2 for _, n in log.syncs)
    assert log.rewinds == [(2, {"learner_restarts": 1, "steps_replayed": 1})]
    died = log.events.index("learner policy died: a rank died during train_step; starting it again (1 of 2) "
                            "from the last checkpoint")
    assert log.events[died + 1: died + 3] == [
        f"resumed from {tmp_path / 'checkpoints' / 'step_000002'} at step 2, training first the 8 episodes "
        "in flight at it",
        "learner restart 1: back at step 2, running the 1 step(s) since the checkpoint again"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "LATEST", "step_000000", "step_000002", "step_000004", "step_000006"]


def test_a_death_before_the_first_checkpoint_goes_back_to_step_0(tmp_path):
    driver, *_, relauncher, log = make(tmp_path, ("train_step", 1), every=0, steps=3)
    train(driver, tmp_path, steps=3)
    c = vars(driver.counters)
    assert (c["produced"], c["trained"], c["learner_restarts"], c["steps_replayed"]) == (24, 24, 1, 1)
    assert c["episodes_discarded"] == 16 and relauncher.started[0].updates == 3
    assert log.rewinds[0][0] == 0


def test_a_death_during_an_async_export_discards_what_is_in_flight(tmp_path):
    # async: step 2's rollouts (held by checkpoint 2), then step 3's launched before the update of
    # step 2, whose export as v4 dies: step 3's in-flight rollouts are collected and thrown away
    driver, _, sync, first, relauncher, log = make(tmp_path, mode="async")
    sync.export_dies.add(4)
    train(driver, tmp_path)
    c = vars(driver.counters)
    assert (c["produced"], c["trained"] + c["dropped_stale"]) == (48, 48)
    # steps_replayed 0: step 2 had not completed; discarded: step 3's 8 in flight (step 2's 8, counted
    # produced after the checkpoint that holds them, are trained again from it)
    assert (c["learner_restarts"], c["steps_replayed"], c["episodes_discarded"]) == (1, 0, 8)
    assert first.updates == 3 and relauncher.started[0].updates == 2 + 4
    # v1..v3 proven; v4's export died (never published): v4 is the republished checkpoint adapter
    # (versions go on from the last proven one), v5..v8 steps 2..5
    assert [v for _, v in sync.published] == [1, 2, 3, 4, 5, 6, 7, 8] and driver.versions == {"policy": 8}


def test_a_death_during_a_checkpoint_replays_from_the_one_before(tmp_path):
    # saves: step 0 (call 0), step 2 (call 1), step 4 (call 2: dies) -> back to step 2
    driver, *_, relauncher, log = make(tmp_path, ("save", 2))
    train(driver, tmp_path)
    c = vars(driver.counters)
    # produced before the death: steps 0..3 (32) and step 4's batch held by the failed checkpoint
    # (8, never counted); the checkpoint at 2 had 16 -> 16 + 8, less step 2's batch that checkpoint
    # holds (trained again): 16 discarded
    assert (c["produced"], c["trained"], c["learner_restarts"], c["steps_replayed"]) == (48, 48, 1, 2)
    assert c["episodes_discarded"] == 16
    assert relauncher.started[0].updates == 2 + 4
    assert (driver.recipe.run_dir() / "checkpoints" / "LATEST").read_text() == "step_000006"


def test_a_death_while_restarting_is_one_more_restart(tmp_path):
    # the first relaunched group dies loading the checkpoint (load call 0); the second one loads it
    driver, *_, relauncher, log = make(tmp_path, ("train_step", 3), ("load", 0))
    train(driver, tmp_path)
    c = vars(driver.counters)
    assert (c["produced"], c["trained"], c["learner_restarts"], c["steps_replayed"]) == (48, 48, 2, 1)
    assert c["episodes_discarded"] == 8 and len(relauncher.started) == 2  # step 3's (step 2's trained again)
    assert relauncher.started[1].updates == 6


def test_deaths_beyond_the_budget_stop_the_run_with_one_line(tmp_path):
    driver, *_ = make(tmp_path, ("train_step", 1), ("train_step", 3), restarts=1)
    with pytest.raises(LearnerRestartsSpent) as err:
        train(driver, tmp_path)
    assert str(err.value) == (f"learner policy died: a rank died during train_step; learner restarts spent "
                              f"(1 of train.max_learner_restarts = 1); the last checkpoint is in "
                              f"{tmp_path / 'checkpoints'} (--resume continues)")
    assert driver.counters.learner_restarts == 1


def test_restarts_off_write_no_step_0_checkpoint_and_stop_at_the_first_death(tmp_path):
    driver, *_ = make(tmp_path, ("train_step", 1), restarts=0)
    with pytest.raises(LearnerRestartsSpent, match="0 of train.max_learner_restarts = 0"):
        train(driver, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_worker_dead_in_flight_at_the_learner_death_is_waited_for_and_counted(tmp_path):
    # async: rollout-1 dies during step 3's in-flight call; the update of step 2 dies too
    driver, fleet, sync, *_ = make(tmp_path, ("train_step", 2), mode="async")
    fleet.die.add((CallKind.ROLLOUT, "rollout-1", 3))
    train(driver, tmp_path)
    c = vars(driver.counters)
    assert (c["produced"], c["trained"] + c["dropped_stale"], c["learner_restarts"]) == (48, 48, 1)
    assert c["worker_restarts"] == 1 and c["retried_shards"] == 0
    assert c["episodes_discarded"] == 4  # rollout-0's half of step 3 (step 2's batch is trained again)
    assert sync.served_versions() == {"rollout-0": {"policy": 8}, "rollout-1": {"policy": 8}}
