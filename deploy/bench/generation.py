"""Rollout throughput (issue 6, item 2): the vLLM rollout worker against transformers ``generate()``.

Both in this one process, on the same model (the tiny Qwen2-VL, then a larger built-in one; each
with the same untrained LoRA adapter on both sides, as the worker always serves an adapter in
training), the same prompts (the worker's own ChatML prompts of easy-VQA tasks; transformers gets
exactly the token ids vLLM saw, image pads expanded, and the image processor's pixels) and the same
sampling (temperature 1, no top-k/top-p, ``max_tokens``, the same stop tokens, vision tokens
banned). The worker side is :meth:`rollout.worker.RolloutWorker.rollout` (``prompts`` tasks x G
samples in one engine call, rewards included); the transformers side is one ``generate`` over the ``prompts x G`` rows,
left-padded (as TRL's ``GRPOTrainer`` calls it). Calls alternate between the two systems so that a
change of machine load hits both. Tokens counted: sampled tokens up to and including the first stop
token, the same rule on both sides.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any, Sequence

from deploy.bench.report import Section
from deploy.bench.settings import MODEL, MODELS_DIR, BenchSettings, E2ESettings, model_dirs, recipe_overrides
from deploy.bench.stats import ratio, steady, summarize

TITLE = "2. Rollout throughput: vLLM rollout worker vs transformers generate()"


def generated_length(ids: Sequence[int], stop_ids: set[int]) -> int:
    """Sampled tokens of one row: up to and including the first stop token (all if none)."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return i + 1
    return len(ids)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(ids, attention mask) of ``rows`` left-padded to the longest."""
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return ids, mask


class HFGenerator:
    """transformers ``generate()`` on the PEFT-wrapped model, for prompts given as token ids + images."""

    def __init__(self, model: Any, processor: Any, stop_ids: Sequence[int], suppress: Sequence[int]) -> None:
        self.model, self.processor = model, processor
        self.stop_ids, self.suppress = list(stop_ids), list(suppress)
        self.image_token_id = model.config.image_token_id
        self.pad_id = processor.tokenizer.pad_token_id

    def inputs(self, prompts: Sequence[Sequence[int]], images: Sequence[bytes], group: int) -> dict[str, Any]:
        import torch
        from PIL import Image

        rows = [p for p in prompts for _ in range(group)]
        pics = [Image.open(io.BytesIO(b)).convert("RGB") for b in images for _ in range(group)]
        vision = self.processor.image_processor(images=pics, return_tensors="pt")
        ids, mask = left_pad(rows, self.pad_id)
        ids_t = torch.tensor(ids)
        return {"input_ids": ids_t, "attention_mask": torch.tensor(mask), "pixel_values": vision["pixel_values"],
                "image_grid_thw": vision["image_grid_thw"],
                "mm_token_type_ids": (ids_t == self.image_token_id).long()}

    def generate(self, inputs: dict[str, Any], max_tokens: int) -> int:
        """One call; returns the sampled tokens (see :func:`generated_length`)."""
        import torch

        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                      max_new_tokens=max_tokens, eos_token_id=self.stop_ids,
                                      pad_token_id=self.pad_id, suppress_tokens=self.suppress or None)
        width = inputs["input_ids"].shape[1]
        return sum(generated_length(row[width:].tolist(), set(self.stop_ids)) for row in out)


def _recipe(cfg: BenchSettings, model: str, work: Path) -> Any:
    from cluster.config import load_recipe

    r = cfg.rollout
    e2e = E2ESettings(tasks_per_step=r.prompts, group_size=r.group_size, max_tokens=r.max_tokens)
    return load_recipe(None, recipe_overrides(e2e, "bench-rollout", work, 1)
                       + ("roles.policy.engine.max_model_len=512", f'roles.policy.model="builtin:{model}"'))


def _adapter(model: Any, recipe: Any, out: Path) -> Any:
    """The untrained LoRA of the recipe on ``model`` (PEFT), saved to ``out`` for vLLM."""
    from peft import LoraConfig, get_peft_model

    lora = recipe.roles["policy"].learner.lora
    peft_model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                                  target_modules=lora.target_regex()))
    peft_model.save_pretrained(str(out))
    return peft_model.eval()


Runs = list[tuple[int, float]]
"""(sampled tokens, seconds) of each call."""


def base_requests(engine: Any, tasks: Sequence[Any], recipe: Any, step: int) -> list[Any]:
    """The worker's requests for ``tasks`` (same prompts, sampling, seeds) without the adapter."""
    from rollout.chat import ChatFormat
    from rollout.engine.base import Request
    from rollout.single_turn import build_prompt, derive_seed, task_images

    cfg, g = recipe.rollout.single_turn, recipe.rollout.group_size
    chat = ChatFormat(engine.tokenizer)
    return [Request(tuple(build_prompt(chat, t, cfg)), task_images(t), None,
                    cfg.policy.sampling.to_sampling(g, derive_seed(recipe.rollout.seed, step, t.task_id)))
            for t in tasks]


