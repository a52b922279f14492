"""RL4VLM-style task prompts for the gym_cards environments.

Each prompt describes the game, lists the legal actions (taken from the environment class, so the
two cannot drift apart) and asks for a JSON reply (RL4VLM ``rl_utils.get_prompt``):

- NumberLine: ``{"current number", "target number", "thoughts", "action"}``
- Blackjack: ``{"thoughts", "action"}``
- EZPoints / Points24: ``{"cards", "current formula", "thoughts", "action"}``; the points prompts
  also state the current formula in words, as RL4VLM's do, read from ``info["formula_text"]``.

With ``cot=False`` only the ``"action"`` key is requested (the paper's "without CoT" ablation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollout.envs.blackjack import Blackjack
from rollout.envs.numberline import NumberLine
from rollout.envs.points import EZPoints, Points24


def _choices(actions: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{a}'" for a in actions) + "]"


def _json(fields: list[tuple[str, str]], actions: tuple[str, ...], cot: bool) -> str:
    """The JSON template: the CoT fields (when ``cot``) then the action field."""
    action = '"one of the legal actions"'
    if len(actions) <= 2:
        action = " or ".join(f'"{a}"' for a in actions)
    lines = [f' "{k}": {v},' for k, v in fields] if cot else []
    return "Your response should be a valid JSON object in the following format:\n{\n" + "\n".join(
        lines + [f' "action": {action}']) + "\n}"


def numberline_prompt(info: Mapping[str, Any] | None = None, cot: bool = True) -> str:
    """NumberLine prompt; ``info`` is unused (the state is only in the image)."""
    game = ("You are playing a game called number line. The image shows a target number and a "
            "current number. Your goal is to move the current number to the target by adding or "
            "subtracting one. Choose '+' to add one, '-' to subtract one. "
            f"Legal actions: {_choices(NumberLine.ACTIONS)}.\n")
    fields = [("current number", '"x"'), ("target number", '"x"'),
              ("thoughts", '"first read out the current and target numbers, then think carefully '
                           'about which action moves the current number closer to the target"')]
    return game + _json(fields, NumberLine.ACTIONS, cot)


def blackjack_prompt(info: Mapping[str, Any] | None = None, cot: bool = True) -> str:
    """Blackjack prompt; ``info`` is unused (the state is only in the image)."""
    game = ("You are a blackjack player. The image shows the dealer's cards in the top row (one "
            "face down) and your cards in the bottom row. J, Q and K count 10; an ace counts 11 "
            "or 1. "
            f"Legal actions: {_choices(Blackjack.ACTIONS)}.\n")
    fields = [("thoughts", '"first describe your total points and the dealer\'s visible points, '
                           'then think about which action to choose"')]
    return game + _json(fields, Blackjack.ACTIONS, cot)


def _points_prompt(n_cards: int, target: int, actions: tuple[str, ...],
                   info: Mapping[str, Any] | None, cot: bool) -> str:
    formula = str((info or {}).get("formula_text", ""))
    names = ["x", "y", "z", "w"][:n_cards]
    game = (f"You are an expert card game player. The image shows {n_cards} cards. "
            "J, Q and K count as 10. Each step you append one number or operator to the current "
            f"formula; your goal is a formula that uses every card's number exactly once and "
            f"evaluates to {target}. Choose '=' when the formula is complete. "
            f"The current formula is: '{formula}'. Legal actions: {_choices(actions)}.\n")
    fields = [("cards", "[" + ", ".join(names) + "]"),
              ("current formula", f'"{formula}"'),
              ("thoughts", f'"first check whether the current formula is complete and equals '
                           f'{target}; if so choose \'=\', otherwise choose the number or operator '
                           f'to append"')]
    return game + _json(fields, actions, cot)


def ezpoints_prompt(info: Mapping[str, Any] | None = None, cot: bool = True) -> str:
    """EZPoints prompt with the current formula from ``info["formula_text"]``."""
    return _points_prompt(EZPoints.N_CARDS, EZPoints.TARGET, EZPoints.ACTIONS, info, cot)


def points24_prompt(info: Mapping[str, Any] | None = None, cot: bool = True) -> str:
    """Points24 prompt with the current formula from ``info["formula_text"]``."""
    return _points_prompt(Points24.N_CARDS, Points24.TARGET, Points24.ACTIONS, info, cot)


PROMPTS = {
    "numberline": numberline_prompt,
    "ezpoints": ezpoints_prompt,
    "points24": points24_prompt,
    "blackjack": blackjack_prompt,
}


def build_prompt(env_name: str, info: Mapping[str, Any] | None = None, cot: bool = True) -> str:
    """The task prompt of environment ``env_name`` for the state described by ``info``."""
    if env_name not in PROMPTS:
        raise ValueError(f"unknown environment {env_name!r}; known: {sorted(PROMPTS)}")
    return PROMPTS[env_name](info, cot)
