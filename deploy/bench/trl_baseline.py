"""The peer: TRL 1.16's ``GRPOTrainer`` on the same GRPO work as duet-rl (see :mod:`deploy.bench.settings`).

Same model directory (the tiny Qwen2-VL: TRL takes a VLM on CPU, images in an ``image`` column;
or SmolLM2-135M on the text task, no image column), the same tasks in the same order (``cluster.run.load_items`` of the benchmark recipe), the same
reward object (``cluster.rollout_factory.build_reward_fn``, duet's registered ``exact_match`` of the
extracted answer) wrapped in TRL's ``reward_funcs`` signature, the same LoRA (r, alpha, targets
from ``learner.config.LoraConfig.target_regex``, no dropout), optimiser (AdamW, constant lr, clip 1),
no KL (``beta=0``), one optimizer step per generation batch of ``tasks x G`` completions, token-mean
loss (TRL's "dapo" = duet's "token-mean"), the same completion budget and temperature.

Run as its own process so its peak memory is its own::

    python -m deploy.bench.trl_baseline OUT.json [--quick] [--model NAME]

Per-step wall times come from a ``TrainerCallback`` (``on_step_begin`` -> ``on_step_end``: TRL
generates, scores and updates inside the step); the first ``warmup_steps`` are left out by the caller.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from deploy.bench.memory import own_peak_mib
from deploy.bench.settings import MODELS_DIR, MODEL, E2ESettings, recipe_overrides, settings, workload


def reward_func(recipe: Any) -> Callable[..., list[float]]:
    """duet's reward of ``recipe`` as a TRL reward function ``f(prompts, completions, **columns)``."""
    from cluster.rollout_factory import build_reward_fn
    from rollout.single_turn import extract_answer
    from rollout.types import Episode, Task

    reward, fmt = build_reward_fn(recipe), recipe.rollout.single_turn.answer

    def exact_match(prompts, completions, task_id, question, answer, **_: Any) -> list[float]:
        scores = []
        for tid, q, a, c in zip(task_id, question, answer, completions):
            text = c[0]["content"] if isinstance(c, list) else str(c)
            episode = Episode(episode_id=f"{tid}#trl", group_id=tid, task_id=tid, turns=(),
                              answer=extract_answer(text, fmt) or "")
            scores.append(reward(Task(tid, q, a), episode).score)
        return scores

    return exact_match


def dataset(tasks: list[Any], system_prompt: str) -> Any:
    """TRL's conversational format: a system message, the user turn (image then question for a
    VLM's tasks, the question alone for text tasks)."""
    from datasets import Dataset
    from PIL import Image

    if all(t.image is None for t in tasks):
        return Dataset.from_list([{
            "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": t.question}],
            "task_id": t.task_id, "question": t.question, "answer": t.answer} for t in tasks])
    return Dataset.from_list([{
        "prompt": [{"role": "system", "content": [{"type": "text", "text": system_prompt}]},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t.question}]}],
        "image": Image.open(io.BytesIO(t.image)).convert("RGB"),
        "task_id": t.task_id, "question": t.question, "answer": t.answer} for t in tasks])


def grpo_config(e2e: E2ESettings, out_dir: Path) -> Any:
    """TRL's config for the shared work. ``gradient_checkpointing=False``: TRL's GRPOConfig turns it
    on by default (memory), which recomputes the forward in every backward; duet-rl's learner does not
    checkpoint (``learner.config`` default), so TRL would do more work per step (single runs on 2 threads,
    not paired: 2.25-2.61 s per tiny-VLM step with it, 1.86-2.29 s without at the same load ~2,
    1.50-1.69 s without at load ~1)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, use_vllm=False, report_to="none", save_strategy="no",
        per_device_train_batch_size=e2e.samples_per_step, num_generations=e2e.group_size,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=e2e.max_tokens, temperature=1.0, top_p=1.0, beta=0.0, loss_type="dapo",
        learning_rate=e2e.lr, lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0, gradient_checkpointing=False,
        max_steps=e2e.warmup_steps + e2e.steps, logging_steps=1, seed=0, shuffle_dataset=False,
        dataloader_num_workers=0, disable_tqdm=True)


def run_trl(e2e: E2ESettings, work_dir: Path) -> dict[str, Any]:
    """Train ``warmup_steps + steps`` TRL steps; returns per-step seconds, start-up and peak memory."""
    t0 = time.perf_counter()
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from cluster.config import load_recipe
    from cluster.run import load_items
    from learner.config import LoraConfig as DuetLora

    recipe = load_recipe(None, recipe_overrides(e2e, "bench-trl", work_dir, e2e.warmup_steps + e2e.steps))
    tasks, _ = load_items(recipe, _Quiet())
    tasks = tasks[: e2e.tasks_per_step * (e2e.warmup_steps + e2e.steps)]  # driver order: step k takes the k-th slice
    model_dir = MODELS_DIR / e2e.model
    lora = recipe.roles["policy"].learner.lora
    peft = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=DuetLora().target_regex())

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self.t)

    timer = StepTimer()
    model, processing = load_model(model_dir, e2e.task == "addition")
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward_func(recipe), args=grpo_config(e2e, work_dir / "trl"),
        train_dataset=dataset(tasks, recipe.rollout.single_turn.policy.system_prompt or ""),
        processing_class=processing, peft_config=peft, callbacks=[timer])
    startup = time.perf_counter() - t0
    trainer.train()
    return {"step_s": timer.seconds, "startup_s": startup, "samples_per_step": e2e.samples_per_step,
            "peak_mib": own_peak_mib(), "torch_threads": torch.get_num_threads()}


def load_model(model_dir: Path, text: bool) -> tuple[Any, Any]:
    """(fp32 model, processing class) of ``model_dir``: a causal LM and its tokenizer for a text
    model, an image-text-to-text model and its processor for a VLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    if text:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(model_dir)
    return (AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32),
            AutoProcessor.from_pretrained(model_dir))


class _Quiet:
    def event(self, text: str) -> None:
        pass


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    model = argv[argv.index("--model") + 1] if "--model" in argv else MODEL
    result = run_trl(workload(settings("--quick" in argv), model), out.parent)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
