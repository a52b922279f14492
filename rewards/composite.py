"""Weighted sum of child rewards that keeps every component for diagnosis."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from rewards.base import Reward, RewardResult, RewardSpec, as_spec, build_reward, register_reward
from rollout.guard import call_reward
from rollout.types import Episode, Task


@dataclass(frozen=True)
class WeightedSum:
    """``score = sum_i w_i * s_i`` over children; ``components`` = every child's components,
    unweighted (a leaf child contributes ``{child.name: s_i}``); ``reason`` = the children's
    non-empty reasons joined as ``"name: reason; ..."``.

    Child names must be unique; a nested component whose key is already taken is stored as
    ``"{child.name}/{key}"`` so nothing is silently overwritten.

    Each child is called through :func:`rollout.guard.call_reward`: a child that raises scores 0
    (its reason ``"reward 'x' raised KeyError: ..."``) while the other children keep their scores,
    and its fault is passed on in ``faults`` (the episode is counted as a plugin failure).
    """

    terms: tuple[tuple[Reward, float], ...]
    name: str = "weighted_sum"

    def __post_init__(self) -> None:
        names = [r.name for r, _ in self.terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"WeightedSum: duplicate child names {dupes}; give each a distinct `name`")
        if not self.terms:
            raise ValueError("WeightedSum: needs at least one term")
        bad = [w for _, w in self.terms if not math.isfinite(w)]
        if bad:
            raise ValueError(f"WeightedSum: weights must be finite, got {bad}")

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        score, components, reasons, faults = 0.0, {}, [], []
        for reward, weight in self.terms:
            result = call_reward(reward, task, episode)
            faults += result.faults
            score += weight * result.score
            for key, value in (result.components or {reward.name: result.score}).items():
                components[key if key not in components else f"{reward.name}/{key}"] = value
            if result.reason:
                reasons.append(f"{reward.name}: {result.reason}")
        return RewardResult(score, components, "; ".join(reasons), tuple(faults))


@register_reward("weighted_sum")
def weighted_sum(
    terms: Sequence[RewardSpec | Mapping[str, Any] | str], name: str = "weighted_sum"
) -> WeightedSum:
    """Build a :class:`WeightedSum` from specs; each spec's ``weight`` is its coefficient."""
    specs = [as_spec(t) for t in terms]
    return WeightedSum(tuple((build_reward(s), s.weight) for s in specs), name=name)
