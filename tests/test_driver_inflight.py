"""Async checkpoints keep what is in flight (issue 14, bullet 5), on the fakes of ``test_driver.py``.

A run stopped right after a checkpoint and resumed in a new driver (fresh workers, fresh learner,
``Driver.restore``) must train the same episodes as a run that never stopped: same episode ids and
task ids at every step, the same generating versions for the batch in flight at the checkpoint, the
same lags (so ``train.max_staleness`` drops the same episodes) and the same counters at the end.

Hand-worked, async, 5 steps, 8 episodes a step, a checkpoint every 2 steps (v1 published at start):
  uninterrupted: step t's rollouts are launched at v_t (v1 for steps 0 and 1), so the batches of
  steps 1..4 are generated at v1, v2, v3, v4 and trained when the learner is one version ahead
  (lag 1); checkpoint step_000002 holds step 2's 8 episodes (generated at v2, the learner at v3).
  resumed from step_000002: restore republishes the checkpoint's adapter as v4 (same weights); step 2
  trains the held episodes (v2), their lag measured against the checkpoint's v3: 1, not 4 - 2 = 2;
  steps 3, 4 are generated at v4, v5 (the new numbering) and again lag 1.
"""

import json
import shutil

import pytest
from test_driver import FakeFleet, FakeLearner, FakeLog, FakeSync, make

from cluster import inflight
from cluster.driver import Driver
from cluster.fleet import CallKind
from cluster.inflight import Collected
from rollout.episode_arrow import EpisodeBatch, image_hash
from rollout.types import Episode, Turn
from rollout.worker import RolloutStats

pytestmark = pytest.mark.unit

STEPS, EVERY = 5, 2


class Stopped(Exception):
    """The run stopped right after a checkpoint (a preemption, a SIGKILL)."""


def uninterrupted(tmp_path, mode, staleness, die=()):
    driver, fleet, _, learner, log = make(mode=mode, staleness=staleness, steps=STEPS,
                                          **{"train.checkpoint_every": EVERY})
    fleet.die.update(die)
    driver.train(0, STEPS, lambda step: driver.checkpoint(tmp_path, step))
    return driver, learner, log


def stopped_then_resumed(tmp_path, mode, staleness, at=2, die=(), edit=None):
    """A run stopped right after its checkpoint at step ``at``, then a new driver on fresh workers
    restored from it (``edit``: a change to its driver.json first) and run to the end."""
    driver, fleet, *_ = make(mode=mode, staleness=staleness, steps=STEPS, **{"train.checkpoint_every": EVERY})
    fleet.die.update(die)

    def checkpoint_then_stop(step):
        driver.checkpoint(tmp_path, step)
        if step == at:
            raise Stopped

    with pytest.raises(Stopped):
        driver.train(0, STEPS, checkpoint_then_stop)
    if edit:  # the checkpoint as an older version wrote it: no checksums manifest either
        path = tmp_path / "checkpoints" / f"step_{at:06d}" / "driver.json"
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
        (path.parent / "MANIFEST.json").unlink(missing_ok=True)
    fleet = FakeFleet(group=2)
    sync, learner, log = FakeSync(fleet), FakeLearner(), FakeLog()
    resumed = Driver(driver.recipe, fleet, {"policy": learner}, sync, log, driver.train_items,
                     driver.recipe.resolve().adapters(), pids=dict(fleet.pid))
    start = resumed.restore(tmp_path)
    resumed.train(start, STEPS, lambda step: resumed.checkpoint(tmp_path, step))
    return resumed, learner, log


def trained(learner, first=0):
    """Per trained step from ``first``: (episode id, task id, generating version) of each episode."""
    return [[(e.episode_id, e.task_id, e.policy_versions["policy"]) for e in b.episodes]
            for b in learner.batches[first:]]


def renumbered(steps, after, shift):
    """``steps`` with every version above ``after`` raised by ``shift`` (a restore's republish)."""
    return [[(i, t, v + shift if v > after else v) for i, t, v in s] for s in steps]


@pytest.mark.parametrize("staleness", [1, 0])
def test_resumed_async_run_trains_the_episodes_of_one_that_never_stopped(tmp_path, staleness):
    full, full_learner, full_log = uninterrupted(tmp_path / "a", "async", staleness)
    resumed, learner, log = stopped_then_resumed(tmp_path / "b", "async", staleness)
    expected = trained(full_learner, first=2)
    # the held batch keeps its versions; later ones are one number up (v4 is the republished v3)
    assert trained(learner) == renumbered(expected, after=2, shift=1)
    assert [len(s) for s in expected] == ([8, 8, 8] if staleness else [0, 0, 0])
    assert log.loops == full_log.loops[2:]  # (step, produced, dropped, lag, in flight) at every step
    if staleness:  # (nothing is trained with max_staleness 0, so no lag is logged)
        assert [lp[3] for lp in log.loops] == [{"policy": 1.0}] * 3
    assert vars(resumed.counters) == vars(full.counters)
    c = full.counters
    assert (c.produced, c.trained, c.dropped_stale) == ((40, 40, 0) if staleness else (40, 8, 32))
    assert resumed.versions == {"policy": full.versions["policy"] + 1}  # 7: the republish, then steps 2-4


