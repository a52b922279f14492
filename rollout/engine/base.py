"""The engine interface every rollout component talks to.

An engine serves one base model and any number of named LoRA adapters ("reasoner", "observer",
"policy"), each at one version. It is token-in/token-out: requests carry prompt token ids (with one
image placeholder per image, as :class:`~rollout.chat.ChatFormat` writes them) and results carry
the exact prompt the model saw (image placeholders expanded), the sampled ids and their log-probs.

Implementations: :mod:`rollout.engine.vllm_engine` (the only module importing vllm; CPU or CUDA
by configuration) and :mod:`rollout.engine.fake` (deterministic, for unit tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one request (a subset of vLLM's SamplingParams, engine-neutral)."""

    n: int = 1
    """Samples per prompt (GRPO group size for single-turn tasks)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    max_tokens: int = 64
    seed: int | None = None
    """Per-request seed for reproducible sampling; None draws from the engine's RNG."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Sampling.n: must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"Sampling.temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"Sampling.top_p: must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"Sampling.max_tokens: must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class Request:
    """One prompt to complete ``sampling.n`` times."""

    prompt_ids: tuple[int, ...]
    """(T_in,) token ids with one image placeholder token per image (unexpanded)."""
    images: tuple[bytes, ...] = ()
    """Encoded images, in the order of their placeholders."""
    adapter: str | None = None
    """Name of the LoRA adapter to use (its current version), None for the base model."""
    sampling: Sampling = Sampling()


@dataclass(frozen=True)
class Completion:
    """One sample. ``output_ids`` and ``logprobs`` have equal length T_out."""

    prompt_ids: tuple[int, ...]
    """(T_in',) the prompt as the model saw it (image placeholders expanded)."""
    output_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    """(T_out,) log pi(token) under the sampling distribution's model (raw logits, pre-temperature
    unless the engine is configured for processed log-probs; see the engine's docs)."""
    text: str
    finish_reason: str
    """"stop" (stop/eos token generated) or "length" (max_tokens reached)."""
    adapter_version: int
    """Version of the adapter that produced it (0 = base model)."""
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.output_ids) != len(self.logprobs):
            raise ValueError(
                f"Completion: {len(self.output_ids)} output ids but {len(self.logprobs)} logprobs"
            )


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter version on local disk, as published by the learner."""

    name: str
    """Adapter slot: the adapter name of the roles it serves (e.g. "policy", "reasoner", "observer")."""
    version: int
    path: str
    """PEFT directory (adapter_config.json + adapter_model.safetensors)."""
    sha256: str = ""
    """Checksum of adapter_model.safetensors; verified before loading when non-empty. Syncs pass ""
    (the node store verified the artifact once when it materialized it)."""


class AdapterRejected(ValueError):
    """An adapter failed its checks (rank, target modules, checksum, missing files)."""


class Engine(Protocol):
    """What rollout code needs from an inference engine."""

    tokenizer: object
    """The Hugging Face tokenizer of the served base model (encode/decode, special tokens)."""
    image_token_id: int | None
    """Token id of the image placeholder, None for text-only models."""
    max_model_len: int | None
    """Longest prompt + completion the engine serves (prompts counted with image placeholders
    expanded); None if unbounded. A prompt must be shorter than this."""

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Complete every request; result[i] holds ``requests[i].sampling.n`` completions."""
        ...

    def load_adapter(self, ref: AdapterRef) -> None:
        """Check and load ``ref`` under a fresh id; later requests for ``ref.name`` use it.

        Raises :class:`AdapterRejected` if the checks fail; the previous version keeps serving.
        """
        ...

    def adapter_versions(self) -> Mapping[str, int]:
        """Version currently served for each adapter name."""
        ...

    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int], adapter: str | None) -> list[float]:
        """log p(target_ids[i] | prompt_ids + target_ids[:i]) under the adapter's current version.

        Used to prove a weight sync end to end: the same probe scored by the learner and by every
        rollout worker must agree after the sync (vLLM: prompt log-probs of the joined sequence).
        """
        ...
