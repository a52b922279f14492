"""ChatML token-space prompts and the deterministic fake engine."""

import math

import pytest

from rollout.chat import ChatFormat
from rollout.engine import AdapterRef, AdapterRejected, Request, Sampling
from rollout.engine.fake import FakeEngine

pytestmark = pytest.mark.unit


def echo_version(prompt, adapter, version, k):
    return f"v{version}s{k}"


def test_prompt_layout_and_image_expansion():
    eng = FakeEngine(echo_version, image_tokens=3)
    chat = ChatFormat(eng.tokenizer)
    ids = chat.prompt("sys", "hi", num_images=1)
    text = eng.tokenizer.decode(ids)
    assert text == (
        "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )
    [[c]] = eng.generate([Request(tuple(ids), images=(b"img",))])
    # one placeholder becomes three; everything else unchanged
    assert len(c.prompt_ids) == len(ids) + 2
    assert c.prompt_ids.count(eng.image_token_id) == 3


def test_group_sampling_logprobs_and_finish():
    eng = FakeEngine(echo_version)
    [group] = eng.generate([Request((1, 2), sampling=Sampling(n=3, max_tokens=8))])
    assert [c.text for c in group] == ["v0s0", "v0s1", "v0s2"]
    # "v0s0" is 4 chars + <|im_end|> = 5 tokens, each log(1/102): vocab = 6 special + 95 ascii + "\n"
    assert len(eng.tokenizer) == 102
    assert group[0].logprobs == pytest.approx([-math.log(102)] * 5)
    assert group[0].finish_reason == "stop"
    [[cut]] = eng.generate([Request((1,), sampling=Sampling(max_tokens=2))])
    assert (cut.text, cut.finish_reason) == ("v0", "length")


def test_close_reply_adds_end_token_only_when_missing():
    eng = FakeEngine(echo_version)
    chat = ChatFormat(eng.tokenizer)
    end, nl = chat.end_id, eng.tokenizer.encode("\n")[0]
    assert chat.close_reply([40, end]) == [nl]
    assert chat.close_reply([40]) == [end, nl]


def test_adapter_versions_advance_and_old_never_served_again():
    eng = FakeEngine(echo_version, max_rank=16)
    eng.load_adapter(AdapterRef("policy", 1, "/x"))
    eng.generate([Request((1,), adapter="policy")])
    eng.load_adapter(AdapterRef("policy", 2, "/x"))
    [[c]] = eng.generate([Request((1,), adapter="policy")])
    assert (c.text, c.adapter_version) == ("v2s0", 2)
    assert eng.served == [("policy", 1), ("policy", 2)]
    with pytest.raises(AdapterRejected, match="rank 32"):
        eng.load_adapter(AdapterRef("policy", 3, "/x"), rank=32)
    with pytest.raises(AdapterRejected, match="not newer"):
        eng.load_adapter(AdapterRef("policy", 2, "/x"))
    assert eng.adapter_versions() == {"policy": 2}
