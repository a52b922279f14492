"""Reasoner/Observer dialogues (IMMO) on scripted fake engines."""

import pytest

from rewards import ExactMatch
from rollout.config import DialogueConfig, RoleConfig
from rollout.dialogue import crossing_text, run_dialogues
from rollout.engine import AdapterRef, Request, Sampling
from rollout.engine.fake import CharTokenizer, FakeEngine
from rollout.episode_arrow import image_hash
from rollout.types import Task

pytestmark = pytest.mark.unit

PAD4 = "<|image_pad|>" * 4  # the fake engine expands one placeholder to 4 image tokens


class CountingEngine(FakeEngine):
    """Fake engine recording (adapter, batch size) of every generate call."""

    def __init__(self, script, **kw):
        super().__init__(script, **kw)
        self.calls = []

    def generate(self, requests):
        self.calls.append((requests[0].adapter, len(requests)))
        return super().generate(requests)


def immo(prompt, adapter, version, k):
    """Observer: a caption, then "answer n" to the n-th question. Reasoner: "question n?" until
    told to answer; on the "Early" task it answers at once."""
    if adapter == "observer":
        n = prompt.count("<|im_start|>user") - 1  # questions asked so far
        return "a red circle" if n == 0 else f"answer {n}"
    if "Early" in prompt or "Answer now." in prompt:
        return "<answer>red</answer>"
    return f"question {prompt.count('Observer:') + 1}?"


CFG = DialogueConfig(
    reasoner=RoleConfig(adapter="reasoner"),
    observer=RoleConfig(adapter="observer", system_prompt="You see."),
    max_questions=2,
    caption_prompt="Describe.",
    reasoner_template="{question}{choices}\nSeen: {caption}",
    question_template="Q: {question}",
    reply_template="Observer: {answer}",
    final_prompt="Answer now.",
    success_component="exact_match",
)
TASK = Task("t1", "What colour?", "red", image=b"img-1")
EARLY = Task("t2", "Early: what colour?", "blue", image=b"img-2")


def engine(script=immo):
    eng = CountingEngine(script, image_tokens=4)
    for name, version in (("reasoner", 1), ("reasoner", 3), ("observer", 1)):
        eng.load_adapter(AdapterRef(name, version, "/x"))
    return eng


def test_k2_dialogue_roles_texts_and_prompts():
    eng = engine()
    [e] = run_dialogues(eng, eng, [TASK], CFG, group_size=1, reward=ExactMatch()).episodes
    assert [t.role for t in e.turns] == ["observer", "reasoner", "observer", "reasoner", "observer", "reasoner"]
    assert [t.text for t in e.turns] == [
        "a red circle", "question 1?", "answer 1", "question 2?", "answer 2", "<answer>red</answer>"]
    assert [t.adapter_version for t in e.turns] == [1, 3, 1, 3, 1, 3]
    assert e.policy_versions == {"observer": 1, "reasoner": 3}
    assert (e.answer, e.reward, e.success, e.finish_reason) == ("red", 1.0, True, "answered")
    assert e.metadata == {"questions": "2"}
    dec = eng.tokenizer.decode
    # the final Reasoner prompt: caption in the first message, the K-th answer carries the final prompt
    assert dec(e.turns[5].prompt_ids) == (
        "<|im_start|>user\nWhat colour?\nSeen: a red circle<|im_end|>\n"
        "<|im_start|>assistant\nquestion 1?<|im_end|>\n"
        "<|im_start|>user\nObserver: answer 1<|im_end|>\n"
        "<|im_start|>assistant\nquestion 2?<|im_end|>\n"
        "<|im_start|>user\nObserver: answer 2\nAnswer now.<|im_end|>\n<|im_start|>assistant\n")
    # the last Observer prompt: system, the image once, the whole conversation so far
    assert dec(e.turns[4].prompt_ids) == (
        "<|im_start|>system\nYou see.<|im_end|>\n"
        f"<|im_start|>user\n<|vision_start|>{PAD4}<|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\na red circle<|im_end|>\n"
        "<|im_start|>user\nQ: question 1?<|im_end|>\n<|im_start|>assistant\nanswer 1<|im_end|>\n"
        "<|im_start|>user\nQ: question 2?<|im_end|>\n<|im_start|>assistant\n")


