"""Left truncation of a ChatML prompt in token space, image-safe.

Multi-turn dialogues and environment episodes grow their context every turn; when it outgrows the
engine's ``max_model_len`` the oldest messages must go. Cutting at an arbitrary token can split an
image's ``<|vision_start|><|image_pad|>...<|vision_end|>`` run, after which the processor finds a
different number of image tokens than images -- the classic "Image features and image tokens do not
match" failure of Qwen-VL models (e.g. huggingface/transformers#33284, vllm-project/vllm#10647). The
images handed to the engine must also shrink with the prompt: :attr:`Truncation.kept_images` says
which of them survive.

Cuts happen at message starts (``<|im_start|>``); an optional kept prefix (the system prompt, the
task statement) stays. Only when no message boundary leaves a prompt that fits, and the caller asks
for it, is a message cut inside -- still never inside a vision run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class ChatTokens:
    """The special token ids truncation respects."""

    message_start: int
    """``<|im_start|>``: a message (turn) begins here."""
    vision_start: int | None = None
    """``<|vision_start|>``; None for text-only models."""
    vision_end: int | None = None
    """``<|vision_end|>``; None for text-only models."""

    @classmethod
    def from_tokenizer(cls, tokenizer: object) -> ChatTokens:
        """Looks the three ids up in a Hugging Face tokenizer (vision ids None if it lacks them)."""
        vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
        return cls(vocab["<|im_start|>"], vocab.get("<|vision_start|>"), vocab.get("<|vision_end|>"))


@dataclass(frozen=True)
class Truncation:
    """The result of :func:`truncate_left`."""

    ids: tuple[int, ...]
    """The truncated prompt: kept prefix + the longest fitting suffix."""
    kept_images: tuple[int, ...]
    """Indices (in prompt order) of the images whose vision runs survive; pass
    ``tuple(images[i] for i in kept_images)`` to the engine with ``ids``."""
    dropped_tokens: int


def vision_runs(ids: Sequence[int], tokens: ChatTokens) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` positions of every vision_start ... vision_end run, in order.

    Raises ValueError on an unterminated or nested run (a prompt that is already broken).
    """
    runs: list[tuple[int, int]] = []
    open_at: int | None = None
    for i, t in enumerate(ids):
        if t == tokens.vision_start:
            if open_at is not None:
                raise ValueError(f"vision run opened at {open_at} is not closed before {i}")
            open_at = i
        elif t == tokens.vision_end:
            if open_at is None:
                raise ValueError(f"vision_end at {i} without a vision_start")
            runs.append((open_at, i))
            open_at = None
    if open_at is not None:
        raise ValueError(f"vision run opened at {open_at} is never closed")
    return runs


def _prefix_end(ids: Sequence[int], starts: list[int], keep_messages: int) -> int:
    """Index where the kept prefix (everything before message number ``keep_messages``) ends."""
    if keep_messages == 0:
        return 0
    return starts[keep_messages] if len(starts) > keep_messages else len(ids)


def _hard_cut(need: int, prefix_end: int, runs: list[tuple[int, int]]) -> int:
    """Smallest cut position >= ``need`` that is not inside a vision run (past its end if it is)."""
    cut = max(need, prefix_end)
    for s, e in runs:
        if s < cut <= e:
            cut = e + 1
    return cut


def truncate_left(
    ids: Sequence[int],
    max_len: int,
    tokens: ChatTokens,
    keep_messages: int = 0,
    allow_mid_message: bool = False,
) -> Truncation:
    """Drop the oldest tokens of ``ids`` so at most ``max_len`` remain, cutting at message starts.

    Keeps the first ``keep_messages`` messages (and anything before the first ``<|im_start|>``), then
    the longest suffix that begins at a message start and fits. If none fits, raises ValueError,
    unless ``allow_mid_message``: then the suffix begins at the first token position that fits and
    does not lie inside a vision run (the result may then be shorter than ``max_len``).
    """
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    runs = vision_runs(ids, tokens) if tokens.vision_start is not None else []
    if len(ids) <= max_len:
        return Truncation(tuple(ids), tuple(range(len(runs))), 0)
    starts = [i for i, t in enumerate(ids) if t == tokens.message_start]
    prefix_end = _prefix_end(ids, starts, keep_messages)
    if prefix_end >= max_len:
        raise ValueError(f"kept prefix of {prefix_end} tokens alone leaves no room within {max_len}")
    need = len(ids) - (max_len - prefix_end)  # smallest cut keeping the total within max_len
    cuts = [c for c in starts if c >= max(need, prefix_end) and c > 0]
    if cuts:
        cut = cuts[0]
    elif allow_mid_message:
        cut = _hard_cut(need, prefix_end, runs)
    else:
        raise ValueError(
            f"no message boundary leaves a prompt of <= {max_len} tokens "
            f"({len(ids)} tokens, kept prefix {prefix_end}); pass allow_mid_message=True or end the episode"
        )
    if cut >= len(ids):
        raise ValueError(f"every cut that fits {max_len} tokens lies inside the last vision run")
    kept = tuple(k for k, (s, _) in enumerate(runs) if s < prefix_end or s >= cut)
    return Truncation(tuple(ids[:prefix_end]) + tuple(ids[cut:]), kept, cut - prefix_end)
