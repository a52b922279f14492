"""One environment step driven by a text reply: parse, resolve invalid replies, step.

This is the glue a rollout worker calls once per generated reply (RL4VLM: ``text_projection``
then ``env.step``). It is pure apart from the environment and the ``rng`` it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rollout.envs.base import CardsEnv
from rollout.envs.parser import InvalidActionPolicy, ParsedAction, parse_action


@dataclass(frozen=True)
class TextStep:
    """What one text-driven step did."""

    observation: np.ndarray
    """(H, W, 3) uint8 image after the step."""
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    parsed: ParsedAction
    """The parse of the reply (``parsed.valid`` False for invalid replies)."""
    executed: int | None
    """Action index played: the parsed one, a random one (random mode) or None (penalty mode)."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


def step_with_text(env: CardsEnv, text: str, policy: InvalidActionPolicy,
                   rng: np.random.Generator) -> TextStep:
    """Parse ``text`` for ``env``'s actions and step: the parsed action if valid; else, by
    ``policy``, a uniformly random action drawn from ``rng`` or ``env.step_invalid(penalty)``."""
    parsed = parse_action(text, env.ACTIONS)
    executed = parsed.index
    if executed is None and policy.mode == "random":
        executed = int(rng.integers(len(env.ACTIONS)))
    if executed is None:
        obs, reward, terminated, truncated, info = env.step_invalid(policy.penalty)
    else:
        obs, reward, terminated, truncated, info = env.step(executed)
    return TextStep(obs, reward, terminated, truncated, info, parsed, executed)
