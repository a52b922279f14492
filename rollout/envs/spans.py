"""Character spans of the chain of thought and of the action in a JSON-ish reply.

RL4VLM scores an action as ``lambda * log p(CoT tokens) + log p(action tokens)``. Its code splits
the reply at the ``"action":`` key: every token before it is CoT, every token from it on is action
(``llava_interface/interface.py``). The learner maps character offsets to token offsets with the
tokenizer's offset mapping, so this module returns character offsets only, all half-open
``[start, end)`` into the reply string exactly as generated:

- ``thoughts``: the value of the first ``"thoughts"`` key: inside the quotes for a string value,
  inside the brackets for a ``{...}``/``[...]`` value (RL4VLM's prompts show braces), else up to the
  next comma, newline or ``}``. An unterminated value (generation cut off) runs to the end.
- ``action``: the value of the first ``"action"`` key, by the same rule (the key the parser uses).
- ``action_key``: offset of that key's opening quote; ``rl4vlm_regions`` splits there.

Keys are matched case-insensitively, as the parser lower-cases the reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CLOSERS = {"{": "}", "[": "]"}


@dataclass(frozen=True)
class CharSpan:
    """Half-open character range ``[start, end)`` in the reply text."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"CharSpan: need 0 <= start <= end, got [{self.start}, {self.end})")

    def of(self, text: str) -> str:
        return text[self.start:self.end]


@dataclass(frozen=True)
class ReplySpans:
    """Where the thoughts and the action sit in one reply (None when the key is absent)."""

    length: int
    """len(reply)."""
    thoughts: CharSpan | None
    action: CharSpan | None
    action_key: int | None
    """Offset of the opening quote of the first ``"action"`` key."""

    def rl4vlm_regions(self) -> tuple[CharSpan, CharSpan] | None:
        """(CoT, action) as RL4VLM splits them: ``[0, action_key)`` and ``[action_key, length)``."""
        if self.action_key is None:
            return None
        return CharSpan(0, self.action_key), CharSpan(self.action_key, self.length)


def _key(name: str) -> re.Pattern[str]:
    return re.compile(rf'"{re.escape(name)}"\s*:\s*', re.IGNORECASE)


def _string_end(text: str, start: int) -> int:
    """Index of the closing unescaped quote of a string whose content starts at ``start``."""
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return len(text)


def _bracket_end(text: str, start: int, opener: str) -> int:
    """Index of the bracket closing ``opener`` whose content starts at ``start`` (nesting-aware)."""
    depth = 1
    for i in range(start, len(text)):
        depth += (text[i] == opener) - (text[i] == _CLOSERS[opener])
        if depth == 0:
            return i
    return len(text)


def value_span(text: str, name: str) -> tuple[CharSpan, int] | None:
    """Span of the value of the first ``"name":`` key and the key's offset, None if absent."""
    match = _key(name).search(text)
    if match is None:
        return None
    p = match.end()
    if p < len(text) and text[p] == '"':
        return CharSpan(p + 1, _string_end(text, p + 1)), match.start()
    if p < len(text) and text[p] in _CLOSERS:
        return CharSpan(p + 1, _bracket_end(text, p + 1, text[p])), match.start()
    end = re.compile(r"[,\n}]").search(text, p)
    stop = end.start() if end else len(text)
    return CharSpan(p, max(p, len(text[:stop].rstrip()))), match.start()


def find_reply_spans(text: str) -> ReplySpans:
    """Thoughts and action value spans and the action key offset of ``text`` (module docstring)."""
    thoughts = value_span(text, "thoughts")
    action = value_span(text, "action")
    return ReplySpans(
        length=len(text),
        thoughts=thoughts[0] if thoughts else None,
        action=action[0] if action else None,
        action_key=action[1] if action else None,
    )
