"""Map a policy's text reply to an environment action (RL4VLM's ``text_projection``).

The rule (docs/anchors.md; RL4VLM ``VLM_PPO/a2c_ppo_acktr/rl_utils.py``): lower-case the reply,
keep the text from the first ``"action":`` on, collect the legal actions that appear in it; exactly
one distinct action -> that action, otherwise the reply is invalid.

Details that differ from a naive ``in`` test, each pinned by a test:

- Longer actions are matched first and cut out before shorter ones are looked for, so "10" does
  not also count as "1" (RL4VLM special-cases "10" the same way); "110" therefore holds "10" and
  "1" and is invalid.
- Only the text after the key is searched (RL4VLM keeps the key itself; no action string of these
  games occurs inside the word "action", so the result is the same).
- Whitespace is allowed between ``"action"`` and the colon. A reply without the key is invalid
  (RL4VLM's ``str.find`` returns -1 there and ends up searching only the last character).

What to do with an invalid reply is :class:`InvalidActionPolicy`'s business (see
``rollout.envs.acting``): RL4VLM takes a uniformly random legal action; a fixed penalty with the
state unchanged is the alternative.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ACTION_KEY = re.compile(r'"action"\s*:')


@dataclass(frozen=True)
class ParsedAction:
    """Result of parsing one reply: ``index`` into the legal actions, or None with a ``reason``."""

    index: int | None
    """Index into the action tuple, None when the reply is invalid."""
    action: str | None
    """The action string matched, None when invalid."""
    reason: str = ""
    """Why the reply is invalid; empty when valid."""

    @property
    def valid(self) -> bool:
        return self.index is not None


def parse_action(text: str, actions: Sequence[str]) -> ParsedAction:
    """Parse ``text`` against the legal ``actions`` by RL4VLM's rule (see the module docstring)."""
    lowered = text.lower()
    key = ACTION_KEY.search(lowered)
    if key is None:
        return ParsedAction(None, None, 'no "action": key')
    tail = lowered[key.end():]
    found: list[str] = []
    for action in sorted(actions, key=len, reverse=True):
        needle = action.lower()
        if needle in tail:
            found.append(action)
            tail = tail.replace(needle, "\0")  # cut out so "10" is not also read as "1"
    if len(found) == 1:
        return ParsedAction(list(actions).index(found[0]), found[0])
    if not found:
        return ParsedAction(None, None, 'no legal action after "action":')
    return ParsedAction(None, None, f"several actions after \"action\": {sorted(found)}")


@dataclass(frozen=True)
class InvalidActionPolicy:
    """What an invalid reply does to the environment."""

    mode: Literal["random", "penalty"] = "random"
    """"random": play a uniformly random legal action (RL4VLM). "penalty": reward ``penalty``,
    state unchanged, the step still counts towards truncation."""
    penalty: float = -1.0
    """Reward of an invalid reply in "penalty" mode."""

    def __post_init__(self) -> None:
        if self.mode not in ("random", "penalty"):
            raise ValueError(f"InvalidActionPolicy.mode: {self.mode!r} not 'random' or 'penalty'")
