"""The DeepSpeed config dict of a learner: the typed fields' entries, deep-merged with the recipe's
pass-through ``learner.deepspeed`` mapping. Pure (no deepspeed import), so the unit tier tests it.

Keys the typed config owns (:data:`OWNED`) are refused in the pass-through at load, naming the
field to set instead; everything else (``zero_optimization.offload_optimizer``,
``zero_optimization.reduce_bucket_size``, ``communication_data_type``, ...) is merged as given:
mappings merge key by key, any other value replaces the learner's.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from learner.config import LearnerConfig

__all__ = ["OWNED", "ds_config", "typed_ds_config", "deep_merge", "owned_conflicts"]

OWNED: dict[tuple[str, ...], str] = {
    ("zero_optimization", "stage"): "learner.zero_stage",
    ("bf16", "enabled"): "learner.dtype",
    ("fp16", "enabled"): "learner.dtype (fp32 or bf16)",
    ("gradient_clipping",): "learner.optim.grad_clip",
    ("train_micro_batch_size_per_gpu",): "learner.micro_batch_size",
    ("train_batch_size",): "learner.micro_batch_size (the learner derives it from the world size)",
    ("gradient_accumulation_steps",): "learner.algo.minibatches (the learner accumulates per minibatch)",
    ("managed_gradient_accumulation",): "nothing (the learner accumulates gradients itself)",
    ("optimizer",): "learner.optim",
    ("scheduler",): "learner.optim (schedule, warmup_steps, total_steps)",
}
"""DeepSpeed config paths the typed config sets -> the field to use instead."""


def owned_conflicts(extra: Mapping[str, Any]) -> list[str]:
    """One message per owned path that ``extra`` sets, e.g. ``deepspeed.zero_optimization.stage:
    set learner.zero_stage instead``; a non-mapping value on the way to an owned key counts as
    setting it (``bf16 = true`` overrides ``bf16.enabled``)."""
    out = []
    for path, field in OWNED.items():
        node: Any = extra
        for depth, key in enumerate(path):
            if not isinstance(node, Mapping) or key not in node:
                break
            node = node[key]
            if depth == len(path) - 1 or not isinstance(node, Mapping):
                out.append(f"deepspeed.{'.'.join(path[:depth + 1])}: set {field} instead")
                break
    return out


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``: where both hold a mapping the two merge recursively, otherwise
    ``extra``'s value wins. Neither input is modified."""
    out = copy.deepcopy(dict(base))
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def typed_ds_config(config: LearnerConfig, world_size: int) -> dict[str, Any]:
    """The entries the typed config determines (batch-size fields are bookkeeping only here: the
    learner runs its own micro batches and accumulation). ZeRO-3 needs
    ``stage3_param_persistence_threshold: 0`` or the small LoRA matrices are never partitioned."""
    zero: dict[str, Any] = {"stage": config.zero_stage, "overlap_comm": False, "contiguous_gradients": True}
    if config.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.micro_batch_size * world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": config.optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": config.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def ds_config(config: LearnerConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed config dict for ``config`` on ``world_size`` ranks: :func:`typed_ds_config` with
    ``config.deepspeed`` deep-merged on top (owned keys were refused when the config was loaded;
    checked again here for configs built with ``model_construct``)."""
    conflicts = owned_conflicts(config.deepspeed)
    if conflicts:
        raise ValueError("; ".join(conflicts))
    return deep_merge(typed_ds_config(config, world_size), config.deepspeed)
