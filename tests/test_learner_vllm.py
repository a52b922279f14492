"""Learner and rollout engine agree: vLLM (CPU, fp32) serving the learner's exported adapter gives
the same log-probs as the learner's own forward, within 1e-4, on the tiny Qwen2-VL:

* sampled replies to an image prompt (vLLM expands the image placeholder; the learner re-encodes
  the image bytes with the model's image processor and builds M-RoPE positions from
  ``mm_token_type_ids``) -- the PPO ratio starts at 1 only if these agree;
* a text-only sequence (the weight-sync probe path; the learner pads its micro batch with a dummy
  image row, which must not change the real row), with the adapter and with the base model.
"""

import io

import numpy as np
import pytest
from PIL import Image

from learner.config import AlgoConfig, LearnerConfig, OptimConfig
from learner.local_world import LocalLearnerGroup, LocalWorld
from rollout.chat import ChatFormat
from rollout.episode_arrow import EpisodeBatch, image_hash
from rollout.types import Episode, Turn

pytestmark = pytest.mark.integration

TOL = 1e-4


@pytest.fixture(scope="module")
def vlm(models_dir):
    return str(models_dir / "tiny-qwen2-vl")


def png(seed: int, h: int = 56, w: int = 84) -> bytes:
    img = Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def episodes_from(completions, image: bytes | None, role: str = "observer") -> EpisodeBatch:
    hashes = (image_hash(image),) if image else ()
    eps = tuple(Episode(f"e{i}", "g", "t", (Turn(role, c.prompt_ids, c.output_ids, c.logprobs, 1, image_hashes=hashes),),
                        reward=float(i % 2))
                for i, c in enumerate(completions))
    return EpisodeBatch(eps, {hashes[0]: image} if image else {})


def test_vllm_logprobs_equal_learner_logprobs(vlm, tmp_path):
    from rollout.engine.base import AdapterRef, Request, Sampling
    from rollout.engine.config import EngineConfig
    from rollout.engine.vllm_engine import VLLMEngine

    engine = VLLMEngine(vlm, EngineConfig(kv_cache_gib=0.25, max_model_len=1024, max_lora_rank=8, max_loras=2, seed=0))
    fmt = ChatFormat(engine.tokenizer)
    image = png(1)
    prompt = fmt.prompt("be brief", "what is in the picture?", num_images=1)
    request = lambda adapter, seed: Request(tuple(prompt), (image,), adapter, Sampling(n=4, temperature=1.0, max_tokens=8, seed=seed))  # noqa: E731

    cfg = LearnerConfig(role="observer", micro_batch_size=2, algo=AlgoConfig(advantage_estimator="grpo"), optim=OptimConfig(lr=2e-2))
    with LocalWorld(1) as world:
        learner = LocalLearnerGroup(world, "obs", cfg, vlm)
        learner.train_step(episodes_from(engine.generate([request(None, 0)])[0], image))  # a non-trivial adapter
        out = learner.export_adapter(tmp_path / "observer" / "v1", version=1)
        engine.load_adapter(AdapterRef("observer", 1, out.path, out.sha256))

        sampled = engine.generate([request("observer", 1)])[0]
        assert all(c.adapter_version == 1 for c in sampled)
        got = learner.logprobs(episodes_from(sampled, image))

        text_prompt = fmt.prompt(None, "say something")
        target = [int(t) for t in sampled[0].output_ids[:5]]
        probe = EpisodeBatch((Episode("p", "p", "p", (Turn("observer", tuple(text_prompt), tuple(target), (0.0,) * len(target), 1),)),))
        probe_adapter, probe_base = learner.logprobs(probe), learner.logprobs(probe, use_adapter=False)

    diffs = [abs(a - b) for c, lp in zip(sampled, got) for a, b in zip(c.logprobs, lp)]
    print(f"image replies: {len(diffs)} tokens, max |vLLM - learner| = {max(diffs):.2e}")
    assert len(diffs) >= 4 and max(diffs) < TOL
    assert np.allclose(engine.score(text_prompt, target, "observer"), probe_adapter[0], atol=TOL)
    assert np.allclose(engine.score(text_prompt, target, None), probe_base[0], atol=TOL)
    assert not np.allclose(probe_adapter[0], probe_base[0], atol=1e-3)  # the adapter matters
