"""gym_cards text side: action parser, invalid-action handling, reply spans, prompts."""

from __future__ import annotations

import numpy as np
import pytest

from rollout.envs import (ENVS, Blackjack, EZPoints, InvalidActionPolicy, NumberLine, Points24,
                          build_prompt, find_reply_spans, parse_action, step_with_text)

pytestmark = pytest.mark.unit

NL, BJ, EZ, P24 = NumberLine.ACTIONS, Blackjack.ACTIONS, EZPoints.ACTIONS, Points24.ACTIONS


# --- parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize("actions, text, expected", [
    (NL, '{"thoughts": "I should add one", "action": "+"}', "+"),
    (NL, '{"thoughts": "5 - 3 = 2, so go down", "action": "+"}', "+"),  # text before key ignored
    (NL, '{"action" : "-"}', "-"),  # space before the colon
    (NL, '"action": "-1"', "-"),  # "1" is no NumberLine action
    (NL, '"action": "+", "again": "+"', "+"),  # one distinct action, repeated
    (BJ, '{"thoughts": "I have 12", "ACTION": "HIT"}', "hit"),  # case-insensitive
    (BJ, '"action": "stand"}', "stand"),
    (EZ, '"action": "10"', "10"),  # not also "1"
    (EZ, '"action": "1"', "1"),
    (EZ, '"action": "10" then "10"', "10"),
    (EZ, '"action": "="', "="),
    (EZ, '"action": "*"}', "*"),
    (P24, '"action": "("', "("),
    (P24, '"action": "-"', "-"),
    (P24, '"action": "10"}', "10"),
])
def test_parse_valid(actions, text, expected):
    parsed = parse_action(text, actions)
    assert parsed.valid and parsed.action == expected and parsed.index == actions.index(expected)
    assert parsed.reason == ""


@pytest.mark.parametrize("actions, text, reason", [
    (NL, "I choose +", 'no "action": key'),
    (NL, '{"thoughts": "go +"}', 'no "action": key'),
    (NL, '"action": "-" or "+"', "several"),  # the template copied verbatim
    (NL, '"action": "+"}\nthat moves it closer-', "several"),  # everything after the key counts
    (NL, '"action": "+"} "action": "-"', "several"),
    (BJ, '"action": "stand" or "hit"', "several"),
    (BJ, '"action": "stand", "note": "white"', "several"),  # substring rule: "white" holds "hit"
    (BJ, '"action": "double"', "no legal action"),
    (EZ, '"action": ""', "no legal action"),  # "=" vs nothing
    (EZ, '"action": "110"', "several"),  # "10" and "1"
    (EZ, '"action": "4 ="', "several"),
    (EZ, '"action": "12"', "several"),  # "1" and "2", 12 is not an action
    (P24, '"action": "()"', "several"),
])
def test_parse_invalid(actions, text, reason):
    parsed = parse_action(text, actions)
    assert not parsed.valid and parsed.index is None and parsed.action is None
    assert reason in parsed.reason


def rl4vlm_reference(text: str, actions: tuple[str, ...]) -> int | None:
    """RL4VLM's ``text_projection`` for one string, deterministic part (None where it would pick a
    random action). It special-cases "10" by deleting it before matching the other actions."""
    s = text.lower()
    s = s[s.find('"action":'):]
    found = []
    if "10" in actions and "10" in s:
        found.append("10")
        s = s.replace("10", "")
    found += [a for a in actions if a in s]
    found = list(set(found))
    return actions.index(found[0]) if len(found) == 1 else None


@pytest.mark.parametrize("actions", [NL, BJ, EZ, P24])
def test_parse_matches_rl4vlm_reference_on_random_replies(actions):
    rng = np.random.default_rng(0)
    pieces = list(actions) + ["0", "1", "x", " ", '"', "}", "stan", "hi", "the", "\n"]
    for _ in range(400):
        body = "".join(rng.choice(pieces, size=int(rng.integers(0, 5))))
        text = f'{{"thoughts": "{rng.choice(pieces)}", "action": "{body}"}}'
        assert parse_action(text, actions).index == rl4vlm_reference(text, actions), text


# --- invalid-action policies ------------------------------------------------------------------


def test_step_with_text_valid_reply():
    env = NumberLine()
    env.reset(options={"current": 1, "target": 3})
    out = step_with_text(env, '{"action": "+"}', InvalidActionPolicy(), np.random.default_rng(0))
    assert out.parsed.valid and out.executed == 1 and out.reward == 0.0 and out.info["current"] == 2


