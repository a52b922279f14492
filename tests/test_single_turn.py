"""Group sampling of single replies on the scripted fake engine."""

import dataclasses
import math

import pytest
from pydantic import ValidationError

from rewards import ExactMatch
from rollout.config import AnswerFormat, RoleConfig, SamplingConfig, SingleTurnConfig
from rollout.engine import AdapterRef
from rollout.engine.fake import FakeEngine
from rollout.episode_arrow import image_hash
from rollout.single_turn import derive_seed, extract_answer, format_choices, sample_groups
from rollout.types import Task

pytestmark = pytest.mark.unit

LOGP = -math.log(102)  # the fake tokenizer's vocabulary: 6 special + 95 printable ASCII + "\n"


class CountingEngine(FakeEngine):
    """Fake engine that records every batch of requests it was given."""

    def __init__(self, script, **kw):
        super().__init__(script, **kw)
        self.calls = []

    def generate(self, requests):
        self.calls.append(list(requests))
        return super().generate(requests)


def colours(prompt, adapter, version, k):
    # sample k answers "blue" when k is even, "red" when odd
    return f"<think>k{k}</think><answer>{'blue' if k % 2 == 0 else 'red'}</answer>"


TASKS = [
    Task("t1", "What colour?", "blue", image=b"png-1"),
    Task("t2", "Which one?", "red", choices=("blue", "red")),
]
CFG = SingleTurnConfig(policy=RoleConfig(adapter="policy", system_prompt="S",
                                         sampling=SamplingConfig(max_tokens=64)),
                       success_component="exact_match")


def make_engine():
    eng = CountingEngine(colours, image_tokens=4)
    eng.load_adapter(AdapterRef("policy", 1, "/x"))
    eng.load_adapter(AdapterRef("policy", 2, "/x"))
    return eng


def test_one_call_gives_g_episodes_per_task_sharing_group_id():
    eng = make_engine()
    batch = sample_groups(eng, TASKS, CFG, group_size=3, reward=ExactMatch(), step=7, seed=5)
    # one engine call holding one request per task, each with n = G = 3
    assert len(eng.calls) == 1 and [r.sampling.n for r in eng.calls[0]] == [3, 3]
    assert [r.sampling.seed for r in eng.calls[0]] == [derive_seed(5, 7, "t1"), derive_seed(5, 7, "t2")]
    eps = batch.episodes
    assert [e.group_id for e in eps] == ["t1@7"] * 3 + ["t2@7"] * 3
    assert [e.episode_id for e in eps] == ["t1@7#0", "t1@7#1", "t1@7#2", "t2@7#0", "t2@7#1", "t2@7#2"]
    assert [e.answer for e in eps] == ["blue", "red", "blue"] * 2
    # t1's reference is "blue" (k = 0, 2 right); t2's is "red" (k = 1 right)
    assert [e.reward for e in eps] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert [e.success for e in eps] == [True, False, True, False, True, False]
    assert eps[1].reward_reason == "wrong answer 'red'"
    assert eps[0].reward_components == {"exact_match": 1.0}
    assert all(e.policy_versions == {"policy": 2} for e in eps)
    # the image is stored once for the whole group
    assert batch.images == {image_hash(b"png-1"): b"png-1"}


def test_turn_records_prompt_as_seen_outputs_logprobs_version():
    eng = make_engine()
    batch = sample_groups(eng, TASKS, CFG, group_size=2)
    tok = eng.tokenizer
    t = batch.episodes[0].turns[0]
    expected_prompt = (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * 4  # one placeholder expanded to the engine's 4 image tokens
        + "<|vision_end|>What colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(t.prompt_ids) == expected_prompt
    assert t.role == "policy" and t.adapter_version == 2 and t.trainable
    reply = "<think>k0</think><answer>blue</answer>"
    assert t.text == reply and tok.decode(t.output_ids) == reply + "<|im_end|>"
    assert t.output_logprobs == pytest.approx([LOGP] * (len(reply) + 1))
    assert t.image_hashes == (image_hash(b"png-1"),)
    t2 = batch.episodes[2].turns[0]  # task t2 has choices and no image
    assert t2.image_hashes == () and eng.image_token_id not in t2.prompt_ids
    assert "Which one?\nOptions: (A) blue (B) red<|im_end|>" in tok.decode(t2.prompt_ids)


def test_length_cut_and_unparsable_answer():
    eng = make_engine()
    cfg = CFG.model_copy(update={"policy": RoleConfig(adapter="policy", sampling=SamplingConfig(max_tokens=10))})
    [e] = sample_groups(eng, TASKS[:1], cfg, group_size=1, reward=ExactMatch()).episodes
    # 10 tokens of "<think>k0</think>..." = "<think>k0<": no <answer> block
    assert e.turns[0].text == "<think>k0<" and e.finish_reason == "length"
    assert (e.answer, e.reward, e.success) == ("", 0.0, False)
    assert e.reward_reason == "no answer in the expected format"  # the root cause, not ExactMatch's "empty answer"


def without_latency(batch):
    return [dataclasses.replace(e, turns=tuple(dataclasses.replace(t, latency_s=0.0) for t in e.turns))
            for e in batch.episodes]


def test_deterministic_replay_and_step_dependent_ids():
    a = sample_groups(make_engine(), TASKS, CFG, 2, step=1)
    b = sample_groups(make_engine(), TASKS, CFG, 2, step=1)
    c = sample_groups(make_engine(), TASKS, CFG, 2, step=2)
    # equal apart from the measured wall-clock latency
    assert without_latency(a) == without_latency(b)
    assert {e.episode_id for e in a.episodes}.isdisjoint(e.episode_id for e in c.episodes)


def test_extract_answer_forms():
    fmt = AnswerFormat()
    assert extract_answer("<answer> a </answer> then <answer>b</answer>", fmt) == "b"  # last match
    assert extract_answer("no block", fmt) is None
    assert extract_answer("  whole text\n", AnswerFormat(pattern=None)) == "whole text"
    assert extract_answer("ANSWER: Cat", AnswerFormat(pattern=r"answer:\s*(\w+)", flags="i")) == "Cat"
    assert format_choices(()) == ""


def test_config_rejects_unknown_keys_and_placeholders():
    with pytest.raises(ValidationError, match="extra"):
        SingleTurnConfig(polcy=RoleConfig())
    with pytest.raises(ValidationError, match=r"unknown placeholders \['answer'\]"):
        SingleTurnConfig(prompt_template="{question} {answer}")
    with pytest.raises(ValidationError, match="capturing group"):
        AnswerFormat(pattern="<answer>")
    # field docstrings become the schema's descriptions
    assert SamplingConfig.model_json_schema()["properties"]["max_tokens"]["description"].startswith("Token budget")
