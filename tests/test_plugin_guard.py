"""Faulty user code is contained (issue 14, bullet 1): a reward or environment that raises scores its
episode 0 with the reason, the episode is marked and counted per plugin, and the driver's check
stops the run only when more than ``train.max_plugin_error_fraction`` of a batch failed.

Hand-worked expectations are in each test (which calls raise, so which episodes get 0)."""

from pathlib import Path

import pytest

import rollout.envs as envs
from cluster.plugin_faults import PluginFailed, checkpoint_on_failure, count_names, tally, worst_plugin
from rewards import ExactMatch
from rewards.composite import WeightedSum
from rollout.config import EnvEpisodeConfig, RoleConfig, RolloutConfig
from rollout.engine import AdapterRef
from rollout.engine.fake import FakeEngine
from rollout.env_episode import run_env_episodes
from rollout.envs.numberline import NumberLine
from rollout.episode_arrow import EpisodeBatch
from rollout.guard import TRACEBACK_KEY, call_reward, episode_faults, fault_counts
from rollout.types import Episode, RewardResult, Task
from rollout.worker import RolloutWorker

pytestmark = pytest.mark.unit

TASKS = [Task(f"t{i}", "What colour?", "blue") for i in range(3)]


class EverySeventh:
    """A user's reward with a bug: a KeyError on every 7th call (calls 7, 14, ...), else exact match."""

    name = "flaky"

    def __init__(self, period: int = 7) -> None:
        self.period, self.calls = period, 0

    def __call__(self, task, episode):
        self.calls += 1
        if self.calls % self.period == 0:
            raise KeyError("colour")
        return ExactMatch()(task, episode)


def blue_engine():
    eng = FakeEngine(lambda prompt, adapter, version, k: "<answer>blue</answer>")
    eng.load_adapter(AdapterRef("policy", 1, "/x"))
    return eng


def test_call_reward_turns_an_exception_into_zero_with_the_reason():
    result = call_reward(EverySeventh(period=1), TASKS[0], Episode("e", "g", "t0", ()))
    assert (result.score, result.components) == (0.0, {"flaky": 0.0})
    assert result.reason == "reward 'flaky' raised KeyError: 'colour'"
    [fault] = result.faults
    assert (fault.plugin, fault.error) == ("reward/flaky", "KeyError: 'colour'")
    assert fault.traceback.startswith("Traceback (most recent call last):")
    assert fault.traceback.rstrip().endswith("KeyError: 'colour'") and "raise KeyError" in fault.traceback


def test_a_reward_that_returns_no_result_is_a_fault_too():
    class Wrong:
        name = "wrong"

        def __call__(self, task, episode):
            return 1.0

    result = call_reward(Wrong(), TASKS[0], Episode("e", "g", "t0", ()))
    assert result.score == 0.0 and result.reason == "reward 'wrong' raised TypeError: returned float, not a RewardResult"


def test_every_seventh_call_scores_zero_through_the_worker():
    # 3 tasks x G=4 = 12 episodes per call, scored in order: call 7 raises in the first batch (index
    # 6: t1, sample 2), calls 14 and 21 in the second (calls 13..24: indices 1 and 8).
    worker = RolloutWorker(RolloutConfig(kind="single_turn", group_size=4), {"policy": blue_engine()},
                           reward=EverySeventh())
    first, stats = worker.rollout(TASKS, {"policy": 1}, step=0)
    assert [e.reward for e in first.episodes] == [1.0] * 6 + [0.0] + [1.0] * 5
    bad = first.episodes[6]
    assert bad.episode_id == "t1@0#2"
    assert bad.reward_reason == "reward 'flaky' raised KeyError: 'colour'"
    assert episode_faults(bad) == {"reward/flaky": "KeyError: 'colour'"}
    assert "KeyError: 'colour'" in bad.metadata[TRACEBACK_KEY]
    assert all(not episode_faults(e) for i, e in enumerate(first.episodes) if i != 6)
    assert stats.plugin_errors == {"reward/flaky": 1}
    assert stats.as_dict()["plugin_errors/reward/flaky"] == 1.0 and stats.mean_reward == pytest.approx(11 / 12)
    second, stats2 = worker.rollout(TASKS, {"policy": 1}, step=1)
    assert [i for i, e in enumerate(second.episodes) if e.reward == 0.0] == [1, 8]
    assert stats2.plugin_errors == {"reward/flaky": 2}
    # the marks travel with the episode through the storage codec
    assert EpisodeBatch.from_arrow(*first.to_arrow()) == first


def test_a_healthy_batch_has_no_fault_figures():
    worker = RolloutWorker(RolloutConfig(kind="single_turn", group_size=2), {"policy": blue_engine()},
                           reward=ExactMatch())
    batch, stats = worker.rollout(TASKS, {"policy": 1})
    assert stats.plugin_errors == {} and not any(k.startswith("plugin_errors") for k in stats.as_dict())
    assert all(e.metadata == {} or TRACEBACK_KEY not in e.metadata for e in batch.episodes)


