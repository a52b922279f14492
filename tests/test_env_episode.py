"""Environment episodes (RL4VLM gym_cards) on a scripted fake engine that 'sees' the image."""

import pytest

from rollout.chat import ChatFormat
from rollout.config import EnvEpisodeConfig, RoleConfig
from rollout.engine import AdapterRef
from rollout.engine.fake import FakeEngine
from rollout.env_episode import encode_png, reply_token_spans, run_env_episodes, token_span
from rollout.envs import CharSpan, find_reply_spans, make_env
from rollout.envs.prompts import numberline_prompt
from rollout.episode_arrow import image_hash
from rollout.types import Span

pytestmark = pytest.mark.unit

SIZE = 48


def numberline_states():
    """image hash -> (current, target) for every non-final NumberLine state at SIZE pixels."""
    env = make_env("numberline", image_size=SIZE)
    out = {}
    for c in range(6):
        for g in range(6):
            if c != g:
                obs, _ = env.reset(options={"current": c, "target": g})
                out[image_hash(encode_png(obs))] = (c, g)
    return out


STATES = numberline_states()


def reply(c, g, action):
    return (f'{{"current number": "{c}", "target number": "{g}", '
            f'"thoughts": "move from {c} towards {g}", "action": "{action}"}}')


class SeeingEngine(FakeEngine):
    """Fake engine whose script also gets the NumberLine state shown in the request's image."""

    def __init__(self, policy):
        super().__init__(lambda p, a, v, k: policy(*self.state), image_tokens=4)
        self.calls = []
        self.load_adapter(AdapterRef("policy", 1, "/x"))

    def generate(self, requests):
        self.calls.append(len(requests))
        return super().generate(requests)

    def _complete(self, req):
        self.state = STATES[image_hash(req.images[0])]
        return super()._complete(req)


def optimal(c, g):
    return reply(c, g, "+" if g > c else "-")


CFG = EnvEpisodeConfig(env="numberline", image_size=SIZE, policy=RoleConfig(adapter="policy"))


