"""Length and latency penalties and the environment return, with hand-computed values."""

from __future__ import annotations

import pytest

from rewards import build_reward
from rewards.penalties import hinge_penalty
from rollout.types import Episode, Task, Turn

pytestmark = pytest.mark.unit

TASK = Task("t", "q", "a")


def turn(n_tokens: int, text: str = "", latency: float = 0.0, reward: float = 0.0, trainable: bool = True) -> Turn:
    return Turn(
        "policy", (1,), tuple(range(n_tokens)), (-0.5,) * n_tokens, 0,
        text=text, latency_s=latency, reward=reward, trainable=trainable,
    )


def episode(*turns: Turn, reward: float = 0.0) -> Episode:
    return Episode("e", "g", "t", tuple(turns), reward=reward)


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0.0), (100, 0.0), (150, -0.25), (300, -1.0), (10_000, -1.0)],  # budget 100, limit 300
)
def test_hinge(value, expected):
    # (150 - 100) / (300 - 100) = 0.25
    assert hinge_penalty(value, 100, 300) == expected


def test_length_penalty_tokens_sum_over_trainable_turns():
    r = build_reward({"name": "length_penalty", "kwargs": {"budget": 10, "limit": 30}})
    # trainable tokens 12 + 8 = 20 (the frozen turn's 50 do not count): -(20-10)/(30-10) = -0.5
    res = r(TASK, episode(turn(12), turn(8), turn(50, trainable=False)))
    assert res.score == -0.5
    assert res.components == {"length_penalty": -0.5, "length_penalty/length": 20.0}
    assert res.reason == "output too long (20 tokens > budget 10)"
    ok = r(TASK, episode(turn(10)))
    assert (ok.score, ok.reason) == (0.0, "")


def test_length_penalty_chars():
    r = build_reward({"name": "length_penalty", "kwargs": {"budget": 4, "limit": 8, "unit": "chars"}})
    # len("abcdef") = 6: -(6-4)/(8-4) = -0.5; tokens are ignored
    assert r(TASK, episode(turn(100, text="abcdef"))).score == -0.5


def test_latency_penalty_sum_and_max():
    turns = (turn(1, latency=2.0), turn(1, latency=6.0))
    s = build_reward({"name": "latency_penalty", "kwargs": {"budget_s": 4.0, "limit_s": 12.0}})
    m = build_reward({"name": "latency_penalty", "kwargs": {"budget_s": 4.0, "limit_s": 12.0, "aggregate": "max"}})
    # sum: 8 s -> -(8-4)/(12-4) = -0.5;  max: 6 s -> -(6-4)/8 = -0.25
    assert s(TASK, episode(*turns)).score == -0.5
    assert m(TASK, episode(*turns)).score == -0.25
    assert s(TASK, episode(*turns)).reason == "too slow (8 s > budget 4 s)"
    assert s(TASK, episode(turn(1, latency=float("nan")))).reason.startswith("invalid latencies")


def test_penalty_config_errors():
    with pytest.raises(ValueError, match="budget < limit"):
        build_reward({"name": "length_penalty", "kwargs": {"budget": 5, "limit": 5}})
    with pytest.raises(ValueError, match="unit"):
        build_reward({"name": "length_penalty", "kwargs": {"unit": "words"}})
    with pytest.raises(ValueError, match="aggregate"):
        build_reward({"name": "latency_penalty", "kwargs": {"aggregate": "mean"}})


def test_env_return_from_turns_or_episode():
    ep = episode(turn(1, reward=0.0), turn(1, reward=-1.0), turn(1, reward=10.0), reward=7.5)
    turns_sum = build_reward("env_return")(TASK, ep)
    # 0 - 1 + 10 = 9 (EZPoints: one invalid number, then a correct "=")
    assert (turns_sum.score, turns_sum.components, turns_sum.reason) == (9.0, {"env_return": 9.0}, "")
    assert build_reward({"name": "env_return", "kwargs": {"source": "episode"}})(TASK, ep).score == 7.5
    lost = build_reward("env_return")(TASK, episode(turn(1, reward=-1.0)))
    assert (lost.score, lost.reason) == (-1.0, "no positive return")
    empty = build_reward("env_return")(TASK, episode())
    assert (empty.score, empty.reason) == (0.0, "episode has no turns")
