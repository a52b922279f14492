"""learner.config validation, LoRA target selection and the learning-rate schedule (hand-computed)."""

import math
import re

import pytest
import torch
from pydantic import ValidationError

from learner.config import AlgoConfig, LearnerConfig, LoraConfig, OptimConfig, SFTConfig
from learner.optim import lr_multiplier, param_groups

pytestmark = pytest.mark.unit


def test_unknown_keys_and_values_are_errors():
    with pytest.raises(ValidationError, match="extra"):
        LearnerConfig.model_validate({"zero_stag": 3})
    with pytest.raises(ValidationError, match="unknown advantage estimator"):
        AlgoConfig(advantage_estimator="ppo2")
    with pytest.raises(ValidationError, match="unknown loss aggregation"):
        AlgoConfig(loss_agg="mean")
    with pytest.raises(ValidationError):
        LearnerConfig(zero_stage=1)
    with pytest.raises(ValidationError, match="advantage_level='turn'"):
        LearnerConfig(algo=AlgoConfig(lambda_cot=0.5, advantage_level="token"))


def test_every_field_is_documented():
    for cls in (LoraConfig, OptimConfig, AlgoConfig, SFTConfig, LearnerConfig):
        undocumented = [n for n, f in cls.model_fields.items() if not f.description]
        assert undocumented == [], (cls.__name__, undocumented)


def test_value_head_only_for_value_estimators():
    assert AlgoConfig(advantage_estimator="gae").needs_values
    assert not AlgoConfig(advantage_estimator="grpo").needs_values
    assert AlgoConfig(kl_coef=0.1).needs_reference and not AlgoConfig().needs_reference


@pytest.mark.parametrize("path,lm,vision", [
    ("model.language_model.layers.0.self_attn.q_proj", True, False),
    ("model.layers.2.mlp.down_proj", True, False),
    ("model.visual.blocks.0.mlp.gate_proj", False, False),   # Qwen2.5-VL tower MLP: excluded
    ("model.visual.blocks.0.attn.qkv", False, True),
    ("model.visual.merger.mlp.0", False, False),
    ("lm_head", False, False),
])
def test_target_regex(path, lm, vision):
    assert bool(re.fullmatch(LoraConfig().target_regex(), path)) == lm
    with_tower = LoraConfig(vision_target_modules=("qkv", "proj"))
    assert bool(re.fullmatch(with_tower.target_regex(), path)) == (lm or vision)


def test_lr_schedule_by_hand():
    # warm-up 2 steps: (s + 1) / 3 -> 1/3, 2/3; cosine over total - warmup = 4 steps to floor 0.1:
    # step 2: progress 0 -> 1; step 4: progress 0.5 -> 0.1 + 0.9 * 0.5 = 0.55; step 6+: 0.1
    cos = OptimConfig(schedule="cosine", warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    got = [lr_multiplier(s, cos) for s in range(8)]
    want = [1 / 3, 2 / 3, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 0.55,
            0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.1, 0.1]
    assert got == pytest.approx(want)
    lin = OptimConfig(schedule="linear", total_steps=4)
    assert [lr_multiplier(s, lin) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert lr_multiplier(100, OptimConfig()) == 1.0


def test_param_groups_split_value_head():
    m = torch.nn.Module()
    m.adapter = torch.nn.Linear(2, 2)
    m.value_head = torch.nn.Linear(2, 1)
    m.frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    groups = param_groups(m, OptimConfig(lr=1e-5, value_lr=1e-4))
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == [("adapter", 1e-5, 2), ("value_head", 1e-4, 2)]


def test_reinforce_pp_baseline_with_per_turn_rewards_at_turn_level_is_refused():
    """Issue 12: at turn level per-turn rewards reach the estimator as dense rewards only (no
    outcome score), so REINFORCE++-baseline would silently be plain REINFORCE++."""
    with pytest.raises(ValidationError, match="advantage_estimator: 'reinforce_pp_baseline' needs an outcome"):
        AlgoConfig(advantage_estimator="reinforce_pp_baseline", reward_placement="per_turn")
    # the sound combinations stay: an outcome score, or per-turn scores as token-level rows' scores
    AlgoConfig(advantage_estimator="reinforce_pp_baseline", reward_placement="outcome")
    AlgoConfig(advantage_estimator="reinforce_pp_baseline", reward_placement="per_turn", advantage_level="token")
    AlgoConfig(advantage_estimator="reinforce_pp", reward_placement="per_turn")


def test_duet_check_refuses_reinforce_pp_baseline_per_turn_naming_the_field(capsys):
    from cluster.cli import main

    override = "roles.policy.learner.algo.advantage_estimator='reinforce_pp_baseline'"
    code = main(["check", "numberline_ppo", "--set", override])
    err = capsys.readouterr().err
    assert code == 2
    assert "roles.policy.learner.algo: Value error, advantage_estimator: 'reinforce_pp_baseline'" in err
