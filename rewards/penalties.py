"""Cost-shaped rewards: response length and latency penalties, and the environment return.

Penalties are ``<= 0``: 0 within a budget, falling linearly to ``-1`` at ``limit`` and clipped
there, so a composite weight sets their scale. The latency penalty follows the "accuracy and
response time" reward of the AI-Scientist VQA paper (seed 001), which names response time as a
reward term but gives no formula; the linear hinge here is our choice. Latency is wall time and
depends on the machine and load, so it makes rewards non-reproducible: prefer the length penalty
(a deterministic proxy) unless time itself is what should be optimised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rewards.base import RewardResult, leaf, register_reward, zero
from rollout.types import Episode, Task

LENGTH_UNITS = ("tokens", "chars")
AGGREGATES = ("sum", "max")


def hinge_penalty(value: float, budget: float, limit: float) -> float:
    """``-clip((value - budget) / (limit - budget), 0, 1)``: 0 up to ``budget``, -1 from ``limit``."""
    return -min(1.0, max(0.0, (value - budget) / (limit - budget)))


def _check_budget(owner: str, budget: float, limit: float) -> None:
    if not 0 <= budget < limit:
        raise ValueError(f"{owner}: need 0 <= budget < limit, got budget={budget}, limit={limit}")


@register_reward("length_penalty")
@dataclass(frozen=True)
class LengthPenalty:
    """Hinge penalty on the generated length, summed over the episode's trainable turns.

    ``unit="tokens"`` counts ``len(output_ids)`` (what the learner pays for); ``"chars"`` counts
    ``len(text)``.
    """

    budget: float = 512
    limit: float = 1024
    unit: str = "tokens"
    name: str = "length_penalty"

    def __post_init__(self) -> None:
        _check_budget("LengthPenalty", self.budget, self.limit)
        if self.unit not in LENGTH_UNITS:
            raise ValueError(f"LengthPenalty.unit: {self.unit!r} not in {LENGTH_UNITS}")

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        turns = [t for t in episode.turns if t.trainable]
        if self.unit == "tokens":
            n = sum(len(t.output_ids) for t in turns)
        else:
            n = sum(len(t.text) if isinstance(t.text, str) else 0 for t in turns)
        score = hinge_penalty(n, self.budget, self.limit)
        reason = f"output too long ({n} {self.unit} > budget {self.budget:g})" if score < 0 else ""
        return leaf(self.name, score, reason, length=n)


@register_reward("latency_penalty")
@dataclass(frozen=True)
class LatencyPenalty:
    """Hinge penalty on generation wall time: the ``sum`` (default) or ``max`` of ``turn.latency_s``."""

    budget_s: float = 5.0
    limit_s: float = 30.0
    aggregate: str = "sum"
    name: str = "latency_penalty"

    def __post_init__(self) -> None:
        _check_budget("LatencyPenalty", self.budget_s, self.limit_s)
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"LatencyPenalty.aggregate: {self.aggregate!r} not in {AGGREGATES}")

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        times = [t.latency_s for t in episode.turns]
        if not all(math.isfinite(x) and x >= 0 for x in times):
            return zero(self.name, f"invalid latencies {times}")
        total = math.fsum(times) if self.aggregate == "sum" else max(times, default=0.0)
        score = hinge_penalty(total, self.budget_s, self.limit_s)
        reason = f"too slow ({total:.3g} s > budget {self.budget_s:g} s)" if score < 0 else ""
        return leaf(self.name, score, reason, seconds=total)


@register_reward("env_return")
@dataclass(frozen=True)
class EnvReturn:
    """Undiscounted environment return.

    ``source="turns"`` (default): the sum of ``turn.reward`` over the episode's turns, i.e. the step
    rewards the environment emitted (RL4VLM success = return > 0). ``source="episode"``: the
    episode's ``reward`` field as the rollout worker set it. Prefer "turns": ``episode.reward`` is
    also where the *total* reward is written back, so reading it inside a composite is circular.
    """

    source: str = "turns"
    name: str = "env_return"

    def __post_init__(self) -> None:
        if self.source not in ("turns", "episode"):
            raise ValueError(f"EnvReturn.source: {self.source!r} not in ('turns', 'episode')")

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        if self.source == "episode":
            value = episode.reward
        elif not episode.turns:
            return zero(self.name, "episode has no turns")
        else:
            value = math.fsum(t.reward for t in episode.turns)
        if not math.isfinite(value):
            return zero(self.name, f"non-finite return {value}")
        return leaf(self.name, value, "" if value > 0 else "no positive return")
