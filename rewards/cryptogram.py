"""r1_vlm cryptogram (message decoding) rewards, each weight 1.0 in the original run.

Source: Groundlight r1_vlm, ``message_decoding_sequences_env.py`` (``format_reward_func``,
``chars_intermediate_reward_func``, ``correctness_reward_func``,
``correctness_intermediate_reward_func``). Expected output::

    <think> ... <chars> c a t _ d o g </chars> ... </think>
    <answer>cat dog</answer>

Task contract: ``task.answer`` is the plain message ("cat dog"); ``task.metadata["coded"]`` is the
coded message written the same way as ``<chars>`` ("x q z _ d o g": characters separated by spaces,
"_" for a space). All four rewards grade the text of the episode's last turn.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from rewards.base import DEFAULT_MAX_CHARS, RewardResult, clean_text, final_text, leaf, register_reward, zero
from rollout.types import Episode, Task

CODED_KEY = "coded"
"""``Task.metadata`` key holding the coded message in spaced form."""

# One <think> block holding exactly one <chars> block, then (after one newline) the <answer> block
# ending the text. Stricter than r1_vlm's regex, whose first lazy group lets a second <chars> (or a
# stray </think>) slip through despite its "exactly one" comment; the anchors doc asks for one each.
_NO_TAG = r"(?:(?!</?think>|</?chars>|</?answer>).)*?"
FORMAT_RE = re.compile(
    rf"<think>{_NO_TAG}<chars>{_NO_TAG}</chars>{_NO_TAG}</think>\n<answer>{_NO_TAG}</answer>$",
    re.DOTALL,
)
_ANSWER_CHARS = set(string.ascii_lowercase + " ")


def spaced(message: str) -> str:
    """Plain message -> ``<chars>`` form: "cat dog" -> "c a t _ d o g" (r1_vlm ``format_chars``)."""
    return " _ ".join(" ".join(word) for word in message.split())


def extract_tag(text: str, tag: str) -> str | None:
    """Stripped content of the first ``<tag>...</tag>`` block, None if absent (verifiers XMLParser)."""
    m = re.search(rf"<{tag}>\s*(.*?)\s*</{tag}>", text, re.DOTALL)
    return None if m is None else m.group(1)


def similarity(a: str, b: str) -> float:
    """``1 - Levenshtein(a, b) / max(len(a), len(b))``, clipped to [0, 1]; 1 for two empty strings."""
    return max(0.0, 1.0 - Levenshtein.normalized_distance(a, b))


def decoding_score(chars: str | None, target: str, coded: str) -> tuple[float, str]:
    """r1_vlm decoding reward of a ``<chars>`` string against ``target`` (spaced plain message).

    0 if missing, or if strictly closer (edit distance) to the coded message than to the target;
    otherwise ``1 - Levenshtein(chars, target) / max(len(chars), len(target))``.
    """
    if chars is None:
        return 0.0, "no <chars> block"
    chars = chars.strip()
    to_target, to_coded = Levenshtein.distance(chars, target), Levenshtein.distance(chars, coded)
    if to_coded < to_target:
        return 0.0, f"<chars> closer to the coded text ({to_coded}) than to the target ({to_target})"
    score = similarity(chars, target)
    return score, "" if score == 1.0 else f"<chars> off by {to_target} edits"


@dataclass(frozen=True)
class _CryptogramReward:
    """Shared parsing: cleaned last-turn text, reference messages from the task."""

    name: str
    max_chars: int = DEFAULT_MAX_CHARS

    def _refs(self, task: Task) -> tuple[str, str, str]:
        """(plain, spaced target, coded) from the task; raises ValueError on a malformed task."""
        coded = task.metadata.get(CODED_KEY)
        if coded is None:
            raise ValueError(f"{self.name}: task {task.task_id} has no metadata[{CODED_KEY!r}]")
        return task.answer.strip(), spaced(task.answer), coded.strip()

    def _decoding(self, task: Task, text: str) -> tuple[float, str]:
        _, target, coded = self._refs(task)
        return decoding_score(extract_tag(text, "chars"), target, coded)

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        self._refs(task)
        text, problem = clean_text(final_text(episode), self.max_chars)
        if problem:
            return zero(self.name, problem)
        return self.grade(task, text)

    def grade(self, task: Task, text: str) -> RewardResult:
        raise NotImplementedError


@register_reward("cryptogram_format")
@dataclass(frozen=True)
class CryptogramFormat(_CryptogramReward):
    """1 iff the whole output matches :data:`FORMAT_RE` (after removing ``strip_prefix``)."""

    name: str = "cryptogram_format"
    strip_prefix: str = ""
    """r1_vlm removes its assistant prefill "Let me solve this step by step.\\n" first."""

    def grade(self, task: Task, text: str) -> RewardResult:
        if FORMAT_RE.match(text.removeprefix(self.strip_prefix)) is None:
            return zero(self.name, "output is not <think>..<chars>..</chars>..</think>\\n<answer>..</answer>")
        return leaf(self.name, 1.0)


@register_reward("cryptogram_decoding")
@dataclass(frozen=True)
class CryptogramDecoding(_CryptogramReward):
    """:func:`decoding_score` of the first ``<chars>`` block."""

    name: str = "cryptogram_decoding"

    def grade(self, task: Task, text: str) -> RewardResult:
        score, reason = self._decoding(task, text)
        return leaf(self.name, score, reason)


@register_reward("cryptogram_correctness")
@dataclass(frozen=True)
class CryptogramCorrectness(_CryptogramReward):
    """1 iff the stripped ``<answer>`` equals the plain message AND decoding == 1."""

    name: str = "cryptogram_correctness"

    def grade(self, task: Task, text: str) -> RewardResult:
        decoding, reason = self._decoding(task, text)
        if decoding != 1.0:
            return zero(self.name, f"decoding not exact: {reason}")
        answer = extract_tag(text, "answer")
        if answer is None:
            return zero(self.name, "no <answer> block")
        if answer != task.answer.strip():
            return zero(self.name, f"answer {answer[:80]!r} != message")
        return leaf(self.name, 1.0)


@register_reward("cryptogram_partial")
@dataclass(frozen=True)
class CryptogramPartialCorrectness(_CryptogramReward):
    """``1 - normalized Levenshtein(answer, message)`` when decoding == 1, else 0.

    With ``r1_vlm_gates`` (default) also 0, as in r1_vlm, when the answer uses characters other than
    a-z and space, or is no closer to the message than the spaced ``<chars>`` form is (so copying
    the chars block earns nothing).
    """

    name: str = "cryptogram_partial"
    r1_vlm_gates: bool = True

    def grade(self, task: Task, text: str) -> RewardResult:
        decoding, reason = self._decoding(task, text)
        if decoding != 1.0:
            return zero(self.name, f"decoding not exact: {reason}")
        answer = extract_tag(text, "answer")
        if answer is None:
            return zero(self.name, "no <answer> block")
        plain, target, _ = self._refs(task)
        if self.r1_vlm_gates:
            if not set(answer) <= _ANSWER_CHARS:
                return zero(self.name, "answer has characters other than a-z and space")
            if Levenshtein.distance(target, plain) <= Levenshtein.distance(answer, plain):
                return zero(self.name, "answer no closer to the message than its spaced form")
        score = similarity(answer, plain)
        return leaf(self.name, score, "" if score == 1.0 else "answer differs from the message")
