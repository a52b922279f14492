"""Merged serving's math and choice (rollout.engine.merged, EngineConfig.serve): no vLLM.

The merge is checked twice: on a hand-built 2x2 layer whose merged weight is computed by hand, and
on the tiny Qwen2 text model against PEFT's own ``merge_and_unload`` (the learner's library).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollout.engine.base import AdapterRejected
from rollout.engine.config import EngineConfig, llm_kwargs, serve_mode
from rollout.engine.merged import BaseWeights, lora_scaling, merged_tensors, parent_module

pytestmark = pytest.mark.unit


def write_adapter(out: Path, tensors: dict, config: dict) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return out


def test_scaling_is_pefts() -> None:
    assert lora_scaling({"r": 8, "lora_alpha": 16}, "model.layers.0.mlp.up_proj") == 2.0
    assert lora_scaling({"r": 16, "lora_alpha": 16, "use_rslora": True}, "x.layers.0.q_proj") == 4.0
    patterned = {"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"layers.1.self_attn.v_proj": 2}}
    assert lora_scaling(patterned, "m.layers.0.self_attn.q_proj") == 4.0  # 16 / 4
    assert lora_scaling(patterned, "m.layers.1.self_attn.v_proj") == 0.25  # 2 / 8
    assert lora_scaling(patterned, "m.layers.0.self_attn.v_proj") == 2.0  # layers.0 does not match


def test_hand_computed_merge_replaces_rather_than_stacks(tmp_path: Path) -> None:
    """W = [[1, 2], [3, 4]], A = [[1, 0]], B = [[1], [2]], alpha / r = 3: W + 3 B A = [[4, 2], [9, 4]];
    the sibling bias and weight of the same parent come back unchanged; a second adapter merges
    into the base again, not into the first merge."""
    import torch
    from safetensors.torch import save_file

    model = tmp_path / "model"
    model.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
               "model.layers.0.mlp.up_proj.bias": torch.tensor([0.5, -0.5]),
               "model.layers.0.mlp.down_proj.weight": torch.eye(2),
               "model.layers.1.mlp.up_proj.weight": torch.zeros(2, 2),
               "model.embed_tokens.weight": torch.ones(5, 2)}, str(model / "model.safetensors"))
    name = "base_model.model.model.language_model.layers.0.mlp.up_proj"  # transformers-5 path
    ab = {f"{name}.lora_A.weight": torch.tensor([[1.0, 0.0]]), f"{name}.lora_B.weight": torch.tensor([[1.0], [2.0]])}
    base = BaseWeights(model)
    out = dict(merged_tensors(base, write_adapter(tmp_path / "a1", ab, {"r": 1, "lora_alpha": 3})))
    assert sorted(out) == ["model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.bias",
                           "model.layers.0.mlp.up_proj.weight"]  # the parent (layer 0's mlp) only
    assert out["model.layers.0.mlp.up_proj.weight"].tolist() == [[4.0, 2.0], [9.0, 4.0]]
    assert out["model.layers.0.mlp.up_proj.bias"].tolist() == [0.5, -0.5]
    assert out["model.layers.0.mlp.down_proj.weight"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    ab2 = {k: v * (-1 if "lora_B" in k else 1) for k, v in ab.items()}  # B = [[-1], [-2]]
    again = dict(merged_tensors(base, write_adapter(tmp_path / "a2", ab2, {"r": 1, "lora_alpha": 3})))
    assert again["model.layers.0.mlp.up_proj.weight"].tolist() == [[-2.0, 2.0], [-3.0, 4.0]]


def tiny_qwen2(out: Path) -> Path:
    """A random-init 3-layer Qwen2 (hidden 32, q/k/v biases, 2 KV heads: the fused shapes vLLM stacks)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out


def test_merge_equals_peft_merge_and_unload(tmp_path: Path) -> None:
    """Every projection of a tiny Qwen2 adapted with a non-zero LoRA: each merged tensor equals
    the one PEFT's ``merge_and_unload`` computes, and the merge changed it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model_dir = tiny_qwen2(tmp_path / "model")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                          LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft.save_pretrained(tmp_path / "adapter")
    reference = peft.merge_and_unload().state_dict()
    base = BaseWeights(model_dir)
    merged = merged_tensors(base, tmp_path / "adapter")
    weights = [n for n, _ in merged if n.rsplit(".", 2)[-2] in targets and n.endswith(".weight")]
    assert len(weights) == 7 * 3  # 7 projections x 3 layers
    for name, tensor in merged:
        torch.testing.assert_close(tensor.float(), reference[name], rtol=0, atol=1e-6)
    assert all(not torch.equal(dict(merged)[n], base.tensor(n)) for n in weights)


def test_modules_outside_layer_stacks_are_refused() -> None:
    assert parent_module("model.layers.3.self_attn.q_proj") == "model.layers.3.self_attn"
    with pytest.raises(AdapterRejected, match="serve = 'lora'"):
        parent_module("lm_head")


def test_auto_merges_one_adapter_on_cpu_only() -> None:
    auto = EngineConfig()
    assert serve_mode(auto, ["policy"]) == "merged"
    assert serve_mode(auto, ["policy", "policy"]) == "merged"  # two roles, one adapter
    assert serve_mode(auto, ["reasoner", "observer"]) == "lora"  # adapters share the base model
    assert serve_mode(auto, ["policy", None]) == "lora"  # a role on the base model
    assert serve_mode(auto, None) == "lora"  # roles unknown: keep LoRA
    assert serve_mode(EngineConfig(device="cuda"), ["policy"]) == "lora"  # fast LoRA kernels
    assert serve_mode(EngineConfig(serve="lora"), ["policy"]) == "lora"
    assert serve_mode(EngineConfig(serve="merged"), None) == "merged"


def test_merged_refuses_what_it_cannot_serve() -> None:
    with pytest.raises(ValueError, match="serves one adapter"):
        serve_mode(EngineConfig(serve="merged"), ["reasoner", "observer"])
    with pytest.raises(ValueError, match="in_process"):
        EngineConfig(serve="merged", in_process=False)


def test_merged_engine_starts_without_lora() -> None:
    assert "enable_lora" not in llm_kwargs(EngineConfig(serve="merged"), "m", False)
    assert llm_kwargs(EngineConfig(serve="lora"), "m", False)["enable_lora"] is True