def test_optimal_play_succeeds_with_exact_rewards():
    # seed 0 starts at current 5, target 3; seed 2 at current 5, target 1 (see the reset below).
    # Optimal play: distance shrinks each step (reward 0) until it reaches the target (+1, done).
    env = make_env("numberline", image_size=SIZE)
    assert env.reset(seed=0)[1]["current"] == 5 and env.reset(seed=0)[1]["target"] == 3
    assert env.reset(seed=2)[1]["current"] == 5 and env.reset(seed=2)[1]["target"] == 1
    eng = SeeingEngine(optimal)
    batch = run_env_episodes(eng, [0, 2], CFG, group_size=2, step=3)
    eps = batch.episodes
    assert [e.episode_id for e in eps] == ["numberline:0@3#0", "numberline:0@3#1",
                                           "numberline:2@3#0", "numberline:2@3#1"]
    assert [[t.reward for t in e.turns] for e in eps] == [[0, 1], [0, 1], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert all((e.reward, e.success, e.finish_reason) == (1.0, True, "terminated") for e in eps)
    assert [e.metadata["actions"] for e in eps] == ["- -", "- -", "- - - -", "- - - -"]
    assert eps[0].reward_components == {"env_return": 1.0}
    # one engine call per step for all live episodes: 4, 4, then the two seed-2 episodes alone
    assert eng.calls == [4, 4, 2, 2]
    # each step is a fresh prompt with the current image only
    chat = ChatFormat(eng.tokenizer)
    prompt = chat.prompt(None, numberline_prompt(), num_images=1)
    expanded = [t for i in prompt for t in ([i] * 4 if i == eng.image_token_id else [i])]
    assert all(t.prompt_ids == tuple(expanded) for e in eps for t in e.turns)
    shown = [STATES[t.image_hashes[0]] for t in eps[2].turns]
    assert shown == [(5, 1), (4, 1), (3, 1), (2, 1)]
    assert set(batch.images) == {h for e in eps for t in e.turns for h in t.image_hashes}


def test_wrong_play_is_truncated_with_minus_one_each_step():
    # from 5 (the cap) "+" never shrinks the distance to 3: -1 per step until the 10-step cap
    eng = SeeingEngine(lambda c, g: reply(c, g, "+"))
    [e] = run_env_episodes(eng, [0], CFG, group_size=1).episodes
    assert [t.reward for t in e.turns] == [-1.0] * 10
    assert (e.reward, e.success, e.finish_reason) == (-10.0, False, "truncated")
    assert e.reward_reason == "no positive return"
    # the state after the 10th step (still at 5, target 3) as the next prompt would show it: the
    # critic bootstraps GAE from its value
    b = e.bootstrap
    assert b.prompt_ids == e.turns[-1].prompt_ids and (b.output_ids, b.trainable) == ((), False)
    assert STATES[b.image_hashes[0]] == (5, 3) and b.adapter_version == 1
    eng2 = SeeingEngine(optimal)
    [done] = run_env_episodes(eng2, [0], CFG, group_size=1).episodes
    assert done.finish_reason == "terminated" and done.bootstrap is None  # the task really ended


def test_invalid_replies_penalty_and_random_modes():
    eng = SeeingEngine(lambda c, g: "no idea")
    cfg = CFG.model_copy(update={"invalid_action": "penalty", "invalid_penalty": -0.5, "max_steps": 3})
    [e] = run_env_episodes(eng, [1], cfg, group_size=1).episodes
    assert [t.reward for t in e.turns] == [-0.5, -0.5, -0.5]
    assert (e.finish_reason, e.metadata["actions"], e.metadata["invalid_replies"]) == ("truncated", "? ? ?", "3")
    assert all(t.cot_span is None and t.action_span is None for t in e.turns)
    # random mode: the played actions replayed in a reference env give the recorded rewards
    eps = run_env_episodes(SeeingEngine(lambda c, g: "no idea"), [0, 1], CFG, group_size=3).episodes
    for e in eps:
        env = make_env("numberline", image_size=SIZE)
        env.reset(seed=int(e.metadata["env_seed"]))
        rewards = [env.step(env.ACTIONS.index(a))[1] for a in e.metadata["actions"].split()]
        assert [t.reward for t in e.turns] == rewards
        assert e.metadata["invalid_replies"] == str(len(e.turns))


def test_token_spans_decode_to_thoughts_and_action():
    text = reply(5, 3, "-")
    eng = SeeingEngine(optimal)
    dec = eng.tokenizer.decode
    [e] = run_env_episodes(eng, [0], CFG.model_copy(update={"span_mode": "values"}), group_size=1).episodes
    t = e.turns[0]
    assert t.text == text
    assert dec(t.output_ids[t.cot_span.start:t.cot_span.end]) == "move from 5 towards 3"
    assert dec(t.output_ids[t.action_span.start:t.action_span.end]) == "-"
    # RL4VLM split: CoT = everything before the "action" key, action = key to the end (stop token too)
    [e] = run_env_episodes(SeeingEngine(optimal), [0], CFG, group_size=1).episodes
    t = e.turns[0]
    key = text.index('"action"')
    assert t.cot_span.start == 0 and t.cot_span.end == t.action_span.start and t.action_span.end == len(t.output_ids)
    assert dec(t.output_ids[: t.cot_span.end]) == text[:key]
    assert dec(t.output_ids[t.action_span.start:]) == text[key:] + "<|im_end|>"


def bpe_tokenizer():
    """A small byte-level BPE (merges across quotes and words), trained on reply-like text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_end|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [reply(c, g, a) + " café déjà vu" for c in range(6) for g in range(6) for a in "+-"] * 5
    tok.train_from_iterator(corpus, trainer)
    return tok


@pytest.mark.parametrize("text", [
    '{"thoughts": "déjà vu: from 5 towards 3", "action": "-"}',
    '{"thoughts": "up 🙂🙂", "action": "+"}',  # unseen 4-byte characters: one token per byte
])
def test_char_to_token_span_mapping_with_bpe_is_minimal_cover(text):
    tok = bpe_tokenizer()
    ids = tok.encode(text).ids + [tok.token_to_id("<|im_end|>")]
    assert len(ids) != len(text)  # tokens and characters do not line up
    spans = find_reply_spans(text)

    def dec(a, b):
        return tok.decode(ids[a:b], skip_special_tokens=True)

    for cs in (spans.thoughts, spans.action, CharSpan(0, len(text)), CharSpan(3, 4)):
        s = token_span(tok, ids, cs)
        # the tokens decode to text containing the characters, and no smaller token range does
        assert cs.of(text) in dec(s.start, s.end)
        assert cs.of(text) not in dec(s.start + 1, s.end) and cs.of(text) not in dec(s.start, s.end - 1)
    assert dec(*_bounds(token_span(tok, ids, spans.thoughts))) == spans.thoughts.of(text)
    # the whole reply maps to every token but the stop token (which decodes to no characters)
    assert token_span(tok, ids, CharSpan(0, len(text))) == Span(0, len(ids) - 1)
    cot, action = reply_token_spans(tok, ids, "rl4vlm")
    assert (cot.start, action.end) == (0, len(ids)) and cot.end == action.start
    assert dec(0, cot.end) + dec(action.start, len(ids)) == text
    assert '"action"' in dec(action.start, len(ids))


def _bounds(span):
    return span.start, span.end