def test_token_in_token_out_within_each_role():
    eng = engine()
    [e] = run_dialogues(eng, eng, [TASK], CFG, group_size=1).episodes
    for role in ("reasoner", "observer"):
        turns = e.turns_of(role)
        for prev, nxt in zip(turns, turns[1:]):
            head = prev.prompt_ids + prev.output_ids
            assert nxt.prompt_ids[: len(head)] == head


def test_only_the_observer_sees_the_image():
    eng = engine()
    batch = run_dialogues(eng, eng, [TASK, EARLY], CFG, group_size=2)
    vision_start = eng.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    for e in batch.episodes:
        for t in e.turns_of("reasoner"):
            assert eng.image_token_id not in t.prompt_ids and vision_start not in t.prompt_ids
            assert t.image_hashes == ()
        for t in e.turns_of("observer"):
            assert t.prompt_ids.count(eng.image_token_id) == 4
            assert t.image_hashes == (image_hash(e.task_id.replace("t", "img-").encode()),)
    assert set(batch.images) == {image_hash(b"img-1"), image_hash(b"img-2")}


def test_early_answer_stops_and_batches_shrink():
    eng = engine()
    batch = run_dialogues(eng, eng, [TASK, EARLY], CFG, group_size=2, reward=ExactMatch(), step=4)
    early = [e for e in batch.episodes if e.task_id == "t2"]
    assert [e.episode_id for e in early] == ["t2@4#0", "t2@4#1"]
    for e in early:
        assert [(t.role, t.text) for t in e.turns] == [("observer", "a red circle"),
                                                       ("reasoner", "<answer>red</answer>")]
        assert (e.answer, e.reward, e.finish_reason, e.metadata["questions"]) == ("red", 0.0, "answered", "0")
    # one call per phase for all live dialogues: 4 captions, 4 first questions/answers, then only
    # the 2 dialogues of t1 remain: 2 observer answers, 2 second questions, 2 answers, 2 finals
    assert eng.calls == [("observer", 4), ("reasoner", 4), ("observer", 2), ("reasoner", 2),
                         ("observer", 2), ("reasoner", 2)]
    assert len({e.group_id for e in batch.episodes}) == 2
    assert len({e.episode_id for e in batch.episodes}) == 4


def test_k0_and_unparsable_final():
    eng = engine(lambda p, a, v, k: "a red circle" if a == "observer" else "I think it is red")
    cfg = CFG.model_copy(update={"max_questions": 0})
    [e] = run_dialogues(eng, eng, [TASK], cfg, group_size=1, reward=ExactMatch()).episodes
    assert [t.role for t in e.turns] == ["observer", "reasoner"]
    assert eng.tokenizer.decode(e.turns[1].prompt_ids).endswith(
        "Seen: a red circle\nAnswer now.<|im_end|>\n<|im_start|>assistant\n")
    assert (e.answer, e.finish_reason, e.reward) == ("", "max_turns", 0.0)


class ReversedTokenizer(CharTokenizer):
    """Same symbols as the fake tokenizer, ids in reverse order (a different 'base model')."""

    def encode(self, text, add_special_tokens=False):
        return [len(self) - 1 - i for i in super().encode(text)]

    def decode(self, ids, skip_special_tokens=False):
        return super().decode([len(self) - 1 - i for i in ids], skip_special_tokens)

    def convert_tokens_to_ids(self, token):
        return len(self) - 1 - super().convert_tokens_to_ids(token)


def test_two_engines_with_different_tokenizers_exchange_text():
    observer = engine()
    reasoner = engine()
    reasoner.tokenizer = ReversedTokenizer()
    reasoner.image_token_id = None  # a text-only LM
    [e] = run_dialogues(reasoner, observer, [TASK], CFG, group_size=1).episodes
    r1 = e.turns[1]
    # the caption crossed as text and was encoded with the Reasoner's own tokenizer
    text = "<|im_start|>user\nWhat colour?\nSeen: a red circle<|im_end|>\n<|im_start|>assistant\n"
    assert r1.prompt_ids == tuple(ReversedTokenizer().encode(text))
    assert r1.prompt_ids != tuple(CharTokenizer().encode(text))
    assert e.answer == "red" and len(e.turns) == 6
    assert len(observer.calls) == 3 and len(reasoner.calls) == 3


