"""Text-matching rewards: normalised exact match (SQuAD) and a regex format reward."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from rewards.base import DEFAULT_MAX_CHARS, RewardResult, clean_text, final_text, leaf, register_reward, zero
from rollout.types import Episode, Task

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower-case, drop punctuation, drop articles, squash spaces.

    Same order as the official evaluation script (Rajpurkar et al. 2016, ``evaluate-v1.1.py``).
    """
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def choice_aliases(choices: tuple[str, ...], index: int, accept_index: bool) -> set[str]:
    """Normalised strings that select ``choices[index]``: its text, its letter ("b", "b text"),
    and, if ``accept_index`` and no choice text is itself a number, its 0-based index ("1").

    The letter is A for ``choices[0]`` (ScienceQA/IMMO prompts list options as "(A) ...").
    """
    text = normalize_answer(choices[index])
    letter = string.ascii_lowercase[index] if index < 26 else ""
    aliases = {text, letter, f"{letter} {text}".strip()} - {""}
    numeric = any(normalize_answer(c).isdigit() for c in choices)
    if accept_index and not numeric:
        aliases.add(str(index))
    return aliases


@register_reward("exact_match")
@dataclass(frozen=True)
class ExactMatch:
    """1 if ``normalize_answer(episode.answer) == normalize_answer(task.answer)``, else 0.

    For multiple-choice tasks (``task.choices`` set) the choice letter ("B", "(B)", "B. text") and,
    optionally, its 0-based index also count. Grades ``episode.answer`` (the extracted final answer).
    """

    name: str = "exact_match"
    accept_index: bool = True
    max_chars: int = DEFAULT_MAX_CHARS

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        text, problem = clean_text(episode.answer, self.max_chars)
        if problem:
            return zero(self.name, problem.replace("output", "answer"))
        pred = normalize_answer(text)
        if not pred:
            return zero(self.name, "answer is only punctuation/articles")
        if task.choices:
            targets = choice_aliases(task.choices, task.choices.index(task.answer), self.accept_index)
        else:
            targets = {normalize_answer(task.answer)}
        if pred in targets:
            return leaf(self.name, 1.0)
        return zero(self.name, f"wrong answer {pred[:80]!r}")


@register_reward("format")
@dataclass(frozen=True)
class FormatReward:
    """1 if the last turn's text matches ``pattern`` (``re.fullmatch`` or ``re.search``), else 0.

    ``flags`` is a string of ``re`` flag letters, e.g. "s" for DOTALL, "i" for IGNORECASE, so the
    reward can be configured from YAML/JSON.
    """

    pattern: str = r"<think>(?:(?!</think>).)*</think>\s*<answer>(?:(?!</answer>).)*</answer>"
    """Default: one think block, then one answer block. Tempered tokens, not ``.*?``: the lazy form
    backtracks quadratically on long near-miss outputs (0.7 s at 50k chars)."""
    name: str = "format"
    full_match: bool = True
    flags: str = "s"
    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        re.compile(self.pattern, _flags(self.flags))  # fail at build time on a bad regex

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        text, problem = clean_text(final_text(episode), self.max_chars)
        if problem:
            return zero(self.name, problem)
        regex = re.compile(self.pattern, _flags(self.flags))
        match = regex.fullmatch(text) if self.full_match else regex.search(text)
        if match is None:
            how = "match" if self.full_match else "contain"
            return zero(self.name, f"output does not {how} format {self.pattern!r}")
        return leaf(self.name, 1.0)


def _flags(letters: str) -> int:
    """``"si"`` -> ``re.S | re.I``; unknown letters raise ValueError."""
    table = {"s": re.S, "i": re.I, "m": re.M, "x": re.X, "a": re.A}
    unknown = set(letters) - set(table)
    if unknown:
        raise ValueError(f"FormatReward.flags: unknown regex flags {sorted(unknown)}; use {sorted(table)}")
    out = 0
    for c in letters:
        out |= table[c]
    return out
