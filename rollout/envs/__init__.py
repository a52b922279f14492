"""RL4VLM's gym_cards environments, their prompts, the action parser and reply spans.

``make_env("numberline" | "ezpoints" | "points24" | "blackjack", **kwargs)`` builds an environment;
``build_prompt`` writes its task prompt; ``step_with_text`` parses a reply and steps;
``find_reply_spans`` locates the thoughts and action in a reply for lambda-scaled log-probs.
"""

from __future__ import annotations

from typing import Any

from rollout.envs.acting import TextStep, step_with_text
from rollout.envs.base import CardsEnv
from rollout.envs.blackjack import Blackjack
from rollout.envs.numberline import NumberLine
from rollout.envs.parser import InvalidActionPolicy, ParsedAction, parse_action
from rollout.envs.points import EZPoints, Points24
from rollout.envs.prompts import build_prompt
from rollout.envs.render import Card
from rollout.envs.spans import CharSpan, ReplySpans, find_reply_spans

ENVS: dict[str, type[CardsEnv]] = {
    "numberline": NumberLine,
    "ezpoints": EZPoints,
    "points24": Points24,
    "blackjack": Blackjack,
}


def make_env(name: str, **kwargs: Any) -> CardsEnv:
    """Build the environment registered as ``name``, passing ``kwargs`` (e.g. image_size)."""
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; known: {sorted(ENVS)}")
    return ENVS[name](**kwargs)


__all__ = [
    "ENVS", "Blackjack", "Card", "CardsEnv", "CharSpan", "EZPoints", "InvalidActionPolicy",
    "NumberLine", "ParsedAction", "Points24", "ReplySpans", "TextStep", "build_prompt",
    "find_reply_spans", "make_env", "parse_action", "step_with_text",
]
