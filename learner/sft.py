"""Supervised fine-tuning data: transcripts -> token rows whose loss covers assistant tokens only.

IMMO's first stage fine-tunes both roles on dialogue transcripts before PPO. Input is Parquet with
either ``prompt`` / ``response`` string columns (optional ``system``) or a ``messages`` column
(list of ``{role, content}``); an optional ``image`` column holds encoded image bytes, shown in the
first user message.

Formatting is ChatML in token space with the same :class:`rollout.chat.ChatFormat` the rollout uses,
so SFT trains exactly the token layout the sampler later continues: per assistant message the
header ``<|im_start|>assistant\\n`` is context, the reply tokens and its ``<|im_end|>`` are the
loss, the trailing newline is context. System and user messages are never in the loss.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow.parquet as pq
import torch

from learner.batch import take_rows
from rollout.chat import ChatFormat, expand_image_pads

__all__ = ["SFTExample", "SFTBatch", "read_sft_parquet", "tokenize_examples", "sft_loss_sums"]


@dataclass(frozen=True)
class SFTExample:
    """One transcript: ``(role, text)`` messages in order, roles "system", "user", "assistant"."""

    messages: tuple[tuple[str, str], ...]
    image: bytes | None = None

    def __post_init__(self) -> None:
        bad = [r for r, _ in self.messages if r not in ("system", "user", "assistant")]
        if bad:
            raise ValueError(f"SFTExample: unknown roles {bad}")
        if not any(r == "assistant" for r, _ in self.messages):
            raise ValueError("SFTExample: no assistant message (nothing to learn)")


@dataclass(frozen=True)
class SFTBatch:
    """Padded SFT rows (B, T); images named by hash as in an EpisodeBatch."""

    input_ids: torch.Tensor
    """(B, T) int64, right-padded."""
    attention_mask: torch.Tensor
    """(B, T) bool."""
    loss_mask: torch.Tensor
    """(B, T) bool, True on assistant reply tokens (and their ``<|im_end|>``)."""
    prompt_lens: torch.Tensor
    """(B,) int64 position of each row's first loss token (logits are needed from there on)."""
    image_hashes: tuple[tuple[str, ...], ...]
    """(B,) image hashes per row."""
    images: Mapping[str, bytes]
    """hash -> encoded bytes."""

    def __post_init__(self) -> None:
        B, T = self.input_ids.shape
        for n in ("attention_mask", "loss_mask"):
            if tuple(getattr(self, n).shape) != (B, T):
                raise ValueError(f"SFTBatch.{n}: shape {tuple(getattr(self, n).shape)} != ({B}, {T})")
        if tuple(self.prompt_lens.shape) != (B,) or len(self.image_hashes) != B:
            raise ValueError("SFTBatch: prompt_lens / image_hashes must have one entry per row")
        if bool((self.loss_mask & ~self.attention_mask).any()):
            raise ValueError("SFTBatch.loss_mask: set on padding")

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Sequence[int]) -> SFTBatch:
        idx = torch.as_tensor(list(rows), dtype=torch.int64)
        T = int(self.attention_mask[idx].sum(-1).max()) if len(idx) else 1
        return SFTBatch(take_rows(self.input_ids, idx, T), take_rows(self.attention_mask, idx, T),
                        take_rows(self.loss_mask, idx, T), self.prompt_lens[idx],
                        tuple(self.image_hashes[i] for i in idx.tolist()), self.images)


def _messages_of_row(row: dict, role_map: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if row.get("messages") is not None:
        return tuple((role_map.get(m["role"], m["role"]), m["content"]) for m in row["messages"])
    if row.get("prompt") is None or row.get("response") is None:
        raise ValueError("SFT rows need a 'messages' column or 'prompt' and 'response' columns")
    system = ((("system", row["system"]),) if row.get("system") else ())
    return system + (("user", row["prompt"]), ("assistant", row["response"]))


def read_sft_parquet(path: str | Path, role_map: Mapping[str, str] | None = None) -> list[SFTExample]:
    """Every row of a Parquet transcript file as an :class:`SFTExample`."""
    role_map = role_map or {}
    rows = pq.read_table(path).to_pylist()
    return [SFTExample(_messages_of_row(r, role_map), r.get("image")) for r in rows]


def _example_ids(ex: SFTExample, fmt: ChatFormat, image_tokens: int) -> tuple[list[int], list[bool]]:
    """Token ids and loss flags of one transcript; the first user message carries the image."""
    ids: list[int] = []
    loss: list[bool] = []
    image_pending = ex.image is not None
    for role, text in ex.messages:
        if role == "assistant":
            parts = [(fmt.generation_prompt("assistant"), False), (fmt._encode(text + "<|im_end|>"), True),
                     (fmt._encode("\n"), False)]
        else:
            n_img = 1 if (image_pending and role == "user") else 0
            image_pending &= not n_img
            parts = [(expand_image_pads(fmt.message(role, text, n_img), fmt.image_pad_id, image_tokens), False)]
        for part, flag in parts:
            ids += part
            loss += [flag] * len(part)
    return ids, loss


def tokenize_examples(examples: Sequence[SFTExample], tokenizer, pad_id: int, max_length: int,
                      image_tokens=None) -> SFTBatch:
    """Pad the examples into one :class:`SFTBatch`. ``image_tokens(bytes) -> int`` gives an image's
    placeholder count (the model's image processor); required when an example has an image."""
    fmt = ChatFormat(tokenizer)
    rows, hashes, images = [], [], {}
    for ex in examples:
        n = image_tokens(ex.image) if ex.image is not None else 0
        ids, loss = _example_ids(ex, fmt, n)
        if len(ids) > max_length:
            raise ValueError(f"SFT example of {len(ids)} tokens exceeds max_length {max_length}")
        h = hashlib.sha256(ex.image).hexdigest() if ex.image is not None else None
        if h:
            images[h] = ex.image
        rows.append((ids, loss))
        hashes.append((h,) if h else ())
    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.int64)
    attn = torch.zeros((len(rows), T), dtype=torch.bool)
    lmask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (ids, loss) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attn[i, : len(ids)] = True
        lmask[i, : len(ids)] = torch.tensor(loss)
    first = lmask.to(torch.int64).argmax(-1)
    return SFTBatch(input_ids, attn, lmask, first, tuple(hashes), images)


def sft_loss_sums(logp: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(sum of ``-logp`` over loss tokens, number of loss tokens) of one micro batch; the caller
    divides by the minibatch's token count (token-mean NLL over the whole batch and all ranks)."""
    return -(logp * loss_mask.to(logp.dtype)).sum(), float(loss_mask.sum())
