"""Reward interface, registry, exact match, format reward, composite, and bad-output robustness."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import rewards
from rewards import RewardResult, RewardSpec, build_reward, normalize_answer
from rewards.base import clean_text
from rollout.types import Episode, Task, Turn

pytestmark = pytest.mark.unit


def make_episode(text: str = "", answer: str = "", step_rewards: tuple[float, ...] = ()) -> Episode:
    """One policy turn with ``text`` (or one turn per step reward), extracted answer ``answer``."""
    rs = step_rewards or (0.0,)
    turns = tuple(
        Turn("policy", (1, 2), (3, 4, 5), (-0.1, -0.2, -0.3), 0, text=text, reward=r) for r in rs
    )
    return Episode("e0", "g0", "t0", turns, answer=answer)


TASK = Task("t0", "What is on the mat?", "The cat")
MC_TASK = Task("t1", "Which is a mammal?", "whale", choices=("shark", "whale", "trout"))


@dataclass(frozen=True)
class ShoutReward:
    """A user-defined reward living outside the package: 1 if the answer is upper-case."""

    name: str = "shout"
    bonus: float = 1.0

    def __call__(self, task: Task, episode: Episode) -> RewardResult:
        score = self.bonus if episode.answer.isupper() else 0.0
        return RewardResult(score, {self.name: score}, "" if score else "not shouting")


def make_shout(bonus: float = 2.0) -> ShoutReward:
    return ShoutReward(bonus=bonus)


# ------------------------------------------------------------------------------------ registry


def test_build_registered_reward_with_kwargs():
    r = build_reward({"name": "format", "kwargs": {"pattern": r"\d+", "name": "digits"}})
    assert r.name == "digits"
    assert r(TASK, make_episode("123")).score == 1.0
    assert r(TASK, make_episode("12a")).score == 0.0


def test_build_user_reward_by_dotted_path():
    cls = build_reward(RewardSpec(f"{__name__}:ShoutReward", {"bonus": 3.0}))
    fn = build_reward(f"{__name__}:make_shout")
    assert isinstance(cls, ShoutReward) and cls(TASK, make_episode(answer="YES")).score == 3.0
    assert fn(TASK, make_episode(answer="YES")).score == 2.0
    assert fn(TASK, make_episode(answer="yes")).reason == "not shouting"


def test_unknown_reward_names_known_ones():
    with pytest.raises(ValueError, match="unknown reward 'nope'.*exact_match.*weighted_sum"):
        build_reward("nope")
    with pytest.raises(ValueError, match="no attribute"):
        build_reward(f"{__name__}:Missing")
    with pytest.raises(ValueError, match="cannot import"):
        build_reward("no_such_module_xyz:Thing")
    with pytest.raises(ValueError, match="unknown keys"):
        build_reward({"name": "format", "kwarg": {}})


def test_register_rejects_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        rewards.register_reward("format")(ShoutReward)


def test_result_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        RewardResult(float("nan"), {}, "")


# --------------------------------------------------------------------------------- exact match


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The  Cat!", "cat"),  # lower, punctuation, article "the", spaces
        ("an apple, a pear", "apple pear"),
        ("Theory of Anything", "theory of anything"),  # "the"/"an" inside words are kept
        ("  U.S.A. ", "usa"),
    ],
)
def test_normalize_answer_squad(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_free_form():
    r = build_reward("exact_match")
    assert r(TASK, make_episode(answer="cat.")).score == 1.0
    wrong = r(TASK, make_episode(answer="dog"))
    assert wrong.score == 0.0 and wrong.components == {"exact_match": 0.0} and "wrong answer" in wrong.reason
    assert r(TASK, make_episode(answer="")).reason == "empty answer"
    assert r(TASK, make_episode(answer="the ...")).reason == "answer is only punctuation/articles"


@pytest.mark.parametrize("answer", ["whale", "B", "(b)", "B.", "B) Whale", "1"])
def test_exact_match_multiple_choice_accepts_letter_and_index(answer):
    assert build_reward("exact_match")(MC_TASK, make_episode(answer=answer)).score == 1.0


@pytest.mark.parametrize("answer", ["A", "shark", "2", "C whale"])
def test_exact_match_multiple_choice_rejects_other_choices(answer):
    assert build_reward("exact_match")(MC_TASK, make_episode(answer=answer)).score == 0.0


def test_exact_match_index_off_and_numeric_choices():
    no_index = build_reward({"name": "exact_match", "kwargs": {"accept_index": False}})
    assert no_index(MC_TASK, make_episode(answer="1")).score == 0.0
    # Choices that are numbers: "1" must mean the text "1", never index 1 (= "3").
    numeric = Task("t2", "2+1?", "3", choices=("1", "3", "5"))
    r = build_reward("exact_match")
    assert r(numeric, make_episode(answer="1")).score == 0.0
    assert r(numeric, make_episode(answer="3")).score == 1.0
    assert r(numeric, make_episode(answer="b")).score == 1.0


# -------------------------------------------------------------------------------------- format


def test_format_full_match_vs_search():
    full = build_reward("format")
    text = "<think>x\ny</think>\n<answer>cat</answer>"
    assert full(TASK, make_episode(text)).score == 1.0
    assert full(TASK, make_episode("hi " + text)).score == 0.0
    assert full(TASK, make_episode("<think>a</think><think>b</think><answer>x</answer>")).score == 0.0
    search = build_reward({"name": "format", "kwargs": {"full_match": False}})
    assert search(TASK, make_episode("hi " + text)).score == 1.0
    assert "does not contain" in search(TASK, make_episode("<answer>cat</answer>")).reason


def test_format_flags_and_bad_regex_fail_at_build():
    r = build_reward({"name": "format", "kwargs": {"pattern": "yes", "flags": "i"}})
    assert r(TASK, make_episode("YES")).score == 1.0
    with pytest.raises(ValueError, match="unknown regex flags"):
        build_reward({"name": "format", "kwargs": {"flags": "q"}})
    with pytest.raises(Exception):
        build_reward({"name": "format", "kwargs": {"pattern": "(unclosed"}})


# ----------------------------------------------------------------------------------- composite


def test_weighted_sum_keeps_components_and_reasons():
    r = build_reward(
        {
            "name": "weighted_sum",
            "kwargs": {
                "terms": [
                    {"name": "exact_match", "weight": 2.0},
                    {"name": "format", "weight": 0.5},
                    {"name": "length_penalty", "weight": 1.0, "kwargs": {"budget": 1, "limit": 5}},
                ]
            },
        }
    )
    ep = make_episode("no tags", answer="cat")
    res = r(TASK, ep)
    # exact 1.0, format 0.0, length: 3 tokens, budget 1, limit 5 -> -(3-1)/(5-1) = -0.5
    # score = 2*1 + 0.5*0 + 1*(-0.5) = 1.5
    assert res.score == pytest.approx(1.5)
    assert res.components == {
        "exact_match": 1.0,
        "format": 0.0,
        "length_penalty": -0.5,
        "length_penalty/length": 3.0,
    }
    assert res.reason.startswith("format: output does not match")
    assert "; length_penalty: output too long (3 tokens > budget 1)" in res.reason


def test_weighted_sum_rejects_duplicate_names_and_nests():
    with pytest.raises(ValueError, match="duplicate child names"):
        build_reward({"name": "weighted_sum", "kwargs": {"terms": ["format", "format"]}})
    inner = {"name": "weighted_sum", "kwargs": {"name": "inner", "terms": ["exact_match"]}}
    terms = [inner, {"name": "exact_match", "weight": 3}]
    outer = build_reward({"name": "weighted_sum", "kwargs": {"terms": terms}})
    res = outer(TASK, make_episode(answer="cat"))
    assert res.score == 4.0
    assert res.components == {"exact_match": 1.0, "exact_match/exact_match": 1.0}


# ------------------------------------------------------------------------- bad output: never raise

CRYPTO_TASK = Task("t3", "decode", "cat dog", metadata={"coded": "x q z _ m f r"})
HUGE = "<answer>" + "a" * 200_000 + "</answer>"
GARBAGE = [
    "",
    "   \n\t ",
    HUGE,
    b"\xff\xfe<ans\x80wer>\xc3(".decode("utf-8", "surrogateescape"),  # lone surrogates
    "\x00\x00<think>\x00</think>",
    "<think><chars>" * 1000,
    "\ufffd" * 50,
    "<think>unterminated <chars> c a",
    "(((((((((((",
]
SLOW_OR_COMPOSITE = ("embedding_similarity", "weighted_sum")
FAST_REWARDS = [n for n in rewards.registered_rewards() if n not in SLOW_OR_COMPOSITE]


@pytest.mark.parametrize("name", FAST_REWARDS)
@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_bad_output_scores_zero_with_reason(name, garbage):
    reward = build_reward(name)
    for task in (TASK, MC_TASK, CRYPTO_TASK) if not name.startswith("cryptogram") else (CRYPTO_TASK,):
        res = reward(task, make_episode(garbage, answer=garbage))
        assert res.score <= 0.0, (name, res)
        if name not in ("length_penalty", "latency_penalty"):  # they grade cost, not content
            assert res.reason, (name, res)


def test_clean_text_reasons():
    assert clean_text("") == ("", "empty output")
    assert clean_text(HUGE, 1000)[1] == f"output too long ({len(HUGE)} chars > 1000)"
    assert clean_text(b"abc")[1] == "output is not text (bytes)"
    assert clean_text("a\udcffb\x00") == ("a?b\ufffd", "")  # 2 of 4 bad: repaired
    assert clean_text("a\udcff\x00") == ("", "output is mostly undecodable (2 of 3 chars)")
    assert clean_text("\t\n ok\r") == ("\t\n ok\r", "")


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_composite_of_every_fast_reward_survives_bad_output(garbage):
    reward = build_reward({"name": "weighted_sum", "kwargs": {"terms": FAST_REWARDS}})
    res = reward(CRYPTO_TASK, make_episode(garbage, answer=garbage))
    assert res.score <= 0.0 and set(FAST_REWARDS) <= set(res.components) and res.reason


def test_reward_types_live_in_rollout_types_and_rewards_base_reexports_them():
    import rewards.base
    import rollout.types

    assert rewards.base.Reward is rollout.types.Reward
    assert rewards.base.RewardResult is rollout.types.RewardResult is RewardResult
    assert isinstance(ExactMatchLike(), rollout.types.Reward)


class ExactMatchLike:
    """A user plugin written against the protocol alone (no import of rewards/)."""

    name = "like"

    def __call__(self, task, episode):
        return RewardResult(1.0, {"like": 1.0})
