"""ZeRO-3 builds the model partitioned (transformers' HfDeepSpeedConfig -> deepspeed.zero.Init
inside ``from_pretrained``), and adapters come from rank 0 only (real DeepSpeed, 2 ranks, the
offline tiny text LM).

* Right after ``build_policy_model`` under :func:`learner.deepspeed_engine.zero3_init` (before
  ``deepspeed.initialize``) each of 2 ranks holds half of the base model's 1,047,360 parameter
  elements (to a partition's padding), no full copy, and its slices equal the checkpoint's; LoRA
  sits on top, unpartitioned until the engine is built.
* The same model and batch give the same loss and update under ZeRO-3 as under ZeRO-2.
* :func:`learner.rank_io.adapter_artifact` answers rank 0's artifact (what ``export_adapter`` writes) and
  None on rank 1.
"""

import math

import pytest
import torch
from safetensors.torch import load as load_safetensors
from test_learner_training import random_batch

from learner.config import AlgoConfig, LearnerConfig, OptimConfig
from learner import rank_io
from learner.local_world import LocalLearnerGroup, LocalWorld, RankContext
from learner.metrics import flatten

pytestmark = pytest.mark.integration

# tiny-text-lm (Qwen2, vocab 3769, hidden 96, 3 layers, 3 heads of 32, 1 KV head, MLP 288, untied):
# embed 3769*96 + lm_head 3769*96 + final norm 96 + 3 x (q 96*96+96, k and v 96*32+32, o 96*96,
# gate/up/down 3*96*288, two norms 2*96 = 107,872 per layer) = 1,047,360.
TINY_TEXT_LM_PARAMS = 2 * 3769 * 96 + 96 + 3 * (96 * 96 + 96 + 2 * (96 * 32 + 32) + 96 * 96 + 3 * 96 * 288 + 2 * 96)


@pytest.fixture(scope="module")
def text_lm(models_dir):
    return str(models_dir / "tiny-text-lm")


@pytest.fixture(scope="module")
def world2():
    with LocalWorld(2) as w:
        yield w


def _partitioned_build(ctx: RankContext, model_dir: str) -> dict:
    """Build the policy model as LearnerRank does under ZeRO-3 and report what this rank holds:
    elements of its base-parameter partitions, of full tensors, the full count, and the largest
    difference between its partitions and the same slices of the plainly loaded checkpoint."""
    from learner.deepspeed_engine import init_world, zero3_init
    from learner.model import build_policy_model, load_base_model

    init_world(ctx.rank, ctx.world_size, ctx.master_addr, ctx.master_port, "gloo", ctx.rank)
    cfg = LearnerConfig(zero_stage=3)
    with zero3_init(cfg, ctx.world_size):
        model = build_policy_model(model_dir, cfg)
    plain = dict(load_base_model(model_dir, "fp32").named_parameters())
    base = {n.replace(".base_layer", ""): p for n, p in model.hf_model.named_parameters() if "lora_" not in n}
    lora = [p for n, p in model.hf_model.named_parameters() if "lora_" in n]
    worst = 0.0
    for name, p in base.items():
        part = p.ds_tensor.numel()
        flat = torch.nn.functional.pad(plain[name].detach().flatten(), (0, part * ctx.world_size - p.ds_numel))
        worst = max(worst, float((p.ds_tensor.flatten() - flat[ctx.rank * part:(ctx.rank + 1) * part]).abs().max()))
    return {"names_match": sorted(base) == sorted(plain), "all_zero": all(hasattr(p, "ds_id") for p in base.values()),
            "local": sum(p.ds_tensor.numel() for p in base.values()),
            "held_full": sum(p.data.numel() for p in base.values()),
            "full": sum(p.ds_numel for p in base.values()), "plain": sum(p.numel() for p in plain.values()),
            "worst": worst, "lora_plain": bool(lora) and not any(hasattr(p, "ds_id") for p in lora)}


def test_zero3_builds_the_model_partitioned(world2, text_lm):
    for rank, r in enumerate(world2.run(_partitioned_build, text_lm)):
        assert r["names_match"] and r["all_zero"], rank
        assert r["full"] == r["plain"] == TINY_TEXT_LM_PARAMS == 1_047_360
        assert r["held_full"] == 0  # no rank ever materialised a whole parameter after the build
        # each parameter split in 2 (ceil): half of the model plus at most one element per tensor
        assert TINY_TEXT_LM_PARAMS / 2 <= r["local"] <= TINY_TEXT_LM_PARAMS / 2 + 40 <= 0.6 * TINY_TEXT_LM_PARAMS
        assert r["worst"] == 0.0  # the partitions are the checkpoint's weights, loaded, not initialised
        assert r["lora_plain"]  # LoRA wrapped the partitioned model; deepspeed.initialize partitions it


def test_zero3_trains_like_zero2(world2, text_lm):
    algo = AlgoConfig(advantage_estimator="grpo", kl_coef=0.05, shuffle=False)
    runs = {}
    for stage in (2, 3):
        cfg = LearnerConfig(zero_stage=stage, micro_batch_size=2, algo=algo, optim=OptimConfig(optimizer="sgd", lr=0.1))
        group = LocalLearnerGroup(world2, f"z{stage}", cfg, text_lm)
        m = flatten(group.train_step(random_batch(7)))
        runs[stage] = (m, load_safetensors(group.adapter_ref(1).files["adapter_model.safetensors"]))
        group.shutdown()
    (m2, s2), (m3, s3) = runs[2], runs[3]
    assert m2["batch/samples"] == 6
    for k in ("loss/total", "loss/policy", "loss/kl", "policy/entropy", "optim/grad_norm"):
        assert m3[k] == pytest.approx(m2[k], abs=1e-6, rel=1e-5), k
    assert math.isfinite(m3["loss/total"]) and m3["optim/grad_norm"] > 0
    assert set(s2) == set(s3) and max(float((s2[k] - s3[k]).abs().max()) for k in s2) < 1e-6
    assert max(float(v.abs().max()) for k, v in s3.items() if "lora_B" in k) > 1e-4  # it trained


def _adapter_by_rank(rank, out_dir: str) -> tuple:
    return rank_io.adapter_artifact(rank, 1), rank_io.export_adapter(rank, out_dir, 1)


def test_adapter_files_come_from_rank_0_only(world2, text_lm, tmp_path):
    from pathlib import Path

    cfg = LearnerConfig(zero_stage=3, micro_batch_size=2, optim=OptimConfig(lr=1e-2))
    group = LocalLearnerGroup(world2, "adapter", cfg, text_lm)
    group.train_step(random_batch(8))
    (art0, exp0), (art1, exp1) = group.ranks.run(_adapter_by_rank, str(tmp_path / "v1"))
    files0 = art0.files
    via_group = group.adapter_ref(1)
    group.shutdown()
    assert art1 is None and exp1 is None  # rank 1 joined the gather, returned nothing
    d = Path(exp0.path)
    assert sorted(files0) == sorted(p.name for p in d.iterdir() if p.name != "STABLE")
    assert all((d / name).read_bytes() == data for name, data in files0.items())
    assert via_group == art0
