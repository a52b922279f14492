"""The pretrained tiny VLM (deploy/offline_models/captions.py, pretrain.py): captions state what the
rendered image shows, the data is deterministic, a tiny-budget build is deterministic and stamped,
and (integration) vLLM serves a reduced-budget build as transformers does and greedily reads NumberLine
observations with the read-out its stamp records."""

from __future__ import annotations

import dataclasses
import gc
import json
import re

import numpy as np
import pytest

from deploy.offline_models.captions import (
    blackjack_caption,
    blackjack_example,
    examples,
    ezpoints_caption,
    ezpoints_example,
    numberline_example,
    numberline_grid,
)
from deploy.offline_models.presets import PRESETS
from rollout.envs import Blackjack, EZPoints, NumberLine
from rollout.envs.blackjack import hand_total
from rollout.envs.render import Card

NAME = "tiny-qwen2-vl-pt"
MIX = PRESETS[NAME].mix


@pytest.mark.unit
def test_numberline_caption_is_the_state_it_renders():
    grid = numberline_grid(56)
    assert len(grid) == 30  # 6 x 6 ordered pairs, current != target
    [ex] = [e for e in grid if e.state == {"target": 3, "current": 1}]
    assert ex.caption == "Target: 3, Current: 1"
    np.testing.assert_array_equal(ex.image, NumberLine(56).reset(options={"current": 1, "target": 3})[0])
    # A random one: the numbers in its caption re-render exactly its pixels.
    ex = numberline_example(np.random.default_rng(7), 112)
    target, current = (int(x) for x in re.fullmatch(r"Target: (\d), Current: (\d)", ex.caption).groups())
    assert target != current
    np.testing.assert_array_equal(ex.image, NumberLine(112).reset(options={"current": current, "target": target})[0])


@pytest.mark.unit
def test_card_captions_are_the_deal_they_render():
    assert blackjack_caption("K", ["7", "9"], 16) == "Dealer: K, Player: 7 9, Total: 16"
    assert ezpoints_caption(["5", "Q"], "5 +") == "Cards: 5 Q, Formula: 5 +"
    assert ezpoints_caption(["A", "J"], "") == "Cards: A J, Formula:"
    ex = blackjack_example(np.random.default_rng(3), 112)
    seed = int(np.random.default_rng(3).integers(2**31))  # the seed the example's reset drew
    obs, info = Blackjack(112).reset(seed=seed)
    np.testing.assert_array_equal(ex.image, obs)
    ranks = [Card.parse(c).rank for c in info["player_cards"]]
    assert ex.caption == f"Dealer: {Card.parse(info['dealer_cards'][0]).rank}, Player: {' '.join(ranks)}, Total: {info['player_total']}"
    assert ex.state["total"] == hand_total([Card.parse(c) for c in info["player_cards"]])
    ex = ezpoints_example(np.random.default_rng(5), 112)
    env = EZPoints(112)
    _, info = env.reset(seed=int(np.random.default_rng(5).integers(2**31)))
    assert ex.caption.startswith(f"Cards: {' '.join(Card.parse(c).rank for c in info['cards'])}, Formula:")
    for token in ex.state["formula"].split():  # replaying the caption's formula redraws the image
        obs, *_ = env.step(EZPoints.ACTIONS.index(token))
    if ex.state["formula"]:
        np.testing.assert_array_equal(ex.image, obs)


