"""A learner group on real Ray actors (2 DeepSpeed ranks, ZeRO-2, the tiny text LM, no training):
every call runs on both ranks, only rank 0's answer travels back, and the adapter artifact stays in
the object store where rank 0's actor put it (the caller gets ``[ObjectRef]``).

Reference values are built here without DeepSpeed: the seeded LoRA init on the plainly loaded base
model (its export is byte-for-byte what the group must return), and the base model's log-probs of
the probe (LoRA B starts at 0, so the adapter does not change them yet).
"""

import pytest
import torch

from cluster.weight_sync import Probe
from learner.config import LearnerConfig
from rollout.adapter_artifact import AdapterArtifact

pytestmark = pytest.mark.ray

PROBE = Probe(prompt_ids=(1, 2, 3), target_ids=(40, 41, 42))


def reference(model_dir: str, cfg: LearnerConfig) -> tuple[AdapterArtifact, list[float]]:
    """(adapter artifact at version 1, step 0; probe log-probs) of the untrained adapter."""
    from pathlib import Path

    from peft import get_peft_model_state_dict

    from learner.export import adapter_artifact
    from learner.model import apply_lora, load_base_model

    base = load_base_model(model_dir, cfg.dtype)
    peft_model = apply_lora(base, cfg.lora, cfg.seed)
    files = adapter_artifact(get_peft_model_state_dict(peft_model), peft_model.peft_config["default"], role="policy",
                          version=1, base_model_id=Path(model_dir).name, step=0)
    ids = torch.tensor([PROBE.prompt_ids + PROBE.target_ids[:-1]])
    with torch.no_grad():
        logp = torch.log_softmax(peft_model(input_ids=ids).logits[0].float(), -1)
    P = len(PROBE.prompt_ids)
    return files, [float(logp[P - 1 + i, t]) for i, t in enumerate(PROBE.target_ids)]


def test_learner_group_returns_rank_0_results_only(ray_session, models_dir):
    ray = ray_session
    from cluster.learner_group import LearnerGroup
    from learner import rank_io

    text_lm = str(models_dir / "tiny-text-lm")
    cfg = LearnerConfig(zero_stage=2, micro_batch_size=2)
    want_files, want_logprobs = reference(text_lm, cfg)
    group = LearnerGroup("policy", cfg, text_lm, ranks=2, num_cpus=1, num_gpus=0)
    try:
        per_rank = group.ranks.run(rank_io.adapter_artifact, 1)  # every rank's own answer
        ref = group.adapter_ref(1)
        logprobs = group.probe_logprobs(PROBE)
        assert isinstance(ref, list) and len(ref) == 1 and isinstance(ref[0], ray.ObjectRef)
        artifact = ray.get(ref[0])
    finally:
        group.shutdown()
    assert per_rank[1] is None and per_rank[0] == want_files  # rank 1 took part, sent nothing
    assert artifact == want_files
    assert logprobs == pytest.approx(want_logprobs, abs=1e-5)
