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

from deploy.bench.machine import load_average
from deploy.bench.repeat import Side, column, interleave, load_cell
from deploy.bench.report import Check, Section
from deploy.bench.settings import MODELS_DIR, BenchSettings, E2ESettings, model_dirs, recipe_overrides
from deploy.bench.stats import paired_ratios, ratio_spread, summarize

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
        self.image_token_id = getattr(model.config, "image_token_id", None)
        self.pad_id = getattr(processor, "tokenizer", processor).pad_token_id

    def inputs(self, prompts: Sequence[Sequence[int]], images: Sequence[bytes], group: int) -> dict[str, Any]:
        import torch
        from PIL import Image

        rows = [p for p in prompts for _ in range(group)]
        ids, mask = left_pad(rows, self.pad_id)
        ids_t = torch.tensor(ids)
        if not any(images):  # a text task: no vision inputs
            return {"input_ids": ids_t, "attention_mask": torch.tensor(mask)}
        pics = [Image.open(io.BytesIO(b)).convert("RGB") for b in images for _ in range(group)]
        vision = self.processor.image_processor(images=pics, return_tensors="pt")
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


def _recipe(cfg: BenchSettings, model: str, work: Path, serve: str = "auto") -> Any:
    from cluster.config import load_recipe

    r = cfg.rollout
    e2e = E2ESettings(model=model, tasks_per_step=r.prompts, group_size=r.group_size, max_tokens=r.max_tokens)
    return load_recipe(None, recipe_overrides(e2e, "bench-rollout", work, 1)
                       + ("roles.policy.engine.max_model_len=512", f'roles.policy.engine.serve="{serve}"'))


def _worker(recipe: Any, adapter: Path) -> Any:
    """The run's rollout worker for ``recipe``, serving ``adapter`` as version 1."""
    from cluster.rollout_factory import RolloutWorkerFactory
    from rollout.engine.base import AdapterRef

    worker = RolloutWorkerFactory(recipe.model_dump_json(), {r: str(d) for r, d in model_dirs(recipe).items()})()
    worker.load_adapter(AdapterRef("policy", 1, str(adapter)))
    return worker


def _adapter(model: Any, recipe: Any, out: Path) -> Any:
    """The untrained LoRA of the recipe on ``model`` (PEFT), saved to ``out`` for vLLM."""
    from peft import LoraConfig, get_peft_model

    lora = recipe.roles["policy"].learner.lora
    peft_model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                                                  target_modules=lora.target_regex()))
    peft_model.save_pretrained(str(out))
    return peft_model.eval()


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


