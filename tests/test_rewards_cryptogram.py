"""r1_vlm cryptogram rewards against hand-counted Levenshtein distances."""

from __future__ import annotations

import pytest

from rewards import build_reward
from rewards.cryptogram import decoding_score, spaced
from rollout.tasks.cryptogram import make_cryptogram
from rollout.types import Episode, Task, Turn

pytestmark = pytest.mark.unit

# Plain "cat dog" under c->x a->q t->z d->m o->f g->r.
TASK = Task("c0", "decode", "cat dog", metadata={"coded": "x q z _ m f r"})
TARGET = "c a t _ d o g"  # 13 characters: 7 letters/underscore + 6 spaces


def reply(chars: str | None, answer: str | None, sep: str = "\n") -> str:
    think = "<think> decoding" + (f" <chars> {chars} </chars>" if chars is not None else "") + " done </think>"
    return think + (f"{sep}<answer>{answer}</answer>" if answer is not None else "")


def episode(text: str) -> Episode:
    return Episode("e", "g", "c0", (Turn("policy", (1,), (2,), (-1.0,), 0, text=text),), answer="")


def score(name: str, text: str, **kwargs) -> float:
    return build_reward({"name": name, "kwargs": kwargs})(TASK, episode(text)).score


def test_spaced_form():
    assert spaced("cat dog") == TARGET
    assert spaced("cat") == "c a t"


@pytest.mark.parametrize(
    "chars, expected",
    [
        (TARGET, 1.0),
        # one substitution g->t: d(chars, target) = 1; d(chars, coded) = 6 (c/x a/q t/z d/m o/f t/r)
        ("c a t _ d o t", 1 - 1 / 13),
        # tie: 3 edits to the target (d/m o/f g/r) and 3 to the coded text (c/x a/q t/z): not
        # strictly closer to the coded text, so it scores 1 - 3/13
        ("c a t _ m f r", 1 - 3 / 13),
        # 5 substitutions from the target (x q z m f vs c a t d o), 1 from the coded text: 0
        ("x q z _ m f g", 0.0),
        # "c a t" is 5 chars: 8 deletions from the target; from the coded text 8 deletions + 3
        # substitutions = 11. max(len) = 13 -> 1 - 8/13
        ("c a t", 1 - 8 / 13),
        # the target plus " x": 2 insertions, max(len) = 15 (to the coded text: 6 + 2 = 8)
        ("c a t _ d o g x", 1 - 2 / 15),
    ],
)
def test_decoding_hand_counted(chars, expected):
    assert decoding_score(chars, TARGET, "x q z _ m f r")[0] == pytest.approx(expected)
    assert score("cryptogram_decoding", reply(chars, "cat dog")) == pytest.approx(expected)


def test_decoding_missing_and_whitespace():
    res = build_reward("cryptogram_decoding")(TASK, episode(reply(None, "cat dog")))
    assert res.score == 0.0 and res.reason == "no <chars> block"
    assert score("cryptogram_decoding", "<chars>\n  c a t _ d o g \n</chars>") == 1.0
    closer = build_reward("cryptogram_decoding")(TASK, episode(reply("x q z _ m f g", "x")))
    assert closer.reason == "<chars> closer to the coded text (1) than to the target (5)"


def test_format():
    good = reply(TARGET, "cat dog")
    assert score("cryptogram_format", good) == 1.0
    assert score("cryptogram_format", good + "\n") == 1.0  # `$` admits one final newline (r1_vlm)
    assert score("cryptogram_format", reply(TARGET, "cat dog", sep="\n\n")) == 0.0
    assert score("cryptogram_format", reply(TARGET, "cat dog", sep=" ")) == 0.0
    assert score("cryptogram_format", reply(None, "cat dog")) == 0.0  # no <chars>
    assert score("cryptogram_format", reply(TARGET, None)) == 0.0  # no <answer>
    assert score("cryptogram_format", "hello " + good) == 0.0  # must start with <think>
    assert score("cryptogram_format", good + " trailing") == 0.0  # <answer> must end the text
    two_chars = "<think><chars>c</chars> x <chars>a</chars></think>\n<answer>ca</answer>"
    assert score("cryptogram_format", two_chars) == 0.0
    two_thinks = "<think>a</think><think><chars>c</chars></think>\n<answer>c</answer>"
    assert score("cryptogram_format", two_thinks) == 0.0
    prefilled = "Let me solve this step by step.\n" + good
    assert score("cryptogram_format", prefilled) == 0.0
    assert score("cryptogram_format", prefilled, strip_prefix="Let me solve this step by step.\n") == 1.0


def test_correctness_needs_exact_answer_and_exact_decoding():
    assert score("cryptogram_correctness", reply(TARGET, "cat dog")) == 1.0
    assert score("cryptogram_correctness", reply(TARGET, "  cat dog \n")) == 1.0  # stripped
    assert score("cryptogram_correctness", reply(TARGET, "cat dot")) == 0.0
    assert score("cryptogram_correctness", reply(TARGET, "Cat dog")) == 0.0  # case matters
    assert score("cryptogram_correctness", reply("c a t _ d o t", "cat dog")) == 0.0  # decoding 12/13
    res = build_reward("cryptogram_correctness")(TASK, episode(reply(TARGET, None)))
    assert res.score == 0.0 and res.reason == "no <answer> block"


@pytest.mark.parametrize(
    "answer, gated, ungated",
    [
        ("cat dog", 1.0, 1.0),
        # one substitution g->t over max(7, 7): 1 - 1/7
        ("cat dot", 1 - 1 / 7, 1 - 1 / 7),
        # capital C: one substitution, but not a-z/space, so r1_vlm's gate gives 0
        ("Cat dog", 0.0, 1 - 1 / 7),
        # "c a t d o g" (11 chars) -> "cat dog": delete the 4 spaces inside words = 4 edits, which
        # beats the spaced form's 6 (delete 5 spaces and the "_"): 1 - 4/11
        ("c a t d o g", 1 - 4 / 11, 1 - 4 / 11),
        # copying the chars block: "_" is not a-z/space -> gated 0; ungated 1 - 6/13
        (TARGET, 0.0, 1 - 6 / 13),
    ],
)
def test_partial_correctness(answer, gated, ungated):
    text = reply(TARGET, answer)
    assert score("cryptogram_partial", text) == pytest.approx(gated)
    assert score("cryptogram_partial", text, r1_vlm_gates=False) == pytest.approx(ungated)


def test_partial_is_zero_unless_decoding_is_exact():
    res = build_reward("cryptogram_partial")(TASK, episode(reply("c a t _ d o t", "cat dog")))
    assert res.score == 0.0 and res.reason == "decoding not exact: <chars> off by 1 edits"


def test_task_without_coded_message_is_a_config_error():
    with pytest.raises(ValueError, match="no metadata\\['coded'\\]"):
        build_reward("cryptogram_decoding")(Task("x", "q", "cat"), episode(reply(TARGET, "cat")))


def test_perfect_reply_to_generated_task_scores_one_everywhere():
    """Contract with rollout.tasks.cryptogram: its metadata and answer are what the rewards read."""
    task = make_cryptogram(seed=0, index=3)
    text = reply(spaced(task.answer), task.answer) + "\n"
    for name in ("cryptogram_format", "cryptogram_decoding", "cryptogram_correctness", "cryptogram_partial"):
        res = build_reward(name)(task, episode(text))
        assert (res.score, res.reason) == (1.0, ""), name