def test_step_with_text_random_mode_plays_the_rng_action():
    expected = int(np.random.default_rng(7).integers(2))  # reference draw from the same rng state
    env = NumberLine()
    env.reset(options={"current": 2, "target": 4})
    policy = InvalidActionPolicy("random")
    out = step_with_text(env, "no json at all", policy, np.random.default_rng(7))
    assert not out.parsed.valid and out.executed == expected
    assert out.info["current"] == (3 if expected == 1 else 1)
    assert out.reward == (0.0 if expected == 1 else -1.0)


def test_step_with_text_penalty_mode_keeps_state_and_truncates():
    env = NumberLine(image_size=56)
    first, _ = env.reset(options={"current": 1, "target": 3})
    policy = InvalidActionPolicy("penalty", penalty=-1.0)
    rng = np.random.default_rng(0)
    outs = [step_with_text(env, '"action": "?"', policy, rng) for _ in range(10)]
    assert [o.reward for o in outs] == [-1.0] * 10 and all(o.executed is None for o in outs)
    assert [o.truncated for o in outs] == [False] * 9 + [True]  # NumberLine's 10-step limit
    assert outs[-1].info["current"] == 1 and np.array_equal(outs[-1].observation, first)


def test_invalid_action_policy_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        InvalidActionPolicy("skip")  # type: ignore[arg-type]


# --- reply spans -------------------------------------------------------------------------------


def test_spans_of_a_numberline_reply():
    text = ('{\n "current number": "2",\n "target number": "4",\n'
            ' "thoughts": "2 is below 4, so add one",\n "action": "+"\n}')
    spans = find_reply_spans(text)
    assert spans.thoughts.of(text) == "2 is below 4, so add one"
    assert spans.action.of(text) == "+"
    assert spans.action_key == text.index('"action"')
    cot, action = spans.rl4vlm_regions()
    assert (cot.start, cot.end, action.start, action.end) == (0, text.index('"action"'),
                                                               text.index('"action"'), len(text))


def test_spans_escaped_quotes_braces_and_bare_values():
    text = r'{"thoughts": "he said \"hit\", ok", "action": "hit"}'
    assert find_reply_spans(text).thoughts.of(text) == r'he said \"hit\", ok'
    text = '{"thoughts": {check {nested} 4*3=12}, "Action": =\n}'
    spans = find_reply_spans(text)
    assert spans.thoughts.of(text) == "check {nested} 4*3=12"
    assert spans.action.of(text) == "="  # bare value, key matched case-insensitively


def test_spans_of_a_cut_off_reply():
    text = '{"thoughts": "I think the dealer'
    spans = find_reply_spans(text)
    assert spans.thoughts.of(text) == "I think the dealer"
    assert spans.action is None and spans.action_key is None and spans.rl4vlm_regions() is None


def test_spans_action_key_is_the_one_the_parser_reads():
    text = '{"action": "10", "thoughts": "x", "action": "1"}'
    spans = find_reply_spans(text)
    assert spans.action.of(text) == "10" and spans.action_key == 1
    assert spans.thoughts.of(text) == "x"


# --- prompts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, keys", [
    ("numberline", ['"current number"', '"target number"', '"thoughts"', '"action"']),
    ("blackjack", ['"thoughts"', '"action"']),
    ("ezpoints", ['"cards"', '"current formula"', '"thoughts"', '"action"']),
    ("points24", ['"cards"', '"current formula"', '"thoughts"', '"action"']),
])
def test_prompts_ask_for_the_json_keys_and_list_actions(name, keys):
    prompt = build_prompt(name)
    assert all(k in prompt for k in keys)
    assert "[" + ", ".join(f"'{a}'" for a in ENVS[name].ACTIONS) + "]" in prompt
    no_cot = build_prompt(name, cot=False)
    assert '"action"' in no_cot and '"thoughts"' not in no_cot
    assert ('"current formula"' in prompt) == (name in ("ezpoints", "points24"))


def test_points_prompts_show_the_current_formula():
    env = EZPoints()
    env.reset(options={"cards": ["4H", "8S"]})
    env.step(EZ.index("4"))
    *_, info = env.step(EZ.index("+"))
    assert "The current formula is: '4 +'." in build_prompt("ezpoints", info)
    assert '"current formula": "4 +"' in build_prompt("ezpoints", info)
    assert "evaluates to 24" in build_prompt("points24")


@pytest.mark.parametrize("name", sorted(ENVS))
def test_prompt_template_replies_parse_to_every_action(name):
    actions = ENVS[name].ACTIONS
    for a in actions:
        reply = f'{{"thoughts": "choose {a} because 1 + 10 = 11", "action": "{a}"}}'
        assert parse_action(reply, actions).index == actions.index(a)


def test_build_prompt_unknown_name():
    with pytest.raises(ValueError, match="known"):
        build_prompt("alfworld")
