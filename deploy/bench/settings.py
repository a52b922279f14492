"""The work every benchmark does, in one frozen record per size ("full": the committed run; "quick":
a smoke run of the same code paths in a few minutes), and the duet-rl recipe both systems share.

The shared GRPO work (issue 6, item 1): the embedded default recipe's task and reward (easy-VQA colour
questions on easy-VQA's 64x64 images scaled to 112x112 at load, 16 image tokens; exact match of the
whole reply), the tiny Qwen2-VL built offline, LoRA r=16 / alpha=32 on the language model's
attention and MLP projections, AdamW at a constant 2e-3, no KL, no entropy bonus, one optimizer
step per batch (one epoch, one minibatch, so pi_old is not recomputed: TRL with
``num_iterations=1`` does not either; duet-rl takes the sampler's log-probs), temperature 1, and the
same system prompt TRL's chat template writes by default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("DUET_MODELS", ROOT / ".cache" / "models"))
MODEL = "tiny-qwen2-vl"
SYSTEM_PROMPT = "You are a helpful assistant."
"""The system message Qwen2-VL's chat template adds when a conversation has none (TRL's prompts)."""


def model_dirs(recipe) -> dict[str, Path]:
    """Every role's base model directory (``MODELS_DIR``), a built-in one built first if it is not
    yet: the benchmark builds what it needs (as the tests do); ``duet train`` itself never builds."""
    from deploy.offline_models import resolve_model

    return {role: resolve_model(rt.model, MODELS_DIR) for role, rt in sorted(recipe.roles.items())}


@dataclass(frozen=True)
class E2ESettings:
    """Both GRPO loops: ``tasks_per_step`` x ``group_size`` samples per optimizer step."""

    tasks_per_step: int = 4
    group_size: int = 8
    max_tokens: int = 8
    """Completion length (tokens) of every sample."""
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 2e-3
    warmup_steps: int = 2
    """Steps run first and left out of every figure (first requests, allocator, caches)."""
    steps: int = 8
    """Measured steps."""

    @property
    def samples_per_step(self) -> int:
        return self.tasks_per_step * self.group_size


@dataclass(frozen=True)
class RolloutSettings:
    """Generation only: ``prompts`` easy-VQA prompts x ``group_size`` samples per call."""

    prompts: int = 8
    group_size: int = 8
    max_tokens: int = 32
    warmup_calls: int = 1
    calls: int = 3
    models: tuple[str, ...] = (MODEL, "small-qwen2-vl")
    """Built-in models measured (the E2E model first; a larger one shows how the ratio moves)."""


@dataclass(frozen=True)
class SyncSettings:
    """Adapter syncs and full-weight reloads to 1, 2 and 4 rollout workers on 2 nodes."""

    worker_counts: tuple[int, ...] = (1, 2, 4)
    syncs: int = 20
    warmup_syncs: int = 2
    reloads: int = 20
    kv_cache_gib: float = 0.25
    large_model: str = "smollm2-135m"
    """A real-sized model for the one-engine comparison (adapter load vs full reload), "" to skip."""
    large_loads: int = 20
    large_reloads: int = 6


@dataclass(frozen=True)
class OverlapSettings:
    """Sync-mode then async-mode driver steps on one running system."""

    warmup_steps: int = 2
    steps: int = 6


@dataclass(frozen=True)
class BenchSettings:
    e2e: E2ESettings = E2ESettings()
    rollout: RolloutSettings = RolloutSettings()
    sync: SyncSettings = SyncSettings()
    overlap: OverlapSettings = OverlapSettings()


FULL = BenchSettings()
QUICK = BenchSettings(
    e2e=E2ESettings(steps=3, warmup_steps=1),
    rollout=RolloutSettings(prompts=4, calls=2, max_tokens=16, models=(MODEL,)),
    sync=SyncSettings(worker_counts=(1, 2), syncs=4, warmup_syncs=1, reloads=4, large_loads=3, large_reloads=2),
    overlap=OverlapSettings(warmup_steps=1, steps=3),
)


def settings(quick: bool) -> BenchSettings:
    return QUICK if quick else FULL


def recipe_overrides(e2e: E2ESettings, name: str, out_dir: Path, steps: int, mode: str = "sync") -> tuple[str, ...]:
    """``--set`` overrides of the embedded default recipe that give the shared GRPO work (module doc)."""
    sets = {
        "name": f'"{name}"', "output.dir": f'"{out_dir}/{{name}}"', "output.progress": "false",
        "output.transcripts_per_step": "0", "data.tasks_per_step": e2e.tasks_per_step, "data.eval_size": 0,
        "rollout.group_size": e2e.group_size, "rollout.single_turn.policy.system_prompt": f'"{SYSTEM_PROMPT}"',
        "rollout.single_turn.policy.sampling.max_tokens": e2e.max_tokens,
        "roles.policy.model": f'"builtin:{MODEL}"',
        "roles.policy.learner.lora.r": e2e.lora_r, "roles.policy.learner.lora.alpha": e2e.lora_alpha,
        "roles.policy.learner.optim.lr": e2e.lr, "roles.policy.learner.micro_batch_size": e2e.samples_per_step,
        "roles.policy.learner.algo.minibatches": 1, "roles.policy.learner.algo.epochs": 1,
        "roles.policy.learner.algo.old_logprobs": '"rollout"', "data.min_pixels": 112 * 112,
        "roles.policy.learner.algo.kl_coef": 0.0, "roles.policy.learner.algo.entropy_coef": 0.0,
        "roles.policy.learner.algo.advantage_estimator": '"grpo"', "roles.policy.learner.algo.loss_agg": '"token-mean"',
        "train.steps": steps, "train.sft.steps": 0, "train.mode": f'"{mode}"', "train.checkpoint_every": 0,
        "cluster.num_cpus": 2,
    }
    return tuple(f"{k}={v}" for k, v in sets.items())