def measure(cfg: BenchSettings, model: str, work: Path) -> tuple[Runs, Runs, Runs]:
    """(vLLM worker runs, transformers runs, vLLM base-model runs) on ``model``, calls alternating,
    warm-up left out."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cluster.rollout_factory import RolloutWorkerFactory
    from cluster.run import load_items
    from rollout.engine.base import AdapterRef
    from rollout.engine.vllm_engine import VISION_TOKENS

    r, recipe = cfg.rollout, _recipe(cfg, model, work)
    tasks = load_items(recipe, _Quiet())[0][: r.prompts]
    model_dir = MODELS_DIR / model
    peft_model = _adapter(AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32), recipe,
                          work / f"adapter-{model}")
    worker = RolloutWorkerFactory(recipe.model_dump_json(), {r: str(d) for r, d in model_dirs(recipe).items()})()
    worker.load_adapter(AdapterRef("policy", 1, str(work / f"adapter-{model}")))
    engine = worker.engines["policy"]
    vocab = engine.tokenizer.get_vocab()
    hf = HFGenerator(peft_model, AutoProcessor.from_pretrained(model_dir), engine.stop_token_ids,
                     [vocab[t] for t in VISION_TOKENS if t in vocab])
    vllm_runs, hf_runs, base_runs, inputs = [], [], [], None
    for call in range(r.warmup_calls + r.calls):
        t0 = time.perf_counter()
        batch, stats = worker.rollout(tasks, {"policy": 1}, step=call)
        vllm_runs.append((sum(stats.generated_tokens.values()), time.perf_counter() - t0))
        if inputs is None:  # the prompts exactly as vLLM saw them (image pads expanded)
            prompts = [batch.episodes[i * r.group_size].turns[0].prompt_ids for i in range(len(tasks))]
            inputs = hf.inputs(prompts, [t.image for t in tasks], r.group_size)
        t0 = time.perf_counter()
        hf_runs.append((hf.generate(inputs, r.max_tokens), time.perf_counter() - t0))
        t0 = time.perf_counter()
        groups = engine.generate(base_requests(engine, tasks, recipe, call))
        base_runs.append((sum(len(c.output_ids) for g in groups for c in g), time.perf_counter() - t0))
    return tuple(steady(x, r.warmup_calls) for x in (vllm_runs, hf_runs, base_runs))


def run(cfg: BenchSettings, work: Path) -> list[Section]:
    import torch

    results = {m: measure(cfg, m, work) for m in cfg.rollout.models}
    return [section(cfg, results, torch.get_num_threads())]


def section(cfg: BenchSettings, results: dict[str, tuple[Runs, Runs, Runs]], threads: int) -> Section:
    r = cfg.rollout
    rows, ratios = [], {}
    names = ("duet-rl rollout worker (vLLM + LoRA)", "transformers generate() (+ PEFT LoRA)",
             "reference: vLLM engine, base weights, no LoRA")
    for model, runs_of in results.items():
        rates = []
        for name, runs in zip(names, runs_of):
            tokens, seconds = sum(t for t, _ in runs), sum(s for _, s in runs)
            rates.append(tokens / seconds)
            rows.append((model, name, len(runs), tokens / len(runs), summarize([s for _, s in runs]).p50, rates[-1]))
        ratios[model] = ratio(rates[0], rates[1])
        rows.append((model, "ratio worker / transformers", None, None, None, ratios[model]))
    return Section(
        "rollout", TITLE, ("model", "system", "calls", "tokens per call", "s per call (p50)", "tokens/s"), tuple(rows),
        notes=(f"{r.prompts} easy-VQA prompts x G={r.group_size} samples, up to {r.max_tokens} new tokens, each model "
               f"with the same untrained LoRA r=16 on both sides; {r.warmup_calls} warm-up call(s) per system left "
               f"out; calls alternate between the systems; one process, torch threads {threads} (a rollout worker "
               "actor has 1 CPU).",
               "The worker's figure is the whole `RolloutWorker.rollout` call (prompt building, vLLM with "
               "per-token log-probs, reward, episode records); transformers' is `generate()` alone, no log-probs.",
               "The reference row is the same engine and requests without the adapter: the gap to the worker's "
               "row is vLLM-CPU's LoRA kernels (the worker always serves an adapter in training).",
               "No target in the issue for this figure."),
        data={m: {"vllm": v, "transformers": h, "vllm_base": b, "ratio": ratios[m]} for m, (v, h, b) in results.items()})


class _Quiet:
    def event(self, text: str) -> None:
        pass


__all__ = ["run", "section", "generated_length", "left_pad"]
