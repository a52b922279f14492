"""Pretrain a tiny VLM to read the environments' observations: caption-after-image training on CPU.

Issue 12 item 3: a random vision tower cannot read digits, so RL from the random tiny Qwen2-VL
learns nothing on NumberLine. This builds the same architecture (the base preset's config and its
random initialisation) and trains *every* weight (vision tower, patch merger, LM) with next-token
cross-entropy on ``user: <image> question / assistant: caption<|im_end|>`` sequences rendered by
:mod:`deploy.offline_models.captions`, loss on the caption tokens only. The prompt is laid out as
the rollouts lay theirs out (:class:`rollout.chat.ChatFormat`: the image marker first in the user
message, then the text), and the directory is written like the random models (float32
safetensors, the same processor), so transformers, PEFT and vLLM load it unchanged.

The build ends with a held-out check, printed and written to ``pretrain.json``: per set, caption
token accuracy and exact-match rate under teacher forcing. An example is exact exactly when greedy
decoding reproduces the whole caption (every argmax along the true prefix is the true token), so
``numberline_56`` exact is the greedy read-out accuracy of both numbers on every NumberLine
observation the 56-px recipe can show.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast, Qwen2VLForConditionalGeneration

from deploy.offline_models.captions import CaptionExample, examples, numberline_grid
from deploy.offline_models.presets import PretrainPreset
from deploy.offline_models.random_init import _init, _save, vlm_config, vlm_processor

REPORT = "pretrain.json"
"""The file in the model directory that records the training run and the held-out check."""
PROMPT = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
"""One user turn with the image first (as :meth:`rollout.chat.ChatFormat.message` writes it)."""


@dataclass(frozen=True)
class SetScore:
    """The held-out check on one set of examples."""

    examples: int
    """Examples in the set."""
    token_accuracy: float
    """Fraction of caption tokens (with the closing ``<|im_end|>``) whose argmax is the true token."""
    exact: float
    """Fraction of examples whose greedy reply is exactly the caption."""


def encode(ex: CaptionExample, processor, tok: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    """One example's tensors: ``input_ids`` (T,) with the image pads expanded, ``labels`` (T,) equal
    to the ids on the caption and ``<|im_end|>`` and -100 elsewhere, ``mm_token_type_ids`` (T,),
    ``pixel_values`` (patches, C*T*P*P) and ``image_grid_thw`` (1, 3)."""
    inputs = processor(text=[PROMPT.format(question=ex.question)], images=[Image.fromarray(ex.image)],
                       return_tensors="pt")
    reply = tok.encode(ex.caption + "<|im_end|>", add_special_tokens=False)
    prompt = inputs["input_ids"][0]
    return {
        "input_ids": torch.cat([prompt, torch.tensor(reply)]),
        "labels": torch.cat([torch.full_like(prompt, -100), torch.tensor(reply)]),
        "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"][0], torch.zeros(len(reply), dtype=torch.long)]),
        "pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"],
    }


def collate(items: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch: (B, T) ids, labels (-100 on padding), attention mask, token types;
    the images' patches concatenated in batch order (Qwen2-VL's flat ``pixel_values``)."""
    width = max(len(x["input_ids"]) for x in items)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.stack([torch.nn.functional.pad(x[key], (0, width - len(x[key])), value=value) for x in items])

    mask = torch.stack([(torch.arange(width) < len(x["input_ids"])).long() for x in items])
    return {"input_ids": pad("input_ids", pad_id), "labels": pad("labels", -100), "attention_mask": mask,
            "mm_token_type_ids": pad("mm_token_type_ids", 0),
            "pixel_values": torch.cat([x["pixel_values"] for x in items]),
            "image_grid_thw": torch.cat([x["image_grid_thw"] for x in items])}