@pytest.mark.unit
def test_examples_are_deterministic_and_follow_the_mix():
    a, b, c = examples(MIX, 40, seed=1), examples(MIX, 40, seed=1), examples(MIX, 40, seed=2)
    assert [e.caption for e in a] == [e.caption for e in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [e.caption for e in a] != [e.caption for e in c]
    assert {e.kind for e in examples(MIX, 200, seed=0)} == {k for k, _, _ in MIX}
    sizes = {(e.kind, e.image.shape) for e in a}
    assert ("blackjack", (112, 112, 3)) in sizes or ("ezpoints", (112, 112, 3)) in sizes


@pytest.mark.unit
def test_encode_masks_all_but_the_caption():
    from deploy.offline_models.builder import TOKENIZER, _tokenizer
    from deploy.offline_models.pretrain import encode
    from deploy.offline_models.random_init import vlm_processor

    tok = _tokenizer(TOKENIZER)
    processor = vlm_processor(PRESETS[NAME].base, tok)
    for size, pads in ((56, 4), (112, 16)):
        ex = numberline_grid(size)[0]
        x = encode(ex, processor, tok)
        caption = x["input_ids"][x["labels"] != -100]
        assert tok.decode(caption) == ex.caption + "<|im_end|>"
        assert int((x["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum()) == pads
        assert int(x["mm_token_type_ids"].sum()) == pads and x["image_grid_thw"].tolist() == [[1, size // 14, size // 14]]


@pytest.mark.unit
def test_tiny_budget_build_is_deterministic_and_stamped(tmp_path, monkeypatch):
    """The factory path (ensure -> manifest with the held-out check) on a 3-step budget, twice."""
    from deploy.offline_models import builder

    small = dataclasses.replace(PRESETS[NAME], steps=3, pool=16, eval_per_kind=2)
    monkeypatch.setitem(builder.PRESETS, NAME, small)
    a, b = builder.ensure(NAME, tmp_path / "a"), builder.ensure(NAME, tmp_path / "b")
    ma, mb = builder.read_manifest(a.path), builder.read_manifest(b.path)
    assert a.built and ma["files"]["model.safetensors"] == mb["files"]["model.safetensors"]
    assert ma["parameters"] == 1_013_056  # the tiny-qwen2-vl architecture, unchanged
    report = json.loads((a.path / "pretrain.json").read_text())
    assert report["steps"] == 3 and ma["held_out"] == report["held_out"]
    assert ma["held_out"]["numberline_56"]["examples"] == 30
    assert builder.ensure(NAME, tmp_path / "a").built is False


PARTIAL = {"steps": 150, "pool": 512, "eval_per_kind": 2}
"""A reduced budget of the pretrained build (about 45 s of the test's 76 s on the 2-core machine):
it has learned the caption format but not yet to read -- measured: one reply, "Target: 4, Current: 1",
to every state, a read-out of 1/30 -- so the serving check sees a hit and misses, not all-right."""


def _partial_build(tmp_path, monkeypatch):
    """The factory path (``builder.ensure``) on the PARTIAL budget, into ``tmp_path`` (never under the
    real name in the shared models directory)."""
    from deploy.offline_models import builder

    monkeypatch.setitem(builder.PRESETS, NAME, dataclasses.replace(PRESETS[NAME], **PARTIAL))
    return builder.ensure(NAME, tmp_path).path


@pytest.mark.integration
def test_vllm_serves_it_and_reads_numberline(tmp_path, monkeypatch):
    """vLLM serves a pretrained build: on every NumberLine observation at 56 px (the numberline_ppo
    size) its greedy tokens are transformers' greedy tokens, and its read-out (replies exactly the
    caption) is the one the build's stamp records, example by example as the teacher-forced check
    scores them. The build is a 150-step budget (about a minute): it has learned the caption's
    format, not yet to read (it gives one reply, right for 1 of the 30 states), so this checks
    serving and scoring, not reading. The full 800-step build's
    read-out (100% at 56 px, 252 s on the 2-core machine) is a property of that build, measured by
    its own stamp (``pretrain.json`` / ``manifest.json`` ``held_out.numberline_56.exact``, printed by
    ``python -m deploy.offline_models build --only tiny-qwen2-vl-pt``) and by the learning
    benchmark, not in CI."""
    import os

    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    from deploy.offline_models.builder import TOKENIZER, _tokenizer, read_manifest
    from deploy.offline_models.pretrain import PROMPT, REPORT, encode, score

    path = _partial_build(tmp_path, monkeypatch)
    stamp = read_manifest(path)["held_out"]["numberline_56"]
    assert json.loads((path / REPORT).read_text())["steps"] == PARTIAL["steps"]
    grid = numberline_grid(56)
    prompts = [{"prompt": PROMPT.format(question=ex.question), "multi_modal_data": {"image": Image.fromarray(ex.image)}}
               for ex in grid]
    llm = LLM(model=str(path), dtype="float32", max_model_len=512, enforce_eager=True, seed=0,
              limit_mm_per_prompt={"image": 1, "video": 0})
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)
    del llm
    gc.collect()
    replies = [o.outputs[0].text for o in outs]
    read = [r == ex.caption for r, ex in zip(replies, grid)]
    readout = sum(read) / len(grid)
    assert stamp["examples"] == 30 and readout == pytest.approx(stamp["exact"], abs=1 / 30), replies
    assert all(re.fullmatch(r"Target: \d, Current: \d", r) for r in replies), replies  # the caption format
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    tok = _tokenizer(TOKENIZER)
    for p, o, ex, hit in zip(prompts, outs, grid, read):
        inputs = processor(text=[p["prompt"]], images=[p["multi_modal_data"]["image"]], return_tensors="pt")
        hf = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        assert list(o.outputs[0].token_ids) == hf, ex.caption
        # teacher forcing marks exactly the examples greedy decoding reads right
        assert score(model, [encode(ex, processor, tok)], tok.pad_token_id).exact == float(hit), ex.caption