def test_the_checkpoint_records_the_batch_in_flight(tmp_path):
    driver, *_ = uninterrupted(tmp_path, "async", 1)
    ckpt = tmp_path / "checkpoints" / "step_000002"
    state = json.loads((ckpt / "driver.json").read_text())
    assert state["in_flight"] == {"step": 2, "episodes": 8, "versions": {"policy": 3},
                                  "generated": {"policy": [2]}, "dir": "in_flight"}
    c = state["counters"]  # the held episodes are counted when trained, not at the checkpoint
    assert (c["produced"], c["trained"], c["dropped_stale"]) == (16, 16, 0)
    held = inflight.load(ckpt, state["in_flight"])
    assert [e.episode_id for e in held.batch.episodes] == [f"rollout/2/t{i // 2}/{i % 2}" for i in range(8)]
    assert held.stats == ({"episodes": 4}, {"episodes": 4})
    step4 = json.loads((tmp_path / "checkpoints" / "step_000004" / "driver.json").read_text())["in_flight"]
    assert (step4["step"], step4["generated"], step4["versions"]) == (4, {"policy": [4]}, {"policy": 5})
    # the last step launches nothing: the run's final checkpoint holds nothing (no in_flight field)
    assert driver.pending is None
    driver.checkpoint(tmp_path, STEPS)
    assert "in_flight" not in json.loads((tmp_path / "checkpoints" / "step_000005" / "driver.json").read_text())


def test_resume_says_it_trains_the_held_episodes(tmp_path):
    _, _, log = stopped_then_resumed(tmp_path, "async", 1)
    ckpt = tmp_path / "checkpoints" / "step_000002"
    assert log.events[0] == f"resumed from {ckpt} at step 2, training first the 8 episodes in flight at it"


def test_sync_mode_resume_trains_the_held_episodes_too(tmp_path):
    full, full_learner, full_log = uninterrupted(tmp_path / "a", "sync", 0)
    resumed, learner, log = stopped_then_resumed(tmp_path / "b", "sync", 0)
    # sync: step 2 launched after v3 (the checkpoint's adapter): held at v3, lag 0; then v5, v6
    assert trained(learner) == renumbered(trained(full_learner, first=2), after=3, shift=1)
    assert [lp[3] for lp in log.loops] == [{"policy": 0.0}] * 3 == [lp[3] for lp in full_log.loops[2:]]
    assert vars(resumed.counters) == vars(full.counters)


def test_a_worker_death_while_the_checkpoint_gathers_is_counted_once(tmp_path):
    # rollout-1 dies during its step-2 rollout (its 3rd call): the checkpoint's gather re-runs the
    # shard at the current v3; the re-run is in the checkpoint, the resumed run does not repeat it
    die = {(CallKind.ROLLOUT, "rollout-1", 2)}
    full, full_learner, _ = uninterrupted(tmp_path / "a", "async", 1, die)
    resumed, learner, _ = stopped_then_resumed(tmp_path / "b", "async", 1, die=die)
    step2 = [v for _, _, v in trained(full_learner)[2]]
    assert step2 == [2, 2, 2, 2, 3, 3, 3, 3] == [v for _, _, v in trained(learner)[0]]
    state = json.loads((tmp_path / "b" / "checkpoints" / "step_000002" / "driver.json").read_text())
    assert (state["counters"]["retried_shards"], state["counters"]["worker_restarts"]) == (1, 1)
    assert state["in_flight"]["generated"] == {"policy": [2, 3]}
    assert vars(resumed.counters) == vars(full.counters)
    assert (full.counters.produced, full.counters.trained, full.counters.retried_shards) == (40, 40, 1)


def test_a_checkpoint_without_in_flight_rollouts_launches_the_step(tmp_path):
    # an older driver.json (no in_flight field): the step's rollouts are generated again, from the
    # restored adapter (v4): the behaviour before this change, exact counts still
    def older(state):
        shutil.rmtree(tmp_path / "checkpoints" / "step_000002" / state.pop("in_flight")["dir"])
        return state

    resumed, learner, log = stopped_then_resumed(tmp_path, "async", 1, edit=older)
    assert [s[0][2] for s in trained(learner)] == [4, 4, 5]  # step 2 regenerated at v4
    assert f"resumed from {tmp_path / 'checkpoints' / 'step_000002'} at step 2" in log.events
    c = resumed.counters
    assert (c.produced, c.trained, c.dropped_stale) == (40, 40, 0)


def _image_batch() -> EpisodeBatch:
    png = b"\x89PNG fake bytes"
    turn = Turn(role="policy", prompt_ids=(1, 2), output_ids=(3,), output_logprobs=(-0.5,), adapter_version=2,
                text="red", image_hashes=(image_hash(png),))
    e = Episode("t0@2#0", "t0@2", "t0", (turn,), reward=1.0, success=True, metadata={"transcript": "[task] t0"})
    return EpisodeBatch((e,), {image_hash(png): png})


def test_save_and_load_round_trip_with_images_and_stats(tmp_path):
    stats = RolloutStats(num_episodes=1, num_turns=1, generated_tokens={"policy": 1}, wall_s=0.5,
                         tokens_per_s=2.0, latency_p50_s=0.1, mean_reward=1.0, success_rate=1.0)
    held = Collected(2, _image_batch(), (stats,), {"policy": 3})
    record = inflight.save(tmp_path, held)
    assert sorted(p.name for p in (tmp_path / "in_flight").iterdir()) == ["episodes.parquet", "images.parquet",
                                                                         "stats.json"]
    assert inflight.load(tmp_path, json.loads(json.dumps(record))) == held
    assert inflight.load(tmp_path, None) is None


def test_load_refuses_files_that_do_not_match_the_record(tmp_path):
    record = inflight.save(tmp_path, Collected(2, _image_batch(), (), {"policy": 3}))
    with pytest.raises(ValueError, match="1 episodes, driver.json records 8"):
        inflight.load(tmp_path, {**record, "episodes": 8})