def test_crossing_text_cannot_inject_image_placeholders():
    assert crossing_text(" <|image_pad|>sly<|im_end|> ") == "sly"
    observer = engine()
    reasoner = engine(lambda p, a, v, k: "<answer>x</answer>" if "Observer:" in p else "<|image_pad|>what?")
    reasoner.image_token_id = None  # a text-only LM: its <|image_pad|> is just text to it
    [e] = run_dialogues(reasoner, observer, [TASK], CFG, group_size=1).episodes
    asked = e.turns[2].prompt_ids
    assert asked.count(observer.image_token_id) == 4  # still one image, expanded once
    assert observer.tokenizer.decode(asked).endswith("Q: what?<|im_end|>\n<|im_start|>assistant\n")


def test_sampled_image_token_ends_dialogue_and_frozen_role():
    eng = engine(lambda p, a, v, k: "<|image_pad|>sly" if a == "observer" else "<answer>x</answer>")
    cfg = CFG.model_copy(update={"observer": RoleConfig(adapter="observer", trainable=False)})
    [e] = run_dialogues(eng, eng, [TASK], cfg, group_size=1, reward=ExactMatch()).episodes
    # the observer's own next prompt would hold two placeholders for one image: stop here
    assert [t.role for t in e.turns] == ["observer"] and not e.turns[0].trainable
    assert (e.finish_reason, e.reward, e.answer) == ("error", 0.0, "")
    assert e.reward_reason == "the observer sampled an image placeholder token"
    assert eng.calls == [("observer", 1)]
    [e] = run_dialogues(eng, eng, [TASK], CFG.model_copy(update={"max_questions": 0}), 1).episodes
    assert e.finish_reason == "error" and e.turns[0].trainable


def test_dialogue_ends_with_length_when_the_next_prompt_would_not_fit():
    """Unbounded, the K=2 dialogue's prompts have 52, 50, 99, 100, 142, 162 tokens (the Observer's
    counted with its image placeholder expanded to 4 tokens). With max_model_len 142 the Observer's
    second answer cannot be asked for: the dialogue ends after 4 turns with finish "length", no
    answer and reward 0; the early-answering dialogue in the same batch is untouched."""
    [full] = run_dialogues(engine(), engine(), [TASK], CFG, group_size=1).episodes
    assert [len(t.prompt_ids) for t in full.turns] == [52, 50, 99, 100, 142, 162]
    eng = CountingEngine(immo, image_tokens=4, max_model_len=142)
    for name, version in (("reasoner", 1), ("reasoner", 3), ("observer", 1)):
        eng.load_adapter(AdapterRef(name, version, "/x"))
    cut, early = run_dialogues(eng, eng, [TASK, EARLY], CFG, group_size=1, reward=ExactMatch()).episodes
    tokens = lambda turns: [(t.role, t.prompt_ids, t.output_ids) for t in turns]  # noqa: E731
    assert tokens(cut.turns) == tokens(full.turns[:4])  # the same tokens up to the cut
    assert (cut.finish_reason, cut.answer, cut.reward, cut.success) == ("length", "", 0.0, False)
    assert cut.reward_reason == "context full: the observer's prompt has 142 tokens, max_model_len is 142"
    assert (early.finish_reason, early.answer, early.reward) == ("answered", "red", 0.0)  # wrong, but answered
    # captions (2), Reasoner round 1 (2: EARLY answers), Observer 1, Reasoner round 2, then nothing
    assert eng.calls == [("observer", 2), ("reasoner", 2), ("observer", 1), ("reasoner", 1)]


def test_fake_engine_refuses_a_prompt_that_fills_the_model_length():
    eng = FakeEngine(lambda *a: "abc", max_model_len=5)
    prompt = tuple(eng.tokenizer.encode("abcd"))
    [[c]] = eng.generate([Request(prompt, (), None, Sampling(max_tokens=8))])
    assert c.output_ids == tuple(eng.tokenizer.encode("a")) and c.finish_reason == "length"  # 1 token of room
    with pytest.raises(ValueError, match="longer than the maximum model length of 5"):
        eng.generate([Request(prompt + prompt[:1], (), None, Sampling(max_tokens=8))])