def measure(cfg: BenchSettings, model: str, work: Path) -> dict[str, list[Side]]:
    """System name -> its steady calls on ``model`` (:data:`SYSTEMS` order; each call's result is
    (sampled tokens, seconds)); the systems' calls interleaved, warm-up calls left out."""
    from transformers import AutoProcessor, AutoTokenizer

    from cluster.run import load_items
    from deploy.bench.trl_baseline import load_model
    from rollout.engine.vllm_engine import VISION_TOKENS

    r, recipe = cfg.rollout, _recipe(cfg, model, work)
    tasks = load_items(recipe, _Quiet())[0][: r.prompts]
    text, model_dir = all(t.image is None for t in tasks), MODELS_DIR / model
    peft_model = _adapter(load_model(model_dir, text)[0], recipe, work / f"adapter-{model}")
    worker = _worker(recipe, work / f"adapter-{model}")  # serve "auto": as a run serves it
    merged = worker.engines["policy"].loads_in_place
    other = _worker(_recipe(cfg, model, work, "lora" if merged else "merged"), work / f"adapter-{model}")
    engine = (other if merged else worker).engines["policy"]  # the LoRA engine also serves the base model
    vocab = engine.tokenizer.get_vocab()
    hf = HFGenerator(peft_model, (AutoTokenizer if text else AutoProcessor).from_pretrained(model_dir),
                     engine.stop_token_ids, [vocab[t] for t in VISION_TOKENS if t in vocab])
    inputs: list[dict[str, Any]] = []

    def worker_call(call: int, worker: Any = worker) -> tuple[int, float]:
        t0 = time.perf_counter()
        batch, stats = worker.rollout(tasks, {"policy": 1}, step=call)
        took = time.perf_counter() - t0
        if not inputs:  # the prompts exactly as vLLM saw them (image pads expanded)
            prompts = [batch.episodes[i * r.group_size].turns[0].prompt_ids for i in range(len(tasks))]
            inputs.append(hf.inputs(prompts, [t.image for t in tasks], r.group_size))
        return sum(stats.generated_tokens.values()), took

    def hf_call(call: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        return hf.generate(inputs[0], r.max_tokens), time.perf_counter() - t0

    def base_call(call: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        groups = engine.generate(base_requests(engine, tasks, recipe, call))
        return sum(len(c.output_ids) for g in groups for c in g), time.perf_counter() - t0

    modes = (MERGED, WORKER) if merged else (WORKER, MERGED)  # the recipe's own mode first
    systems = {modes[0]: worker_call, modes[1]: lambda call: worker_call(call, other), HF: hf_call, BASE: base_call}
    reps = interleave(r.warmup_calls + r.calls, list(systems.items()), load_average)[r.warmup_calls:]
    return {name: column(reps, name) for name in systems}


WORKER, HF, BASE = ("duet-rl rollout worker (vLLM + LoRA)", "transformers generate() (+ PEFT LoRA)",
                    "reference: vLLM engine, base weights, no LoRA")
MERGED = "duet-rl rollout worker (vLLM, adapter merged)"
"""The worker with ``engine.serve = "merged"`` (the adapter merged into the base weights)."""
SYSTEMS = (WORKER, MERGED, HF, BASE)
"""The systems measured per model, each call in this order. The rollout worker's serving modes are
the names other than :data:`HF` and :data:`BASE` (each gets a ratio against transformers); the
first is the worker as the recipe configures it, whose ratio is held against the target."""
TARGET = 1.5


def run(cfg: BenchSettings, work: Path) -> list[Section]:
    import torch

    results = {m: measure(cfg, m, work) for m in cfg.rollout.models}
    return [section(cfg, results, torch.get_num_threads())]


def rates(calls: Sequence[Side]) -> list[float]:
    """Tokens/s of each call (its result is (tokens, seconds))."""
    return [t / s for t, s in (c.result for c in calls)]


def section(cfg: BenchSettings, results: dict[str, dict[str, list[Side]]], threads: int) -> Section:
    r = cfg.rollout
    rows, checks, ratios = [], [], {}
    for model, by_system in results.items():
        for name, calls in by_system.items():
            tokens, seconds = sum(c.result[0] for c in calls), sum(c.result[1] for c in calls)
            rows.append((model, name, len(calls), tokens / len(calls), summarize([c.result[1] for c in calls]).p50,
                         tokens / seconds, load_cell(calls[0].load_start)))
        workers = [n for n in by_system if n not in (HF, BASE)]
        for name in workers:
            spread_ = ratio_spread(rates(by_system[name]), rates(by_system[HF]))
            ratios[f"{model}/{name}"] = paired_ratios(rates(by_system[name]), rates(by_system[HF]))
            rows.append((model, f"ratio {name} / transformers: median", spread_.n, None, None, spread_.median,
                         f"range {spread_.low:.2f}-{spread_.high:.2f}"))
            if name == workers[0]:
                checks.append(Check(f"rollout worker tokens/s >= {TARGET:g}x transformers generate() ({model})",
                                    spread_.text(), spread_.median >= TARGET, f"rollout-{model}"))
    return Section(
        "rollout", TITLE, ("model", "system", "calls", "tokens per call", "s per call (p50)", "tokens/s",
                           "load avg at first call"), tuple(rows), tuple(checks),
        notes=(f"{r.prompts} prompts x G={r.group_size} samples, up to {r.max_tokens} new tokens (easy-VQA prompts for "
               "the VLMs, the addition task for the text LM), each model with the same untrained LoRA r=16 on both "
               f"sides; {r.warmup_calls} warm-up call(s) per system left out; calls interleaved (worker, "
               f"transformers, reference, worker, ...); the ratio is taken per call pair, median and range over the "
               f"{r.calls} pairs; one process, torch threads {threads} (a rollout worker actor has 1 CPU).",
               "The worker's figure is the whole `RolloutWorker.rollout` call (prompt building, vLLM with "
               "per-token log-probs, reward, episode records); transformers' is `generate()` alone, no log-probs.",
               "The reference row is the same engine and requests without the adapter: the gap to the worker's "
               "row is what serving the adapter costs.",
               "The merged row is the same worker with `engine.serve = \"merged\"` (the adapter merged into the base "
               "weights and reloaded in place at each sync, no LoRA kernels); a run's worker serves as its first "
               "worker row (`serve = \"auto\"`: merged on CPU for an engine serving one adapter)."),
        data={m: {name: [[*c.result, list(c.load_start)] for c in calls] for name, calls in by.items()}
              | {"ratios": {k: v for k, v in ratios.items() if k.startswith(m + "/")}} for m, by in results.items()})


class _Quiet:
    def event(self, text: str) -> None:
        pass


__all__ = ["run", "section", "generated_length", "left_pad"]