def test_weighted_sum_keeps_the_other_terms_when_one_raises():
    # exact_match (1.0 on "blue") weight 0.5 + flaky weight 2.0 raising: 0.5 * 1 + 2 * 0 = 0.5
    reward = WeightedSum(((ExactMatch(), 0.5), (EverySeventh(period=1), 2.0)))
    episode = Episode("e", "g", "t0", (), answer="blue")
    result = reward(TASKS[0], episode)
    assert result.score == 0.5 and result.components == {"exact_match": 1.0, "flaky": 0.0}
    assert result.reason == "flaky: reward 'flaky' raised KeyError: 'colour'"
    assert [f.plugin for f in result.faults] == ["reward/flaky"]
    # through the worker the episode keeps the partial score and is still marked as a plugin failure
    worker = RolloutWorker(RolloutConfig(kind="single_turn", group_size=1), {"policy": blue_engine()}, reward=reward)
    batch, stats = worker.rollout(TASKS[:1], {"policy": 1})
    [e] = batch.episodes
    assert e.reward == 0.5 and episode_faults(e) == {"reward/flaky": "KeyError: 'colour'"}
    assert stats.plugin_errors == {"reward/flaky": 1}


class BrokenLine(NumberLine):
    """NumberLine whose ``step`` raises from seed 1's episodes on, and whose ``reset`` raises for seed 2."""

    def reset(self, *, seed=None, options=None):
        if seed == 2:
            raise RuntimeError("no state for seed 2")
        self.broken = seed == 1
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.broken:
            raise ValueError("step after the end")
        return super().step(action)


def test_an_environment_that_raises_ends_only_its_episodes(monkeypatch):
    monkeypatch.setitem(envs.ENVS, "numberline", BrokenLine)
    eng = FakeEngine(lambda p, a, v, k: '{"thoughts": "x", "action": "-"}', image_tokens=4)
    eng.load_adapter(AdapterRef("policy", 1, "/x"))
    cfg = EnvEpisodeConfig(env="numberline", image_size=48, policy=RoleConfig(adapter="policy"), max_steps=3)
    batch = run_env_episodes(eng, [0, 1, 2], cfg, group_size=2)
    ok, stepped, unreset = batch.episodes[0:2], batch.episodes[2:4], batch.episodes[4:6]
    assert all(not episode_faults(e) and e.finish_reason != "error" for e in ok)
    # seed 1: the first step raises -> one turn (the reply), reward 0, finish "error"
    assert all((e.finish_reason, e.reward, len(e.turns)) == ("error", 0.0, 1) for e in stepped)
    assert stepped[0].reward_reason == "env 'numberline' raised ValueError: step after the end"
    # seed 2: reset raises -> no turn at all
    assert all((e.finish_reason, e.reward, e.turns) == ("error", 0.0, ()) for e in unreset)
    assert unreset[0].reward_reason == "env 'numberline' raised RuntimeError: no state for seed 2"
    assert fault_counts(batch.episodes) == {"env/numberline": 4}


def marked(n_bad: int, n: int, plugin: str = "flaky") -> list[Episode]:
    worker = RolloutWorker(RolloutConfig(kind="single_turn", group_size=n), {"policy": blue_engine()},
                           reward=EverySeventh(period=1) if plugin == "flaky" else ExactMatch())
    bad = list(worker.rollout(TASKS[:1], {"policy": 1})[0].episodes[:n_bad])
    good = RolloutWorker(RolloutConfig(kind="single_turn", group_size=n - n_bad), {"policy": blue_engine()},
                         reward=ExactMatch()).rollout(TASKS[1:2], {"policy": 1})[0].episodes if n > n_bad else ()
    return bad + list(good)


def test_tally_counts_then_stops_only_above_the_fraction():
    totals: dict[str, int] = {"reward/flaky": 3}
    # 1 of 10 failed: 0.1 is not above a limit of 0.1 -> counted, no stop
    assert tally(marked(1, 10), totals, 0.1, "step 4", 4) == {"reward/flaky": 1}
    assert totals == {"reward/flaky": 4} and count_names(totals) == {"plugin_errors/reward/flaky": 4}
    # 2 of 10: 0.2 > 0.1 -> counted first (the checkpoint holds them), then PluginFailed
    with pytest.raises(PluginFailed) as info:
        tally(marked(2, 10), totals, 0.1, "step 5", 5)
    assert totals == {"reward/flaky": 6} and info.value.step == 5
    assert str(info.value) == ("reward 'flaky' raised KeyError: 'colour' on 2 of 10 episodes of step 5 "
                               "(2 failed in a plugin, more than train.max_plugin_error_fraction = 0.1)")
    assert worst_plugin(marked(0, 4)) == ("", "", 0)
    tally(marked(4, 4), None, 1.0, "evaluation base", 0)  # 1.0 never stops


def test_checkpoint_on_failure_saves_before_the_error_leaves(tmp_path: Path):
    saved = []

    def checkpoint(step):
        saved.append(step)
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "LATEST").write_text(f"step_{step:06d}")

    with pytest.raises(PluginFailed) as info:
        with checkpoint_on_failure(checkpoint, tmp_path):
            raise PluginFailed("reward 'flaky' raised KeyError: 'colour' on 8 of 8 episodes of step 3", 3)
    assert saved == [3]
    assert info.value.line() == ("reward 'flaky' raised KeyError: 'colour' on 8 of 8 episodes of step 3; "
                                 f"checkpoint written: {tmp_path / 'checkpoints' / 'step_000003'}")
    with checkpoint_on_failure(checkpoint, tmp_path):  # no failure, no checkpoint
        pass
    assert saved == [3]


def test_reward_result_faults_default_empty():
    assert RewardResult(1.0).faults == ()