def batches(pool: Sequence[dict], batch_size: int, steps: int, seed: int) -> Iterator[list[dict]]:
    """``steps`` batches from ``pool`` in shuffled epochs (torch generator seeded with ``seed``)."""
    g, order = torch.Generator().manual_seed(seed), []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(len(pool), generator=g).tolist()
        yield [pool[i] for i in order[:batch_size]]
        order = order[batch_size:]


def lr_factor(step: int, p: PretrainPreset) -> float:
    """Linear warm-up over ``p.warmup`` steps, then cosine decay from 1 to 0.1 at ``p.steps``."""
    if step < p.warmup:
        return (step + 1) / p.warmup
    progress = (step - p.warmup) / max(1, p.steps - p.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train(model, pool: Sequence[dict], p: PretrainPreset, pad_id: int, log: Callable[[str], None]) -> list[float]:
    """``p.steps`` AdamW steps on ``pool`` (all weights, grad-norm clip 1); the loss every 50 steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, p))
    model.train()
    curve, start = [], time.perf_counter()
    for step, items in enumerate(batches(pool, p.batch_size, p.steps, p.seed)):
        loss = model(**collate(items, pad_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == p.steps - 1:
            curve.append(round(loss.item(), 4))
            log(f"  step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:6.1f}s")
    return curve


@torch.no_grad()
def score(model, items: Sequence[dict], pad_id: int, batch_size: int = 64) -> SetScore:
    """Teacher-forced argmax check of the caption tokens of ``items`` (see the module docstring)."""
    model.eval()
    right = total = exact = 0
    for i in range(0, len(items), batch_size):
        batch = collate(items[i:i + batch_size], pad_id)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        pred, gold = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
        mask = gold != -100
        hit = (pred == gold) & mask
        right, total = right + int(hit.sum()), total + int(mask.sum())
        exact += int((hit.sum(1) == mask.sum(1)).sum())
    return SetScore(len(items), round(right / total, 4), round(exact / len(items), 4))


def held_out_sets(p: PretrainPreset) -> dict[str, list[CaptionExample]]:
    """Every NumberLine state at 56 and 112 px as the env draws it, and ``p.eval_per_kind`` fresh
    examples per ``mix`` row from seeds the training pool does not use."""
    sets = {"numberline_56": numberline_grid(56), "numberline_112": numberline_grid(112)}
    for i, (kind, size, _) in enumerate(p.mix):
        sets.setdefault(f"{kind}_{size}", examples(((kind, size, 1.0),), p.eval_per_kind, p.seed + 1000 + i))
    return sets


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_pretrained_vlm(p: PretrainPreset, tok: PreTrainedTokenizerFast, out: Path,
                         log: Callable[[str], None] = print) -> int:
    """Train preset ``p`` (see the module docstring), write the model and ``pretrain.json`` to
    ``out``, print the held-out check; returns the parameter count."""
    with _threads(p.threads):
        start = time.perf_counter()
        processor = vlm_processor(p.base, tok)
        pool = [encode(ex, processor, tok) for ex in examples(p.mix, p.pool, p.seed)]
        rendered = time.perf_counter() - start
        model = _init(Qwen2VLForConditionalGeneration, vlm_config(p.base, tok), p.base.seed)
        curve = train(model, pool, p, tok.pad_token_id, log)
        trained = time.perf_counter() - start - rendered
        scores = {name: score(model, [encode(ex, processor, tok) for ex in exs], tok.pad_token_id)
                  for name, exs in held_out_sets(p).items()}
        model.eval()
        _save(model, tok, out)
        processor.save_pretrained(out)
    for name, s in scores.items():
        log(f"  held-out {name:<22} token accuracy {s.token_accuracy:.3f}  exact {s.exact:.3f}  (n={s.examples})")
    report = {"steps": p.steps, "batch_size": p.batch_size, "pool": p.pool, "render_seconds": round(rendered, 1),
              "train_seconds": round(trained, 1), "loss_every_50_steps": curve,
              "held_out": {name: asdict(s) for name, s in scores.items()}}
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return model.num_parameters()
