"""A deterministic engine for unit tests (no model, no vllm).

Its tokenizer is character-level over printable ASCII plus the ChatML/vision special tokens, so
tests can read ids back as text. What it "generates" is decided by a script: a function of the
decoded prompt, the adapter name and its version, returning the reply text. Log-probs are
``-log(vocab_size)`` for every token (a uniform policy), which tests can compute by hand.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Mapping, Sequence

from rollout.chat import expand_image_pads
from rollout.engine.base import AdapterRef, AdapterRejected, Completion, Request

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
)

Script = Callable[[str, str | None, int, int], str]
"""(decoded prompt, adapter name or None, adapter version, sample index) -> reply text."""


class CharTokenizer:
    """Character-level tokenizer with the special tokens first (ids 0..5), then ASCII 32..126 and \\n."""

    def __init__(self) -> None:
        self.vocab = list(SPECIAL_TOKENS) + [chr(c) for c in range(32, 127)] + ["\n"]
        self._ids = {t: i for i, t in enumerate(self.vocab)}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
        self.eos_token_id = self._ids["<|im_end|>"]
        self.pad_token_id = self._ids["<|endoftext|>"]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self._ids and piece in SPECIAL_TOKENS:
                ids.append(self._ids[piece])
            else:
                ids.extend(self._ids.get(ch, self._ids["?"]) for ch in piece)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        toks = (self.vocab[i] for i in ids)
        return "".join(t for t in toks if not (skip_special_tokens and t in SPECIAL_TOKENS))

    def convert_tokens_to_ids(self, token: str) -> int:
        return self._ids[token]


class FakeEngine:
    """Implements :class:`rollout.engine.base.Engine` with a scripted reply function.

    ``image_tokens`` is how many placeholder ids one image expands to (like a real VLM's processor).
    """

    def __init__(self, script: Script, image_tokens: int = 4, max_rank: int = 64,
                 max_model_len: int | None = None) -> None:
        self.tokenizer = CharTokenizer()
        self.max_model_len = max_model_len
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.script = script
        self.image_tokens = image_tokens
        self.max_rank = max_rank
        self._versions: dict[str, int] = {}
        self.served: list[tuple[str | None, int]] = []
        """Every (adapter, version) a completion was produced with, in order (for tests)."""

    def adapter_versions(self) -> Mapping[str, int]:
        return dict(self._versions)

    def load_adapter(self, ref: AdapterRef, rank: int = 8) -> None:
        if rank > self.max_rank:
            raise AdapterRejected(f"adapter {ref.name} v{ref.version}: rank {rank} > max {self.max_rank}")
        if ref.version <= self._versions.get(ref.name, 0):
            raise AdapterRejected(
                f"adapter {ref.name}: version {ref.version} is not newer than {self._versions[ref.name]}"
            )
        self._versions[ref.name] = ref.version

    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int], adapter: str | None) -> list[float]:
        """Uniform policy shifted by the adapter version, so a sync visibly changes the probe."""
        version = self._versions.get(adapter, 0) if adapter else 0
        return [-math.log(len(self.tokenizer)) - 0.01 * version] * len(target_ids)

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        return [self._complete(r) for r in requests]

    def _expand_images(self, prompt_ids: Sequence[int], num_images: int) -> tuple[int, ...]:
        pads = sum(1 for t in prompt_ids if t == self.image_token_id)
        if pads != num_images:
            raise ValueError(f"prompt has {pads} image placeholders but {num_images} images were given")
        return tuple(expand_image_pads(prompt_ids, self.image_token_id, self.image_tokens))

    def _complete(self, req: Request) -> list[Completion]:
        if req.adapter is not None and req.adapter not in self._versions:
            raise KeyError(f"adapter {req.adapter!r} is not loaded (loaded: {sorted(self._versions)})")
        version = self._versions.get(req.adapter, 0) if req.adapter else 0
        prompt = self._expand_images(req.prompt_ids, len(req.images))
        room = req.sampling.max_tokens
        if self.max_model_len is not None:  # as vLLM: refuse a prompt that fills the model length
            if len(prompt) >= self.max_model_len:
                raise ValueError(f"prompt (length {len(prompt)}) is longer than the maximum model length "
                                 f"of {self.max_model_len}")
            room = min(room, self.max_model_len - len(prompt))
        prompt_text = self.tokenizer.decode(req.prompt_ids)
        lp = -math.log(len(self.tokenizer))
        out = []
        for k in range(req.sampling.n):
            reply = self.script(prompt_text, req.adapter, version, k)
            ids = self.tokenizer.encode(reply) + [self.tokenizer.eos_token_id]
            finish = "stop" if len(ids) <= room else "length"
            ids = ids[:room]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            self.served.append((req.adapter, version))
            out.append(Completion(prompt, tuple(ids), (lp,) * len(ids), text, finish, version))
        return out
