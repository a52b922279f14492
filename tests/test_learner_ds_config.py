"""The DeepSpeed config pass-through (``learner.deepspeed``): merged into the learner's own entries,
keys the typed fields own refused at load naming the field to use (learner.ds_config, pure)."""

import pytest
from pydantic import ValidationError

from learner.config import LearnerConfig, OptimConfig
from learner.ds_config import deep_merge, ds_config

pytestmark = pytest.mark.unit


def test_default_is_the_typed_config_alone():
    cfg = LearnerConfig(zero_stage=3, micro_batch_size=2, dtype="bf16", optim=OptimConfig(grad_clip=0.5))
    assert cfg.deepspeed == {}
    assert ds_config(cfg, world_size=4) == {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 8,
        "managed_gradient_accumulation": False, "gradient_clipping": 0.5,
        "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
                              "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True, "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def test_pass_through_merges_nested_entries():
    cfg = LearnerConfig.model_validate({"zero_stage": 2, "deepspeed": {
        "zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memory": True},
                              "reduce_bucket_size": 5e8, "overlap_comm": True},
        "communication_data_type": "fp32"}})
    got = ds_config(cfg, world_size=2)
    assert got["zero_optimization"] == {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                                        "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                        "reduce_bucket_size": 5e8}
    assert got["communication_data_type"] == "fp32"
    assert got["bf16"] == {"enabled": False} and got["train_batch_size"] == 8


@pytest.mark.parametrize("extra, message", [
    ({"zero_optimization": {"stage": 3}}, "deepspeed.zero_optimization.stage: set learner.zero_stage instead"),
    ({"bf16": {"enabled": True}}, "deepspeed.bf16.enabled: set learner.dtype instead"),
    ({"bf16": True}, "deepspeed.bf16: set learner.dtype instead"),
    ({"gradient_clipping": 0.1}, "deepspeed.gradient_clipping: set learner.optim.grad_clip instead"),
    ({"train_micro_batch_size_per_gpu": 8}, "deepspeed.train_micro_batch_size_per_gpu: set learner.micro_batch_size instead"),
    ({"train_batch_size": 64}, "deepspeed.train_batch_size: set learner.micro_batch_size"),
    ({"gradient_accumulation_steps": 4}, "deepspeed.gradient_accumulation_steps: set learner.algo.minibatches"),
    ({"optimizer": {"type": "Adam"}}, "deepspeed.optimizer: set learner.optim instead"),
    ({"scheduler": {"type": "WarmupLR"}}, "deepspeed.scheduler: set learner.optim"),
])
def test_owned_keys_are_refused_at_load_naming_the_field(extra, message):
    with pytest.raises(ValidationError) as err:
        LearnerConfig.model_validate({"deepspeed": extra})
    assert err.value.errors()[0]["loc"] == ("deepspeed",)
    assert message in str(err.value)


def test_every_owned_key_is_named_in_one_error():
    with pytest.raises(ValidationError) as err:
        LearnerConfig.model_validate({"deepspeed": {"zero_optimization": {"stage": 3, "reduce_bucket_size": 1},
                                                    "optimizer": {}, "communication_data_type": "fp32"}})
    text = str(err.value)
    assert "deepspeed.zero_optimization.stage: set learner.zero_stage instead" in text
    assert "deepspeed.optimizer: set learner.optim instead" in text
    assert "reduce_bucket_size" not in text.split("input_value")[0]  # a pass-through key is not refused


def test_ds_config_refuses_owned_keys_of_an_unvalidated_config():
    cfg = LearnerConfig.model_construct(**{**dict(LearnerConfig()), "deepspeed": {"gradient_clipping": 2.0}})
    with pytest.raises(ValueError, match="deepspeed.gradient_clipping: set learner.optim.grad_clip instead"):
        ds_config(cfg, world_size=1)


def test_deep_merge_leaves_its_inputs_alone():
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    extra = {"a": {"c": {"f": 4}}, "e": {"g": 5}}
    assert deep_merge(base, extra) == {"a": {"b": 1, "c": {"d": 2, "f": 4}}, "e": {"g": 5}}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": 3} and extra == {"a": {"c": {"f": 4}}, "e": {"g": 5}}
