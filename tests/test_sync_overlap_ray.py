"""A sync does not wait behind a rollout (issue 13, item 4), on a real rollout-worker actor: vLLM on
the tiny Qwen2-VL (LoRA serving), a RolloutWorker in a Ray actor with the sync concurrency group.

While a long rollout runs on adapter v1, a sync to v2 is sent to the same actor: it loads v2 and
scores the probe between the rollout's engine steps and answers before the rollout ends; the
rollout's episodes all say v1 (their requests were added under v1 and finished on it), the next
rollout's all say v2, and the probe scored mid-rollout equals the probe scored on the idle engine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from cluster.weight_sync import Probe
from rollout.adapter_artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterArtifact

pytestmark = [pytest.mark.ray, pytest.mark.integration]

MODEL = "tiny-qwen2-vl"
PROBE = Probe(prompt_ids=tuple(range(20, 40)), target_ids=tuple(range(40, 56)))


def make_adapter(model_dir: Path, out: Path, seed: int) -> AdapterArtifact:
    """A PEFT LoRA (r=8) on the decoder's q/v/up projections with random N(0, 0.5) lora_B
    (:func:`test_vllm_engine.make_adapter`), as the artifact a learner publishes."""
    from test_vllm_engine import make_adapter as peft_adapter

    peft_adapter(model_dir, out, seed)
    files = {f: (out / f).read_bytes() for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    return AdapterArtifact.build("policy", seed, MODEL, files)


class Factory:
    """Builds the actor's worker: single-turn, adapter "policy", long replies (a rollout of seconds)."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir

    def __call__(self):
        from rollout.config import RolloutConfig
        from rollout.engine.config import EngineConfig
        from rollout.engine.vllm_engine import VLLMEngine
        from rollout.worker import RolloutWorker

        config = RolloutConfig.model_validate({"kind": "single_turn", "group_size": 4, "transcripts": False,
                                               "single_turn": {"policy": {"adapter": "policy", "sampling": {
                                                   "temperature": 1.0, "max_tokens": 120}}}})
        engine = VLLMEngine(self.model_dir, EngineConfig(serve="lora", kv_cache_gib=0.25, max_model_len=512,
                                                         max_lora_rank=8, max_loras=2, seed=0))
        return RolloutWorker(config, {"policy": engine})


def test_a_sync_during_a_rollout_answers_first_and_versions_stay_exact(ray_session, models_dir, tmp_path):
    ray = ray_session
    from cluster.actors import rollout_worker_actor
    from rollout.types import Task

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    v1, v2 = (make_adapter(models_dir / MODEL, tmp_path / f"v{s}", s) for s in (1, 2))
    actor = rollout_worker_actor(num_cpus=0.5).remote(Factory(str(models_dir / MODEL)), "w0", str(tmp_path / "store"))
    try:
        assert ray.get(actor.sync_adapter.remote(v1, PROBE), timeout=120).version == 1
        tasks = [Task(f"t{i}", f"Count from {i} to {i + 50}, one number a line:", "x") for i in range(16)]
        rollout = actor.rollout.remote(tasks, {"policy": 1}, step=0)
        time.sleep(1.0)  # the rollout's requests are in the engine by now (it runs for several seconds)
        t0 = time.perf_counter()
        sync = actor.sync_adapter.remote(v2, PROBE)
        ready, _ = ray.wait([sync, rollout], num_returns=1, timeout=120)
        assert ready == [sync], "the sync waited for the rollout"
        ack, sync_s = ray.get(sync), time.perf_counter() - t0
        batch, stats = ray.get(rollout, timeout=120)
        rest_s = time.perf_counter() - t0
        assert ack.version == 2 and not ack.error and len(ack.probe_logprobs) == len(PROBE.target_ids)
        assert {t.adapter_version for e in batch.episodes for t in e.turns} == {1}  # all added under v1
        assert len(batch.episodes) == 64
        idle = ray.get(actor.sync_adapter.remote(v2, PROBE))  # already served: only the probe, on an idle engine
        assert max(abs(a - b) for a, b in zip(ack.probe_logprobs, idle.probe_logprobs)) <= 1e-6
        after, _ = ray.get(actor.rollout.remote(tasks[:2], {"policy": 2}, step=1), timeout=120)
        assert {t.adapter_version for e in after.episodes for t in e.turns} == {2}
        print(f"sync during the rollout: {sync_s:.3f} s; rollout finished {rest_s:.2f} s after the sync "
              f"started (rollout {stats.wall_s:.2f} s)")
    finally:
        ray.kill(actor)
