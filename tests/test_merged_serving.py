"""Merged serving (``EngineConfig.serve = "merged"``) against LoRA serving, real vLLM on CPU.

Two in-process engines on the tiny Qwen2-VL: one serving the adapter through vLLM's LoRA kernels,
one with it merged into the base weights. The adapter adapts every decoder projection (the
default recipe's targets: fused q/k/v with biases and gate/up in vLLM) with random non-zero
``lora_B``. For two versions in turn: greedy completions (text and image prompts) are the same
tokens, their log-probs and the sync probe's agree within the fp32 proof tolerance, and the second
version replaces the first (it is merged into the base, not into the first merge).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from rollout.chat import ChatFormat
from rollout.engine.base import AdapterRef, AdapterRejected, Request, Sampling

pytestmark = pytest.mark.integration

MODEL = "tiny-qwen2-vl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOLERANCE = 1e-4
"""cluster.weight_sync.PROOF_TOLERANCE["float32"]: the bound a sync's probe must meet."""


def make_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A PEFT LoRA (r 8, alpha 16) on the decoder projections with random N(0, 0.5) lora_B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=rf".*language_model.*\.({'|'.join(TARGETS)})"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft.save_pretrained(out)
    return out


def png(seed: int, size: int = 64) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The tiny Qwen2-VL only (``models_dir`` would build every built-in, a pretrained one too)."""
    from deploy.offline_models.builder import build

    return build(MODEL, Path(os.environ.get("DUET_MODELS", Path(__file__).resolve().parents[1] / ".cache" / "models")))


@pytest.fixture(scope="module")
def engines(model_dir: Path):
    from rollout.engine.config import EngineConfig
    from rollout.engine.vllm_engine import VLLMEngine

    config = EngineConfig(kv_cache_gib=0.125, max_model_len=512, max_lora_rank=8, seed=0)
    lora = VLLMEngine(model_dir, config.model_copy(update={"serve": "lora"}))
    merged = VLLMEngine(model_dir, config.model_copy(update={"serve": "merged"}))
    assert not lora.loads_in_place and merged.loads_in_place
    return lora, merged


def requests(engine) -> list[Request]:
    chat = ChatFormat(engine.tokenizer)
    greedy = Sampling(temperature=0.0, max_tokens=16)
    return [Request(tuple(chat.prompt("You are terse.", "Count: one two")), (), "policy", greedy),
            Request(tuple(chat.prompt(None, "What colour is it?", num_images=1)), (png(1),), "policy", greedy)]


def probe(engine) -> np.ndarray:
    ids = list(range(20, 60))
    return np.array(engine.score(ids[:30], ids[30:], "policy"))


def test_merged_engine_serves_what_lora_serves(engines, model_dir: Path, tmp_path: Path) -> None:
    lora, merged = engines
    ids = list(range(20, 60))
    base_probe = np.array(merged.score(ids[:30], ids[30:], None))
    probes = []
    for version in (1, 2):
        ref = AdapterRef("policy", version, str(make_adapter(model_dir, tmp_path / f"v{version}", version)))
        lora.load_adapter(ref)
        merged.load_adapter(ref)
        assert merged.adapter_versions() == {"policy": version} and merged.loaded_lora_ids() == set()
        for [a], [b] in zip(lora.generate(requests(lora)), merged.generate(requests(merged))):
            assert b.output_ids == a.output_ids and b.prompt_ids == a.prompt_ids
            assert b.adapter_version == a.adapter_version == version
            assert np.abs(np.array(b.logprobs) - np.array(a.logprobs)).max() < TOLERANCE
        probes.append(probe(merged))
        assert np.abs(probes[-1] - probe(lora)).max() < TOLERANCE  # the sync proof holds
    assert np.abs(probes[0] - base_probe).max() > 0.1  # the adapter changes the model
    assert np.abs(probes[1] - probes[0]).max() > 0.1  # v2 replaced v1 (LoRA's v2 matched it above)


def test_merged_engine_refuses_the_base_model_and_old_versions(engines, tmp_path: Path) -> None:
    _, merged = engines
    with pytest.raises(ValueError, match="no longer serves the base model"):
        merged.score([20, 21], [22], None)
    with pytest.raises(AdapterRejected, match="not newer"):
        merged.load_adapter(AdapterRef("policy", 2, "/nonexistent"))
    with pytest.raises(AdapterRejected, match=r"already serving \[.*\] \(merged serving holds 1\)"):
        merged.load_adapter(AdapterRef("observer", 1, "/nonexistent"))
