"""The ``env`` kind: RL4VLM multi-step episodes in a gym_cards environment (Zhai et al., 2024).

Runtime: :func:`rollout.env_episode.run_env_episodes`; items: integer env seeds; one role, ``policy``.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pydantic import Field

from rollout.engine.base import Engine
from rollout.env_episode import run_env_episodes
from rollout.episode_arrow import EpisodeBatch
from rollout.kinds.base import ItemSource, Reference, RoleConfig, RolloutKind, register_kind
from rollout.types import Reward, Task

HELD_OUT_BASE = 10**9
"""Held-out env seeds start here; training seeds stay below it (``seed * 1_000_003 + i``)."""


@register_kind
class EnvEpisodeConfig(RolloutKind):
    """RL4VLM multi-step episodes in a gym_cards environment."""

    name = "env"
    uses_tasks = False

    env: Literal["numberline", "ezpoints", "points24", "blackjack"] = "numberline"
    """Environment name for ``rollout.envs.make_env``."""
    policy: RoleConfig = RoleConfig(adapter="policy")
    """The acting VLM."""
    max_steps: int | None = Field(None, ge=1)
    """Step cap (truncation); None keeps the environment's default (NumberLine: 10)."""
    image_size: int = Field(300, ge=16)
    """Side of the square observation in pixels (RL4VLM: 300)."""
    cot: bool = True
    """Ask for thoughts before the action (False = RL4VLM's "without CoT" ablation)."""
    invalid_action: Literal["random", "penalty"] = "random"
    """Unparseable reply: play a uniformly random action (RL4VLM) or reward ``invalid_penalty``."""
    invalid_penalty: float = -1.0
    """Step reward of an invalid reply in "penalty" mode (state unchanged)."""
    span_mode: Literal["rl4vlm", "values"] = "rl4vlm"
    """Token spans: "rl4vlm" splits the reply at the "action" key (CoT before, action from it to
    the end, as RL4VLM's code); "values" marks only the thoughts value and the action value."""

    def items(self, source: ItemSource) -> tuple[list[Any], list[Any]]:
        """Env seeds: ``train_size`` training seeds ``seed * 1_000_003 + i`` and ``eval_size``
        held-out ones ``10**9`` above them (disjoint while fewer than ``10**9`` are drawn)."""
        base = source.seed * 1_000_003
        train = [base + i for i in range(max(source.train_size, 1))]
        return train, [HELD_OUT_BASE + base + i for i in range(source.eval_size)]

    def run(self, engines: Mapping[str, Engine], items: Sequence[Any], group_size: int, *,
            reward: Reward | None, step: int, seed: int) -> EpisodeBatch:
        """G episodes per env seed, one batched engine call per environment step."""
        seeds = [_env_seed(x) for x in items]
        return run_env_episodes(engines["policy"], seeds, self, group_size, reward=reward, step=step, seed=seed)

    def sft_examples(self, tasks: Sequence[Task]) -> dict[str, list[Reference]]:
        raise ValueError("train.sft: the built-in warm start covers single_turn and dialogue recipes; "
                         "use learner.sft with your own transcripts for environments")


def _env_seed(x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"env rollouts take integer env seeds, got {type(x).__name__}: {x!r}")
    return int(x)
