"""gym_cards environments: scripted games checked against the rules in docs/anchors.md."""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
from gymnasium.utils import seeding

from rollout.envs import ENVS, Blackjack, CardsEnv, EZPoints, NumberLine, Points24, make_env
from rollout.envs.points import evaluate

pytestmark = pytest.mark.unit


def play(env: CardsEnv, actions: list[str]):
    """Step ``env`` through action strings; returns the list of (reward, terminated, truncated)
    and the last info."""
    out, info = [], {}
    for a in actions:
        _, reward, terminated, truncated, info = env.step(env.ACTIONS.index(a))
        out.append((reward, terminated, truncated))
    return out, info


# --- NumberLine ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_numberline_reset_matches_reference_draw(seed):
    # Reference: the same generator gymnasium builds from the seed, drawn as the rules say:
    # start, goal uniform in 0..5; if equal, goal = (goal + 1) mod 5.
    rng, _ = seeding.np_random(seed)
    start, goal = int(rng.integers(0, 6)), int(rng.integers(0, 6))
    if start == goal:
        goal = (goal + 1) % 5
    _, info = NumberLine().reset(seed=seed)
    assert (info["current"], info["target"]) == (start, goal)


@pytest.mark.parametrize("seed", range(12))
def test_numberline_optimal_play_rewards(seed):
    env = NumberLine(image_size=56)
    _, info = env.reset(seed=seed)
    c, g = info["current"], info["target"]
    move = "+" if g > c else "-"
    steps, info = play(env, [move] * abs(g - c))
    # Every move shrinks the distance: 0 each, then +1 and terminated on arrival.
    assert steps == [(0.0, False, False)] * (abs(g - c) - 1) + [(1.0, True, False)]
    assert info["current"] == g and info["episode_return"] == 1.0 and info["success"] is True


def test_numberline_moving_away_then_back():
    env = NumberLine()
    env.reset(options={"current": 2, "target": 4})
    steps, info = play(env, ["-", "+", "+", "+"])
    # 2->1 (distance 2->3: -1), 1->2 (3->2: 0), 2->3 (0), 3->4 (+1, done). Return 0: no success.
    assert steps == [(-1.0, False, False), (0.0, False, False), (0.0, False, False),
                     (1.0, True, False)]
    assert info["episode_return"] == 0.0 and info["success"] is False


def test_numberline_floor_and_cap_give_minus_one():
    env = NumberLine()
    env.reset(options={"current": 0, "target": 3})
    steps, info = play(env, ["-"])  # stays at 0, distance unchanged
    assert steps == [(-1.0, False, False)] and info["current"] == 0
    env.reset(options={"current": 5, "target": 2})
    steps, info = play(env, ["+"])  # stays at 5
    assert steps == [(-1.0, False, False)] and info["current"] == 5


def test_numberline_truncates_after_ten_steps():
    env = NumberLine()
    env.reset(options={"current": 0, "target": 5})
    steps, info = play(env, ["-"] * 10)
    assert steps == [(-1.0, False, False)] * 9 + [(-1.0, False, True)]
    assert info["episode_return"] == -10.0 and info["success"] is False and info["step"] == 10
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_numberline_rejects_equal_options():
    with pytest.raises(ValueError, match="distinct"):
        NumberLine().reset(options={"current": 3, "target": 3})


# --- EZPoints ----------------------------------------------------------------------------------


def ez(cards: list[str]) -> EZPoints:
    env = EZPoints()
    env.reset(options={"cards": cards})
    return env


@pytest.mark.parametrize("cards, formula", [
    (["4H", "8S"], ["4", "+", "8"]),
    (["3D", "4C"], ["4", "*", "3"]),
    (["KH", "2S"], ["2", "+", "10"]),  # K counts 10
    (["6H", "6S"], ["6", "+", "6"]),  # the same number twice is fine with two such cards
])
def test_ezpoints_correct_formula_gives_ten(cards, formula):
    steps, info = play(ez(cards), formula + ["="])
    assert steps == [(0.0, False, False)] * 3 + [(10.0, True, False)]
    assert info["success"] is True and info["formula_text"] == " ".join(formula)


def test_ezpoints_overused_number_is_minus_one_and_continues():
    env = ez(["4H", "8S"])
    steps, info = play(env, ["4", "4", "5"])
    # second "4": one 4-card only; "5": no such card. Formula stays ["4"].
    assert steps == [(0.0, False, False), (-1.0, False, False), (-1.0, False, False)]
    assert info["formula"] == ["4"]
    steps, info = play(env, ["+", "8", "="])
    assert steps[-1] == (10.0, True, False)
    assert info["episode_return"] == 8.0 and info["success"] is True  # -1 -1 +10 > 0


@pytest.mark.parametrize("formula", [["4", "*", "8"], ["4", "+"], ["4"], ["8", "*", "*", "4"], []])
def test_ezpoints_equals_with_wrong_formula_ends_with_minus_one(formula):
    # 32; incomplete; one card unused; "**" is not a power here; empty.
    env = ez(["4H", "8S"])
    play(env, formula)
    steps, info = play(env, ["="])
    assert steps == [(-1.0, True, False)] and info["success"] is False


def test_ezpoints_adjacent_numbers_do_not_concatenate():
    # "1" then "2" is not the number 12 (RL4VLM's string eval would read "12").
    steps, _ = play(ez(["AH", "2S"]), ["1", "2", "="])
    assert steps[-1] == (-1.0, True, False)


def test_ezpoints_formula_over_five_items_truncates():
    steps, info = play(ez(["2H", "10S"]), ["+"] * 6)
    assert steps == [(0.0, False, False)] * 5 + [(-1.0, False, True)]
    assert len(info["formula"]) == 6 and info["success"] is False


def test_ezpoints_step_cap_stops_repeated_illegal_numbers():
    steps, _ = play(ez(["2H", "10S"]), ["5"] * 10)  # default cap 2 x 5 steps
    assert steps == [(-1.0, False, False)] * 9 + [(-1.0, False, True)]


@pytest.mark.parametrize("seed", range(40))
def test_ezpoints_deals_a_solvable_pair(seed):
    _, info = EZPoints().reset(seed=seed)
    a, b = info["numbers"]
    assert a + b == 12 or a * b == 12
    assert all(card[:-1] in ("2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
               for card in info["cards"])


def test_ezpoints_has_thirteen_actions():
    assert EZPoints.ACTIONS == ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "*", "=")


# --- Points24 ----------------------------------------------------------------------------------


def p24(cards: list[str]) -> Points24:
    env = Points24()
    env.reset(options={"cards": cards})
    return env


def test_points24_classic_hand_solved_exactly():
    # 8 / (3 - 8 / 3) = 8 / (1/3) = 24; in floating point this is 23.999999999999996.
    formula = ["8", "/", "(", "3", "-", "8", "/", "3", ")"]
    steps, info = play(p24(["8H", "3S", "8D", "3C"]), formula + ["="])
    assert steps == [(0.0, False, False)] * 9 + [(10.0, True, False)]
    assert info["success"] is True and info["numbers"] == [8, 3, 8, 3]


def test_points24_face_cards_and_ace():
    # K=10, A=1: 10 * 2 + 4 * 1 = 24
    steps, _ = play(p24(["KH", "4S", "AD", "2C"]), ["10", "*", "2", "+", "4", "*", "1", "="])
    assert steps[-1] == (10.0, True, False)


def test_points24_must_use_all_cards():
    steps, _ = play(p24(["8H", "3S", "AD", "AC"]), ["8", "*", "3", "="])  # 24, but aces unused
    assert steps[-1] == (-1.0, True, False)


def test_points24_division_by_zero_is_invalid():
    steps, _ = play(p24(["8H", "3S", "AD", "AC"]), ["8", "/", "(", "1", "-", "1", ")", "="])
    assert steps[-1] == (-1.0, True, False)


def test_points24_formula_limit_twenty():
    steps, _ = play(p24(["8H", "3S", "AD", "AC"]), ["("] * 21)
    assert steps == [(0.0, False, False)] * 20 + [(-1.0, False, True)]


def test_points24_has_seventeen_actions():
    assert Points24.ACTIONS[10:] == ("+", "-", "*", "/", "(", ")", "=")
    assert len(Points24.ACTIONS) == 17


@pytest.mark.parametrize("tokens, value", [
    (["2", "+", "3", "*", "4"], Fraction(14)),  # precedence
    (["(", "2", "+", "3", ")", "*", "4"], Fraction(20)),
    (["-", "3", "+", "10"], Fraction(7)),  # unary minus, as Python's eval
    (["1", "/", "3"], Fraction(1, 3)),  # exact, not 0.333...
])
def test_evaluate_reference_values(tokens, value):
    assert evaluate(tokens) == value


@pytest.mark.parametrize("tokens", [[], ["2", "10"], ["2", "*", "*", "3"], ["(", ")"], ["(", "2"],
                                    ["2", "/", "(", "1", "-", "1", ")"]])
def test_evaluate_invalid_formulas(tokens):
    assert evaluate(tokens) is None


# --- Blackjack ---------------------------------------------------------------------------------


def bj(deck: list[str], sab: bool = False) -> Blackjack:
    """Deal order: dealer up, dealer hole, player, player, then draws."""
    env = Blackjack(sab=sab)
    env.reset(seed=0, options={"deck": deck})
    return env


def test_blackjack_stand_win_dealer_stands_on_17():
    env = bj(["10H", "7S", "10D", "QC"])  # dealer 17, player 20
    steps, info = play(env, ["stand"])
    assert steps == [(1.0, True, False)]
    assert info["dealer_cards"] == ["10H", "7S"] and info["outcome"] == "win" and info["success"]


def test_blackjack_dealer_draws_to_17():
    env = bj(["2H", "3S", "10D", "8C", "4D", "5C", "3H"])  # dealer 5 -> 9 -> 14 -> 17, stop
    steps, info = play(env, ["stand"])
    assert info["dealer_cards"] == ["2H", "3S", "4D", "5C", "3H"] and info["dealer_total"] == 17
    assert steps == [(1.0, True, False)]  # player 18 beats 17


def test_blackjack_dealer_draws_and_wins():
    env = bj(["6H", "5S", "10D", "7C", "9D"])  # dealer 11 + 9 = 20 vs player 17
    steps, info = play(env, ["stand"])
    assert steps == [(-1.0, True, False)] and info["outcome"] == "loss" and not info["success"]


def test_blackjack_dealer_bust_is_a_player_win():
    steps, info = play(bj(["10H", "6S", "10D", "2C", "KD"]), ["stand"])  # dealer 16 + 10 = 26
    assert steps == [(1.0, True, False)] and info["dealer_total"] == 26


def test_blackjack_draw():
    steps, info = play(bj(["10H", "8S", "KD", "8C"]), ["stand"])  # 18 vs 18
    assert steps == [(0.0, True, False)] and info["outcome"] == "draw" and info["success"] is False


def test_blackjack_dealer_stands_on_soft_17():
    _, info = play(bj(["AH", "6S", "10D", "8C"]), ["stand"])  # dealer A+6 = soft 17: no draw
    assert info["dealer_cards"] == ["AH", "6S"] and info["outcome"] == "win"


def test_blackjack_hit_then_bust():
    env = bj(["10H", "8S", "10D", "5C", "3D", "9D"])
    steps, info = play(env, ["hit"])  # 15 + 3 = 18
    assert steps == [(0.0, False, False)] and info["player_total"] == 18
    steps, info = play(env, ["hit"])  # 18 + 9 = 27
    assert steps == [(-1.0, True, False)] and info["outcome"] == "loss"


def test_blackjack_usable_ace_becomes_one():
    env = Blackjack()
    _, info = env.reset(options={"deck": ["10H", "7S", "AD", "5C", "10C"]})
    assert info["player_total"] == 16 and info["usable_ace"] is True  # A=11 + 5
    steps, info = play(env, ["hit"])  # A=1 + 5 + 10 = 16, not bust
    assert steps == [(0.0, False, False)] and info["player_total"] == 16 and not info["usable_ace"]


@pytest.mark.parametrize("sab, reward", [(False, 0.0), (True, 1.0)])
def test_blackjack_natural_only_wins_under_sab(sab, reward):
    # Player A+K (natural 21); dealer 10+6 draws 5 -> 21 with three cards.
    steps, _ = play(bj(["10H", "6S", "AD", "KC", "5C"], sab=sab), ["stand"])
    assert steps == [(reward, True, False)]


def test_blackjack_hole_card_hidden_until_the_end():
    env = Blackjack()
    _, info = env.reset(options={"deck": ["10H", "7S", "10D", "QC"]})
    assert info["dealer_cards"] == ["10H"] and info["dealer_total"] == 10
    assert info["dealer_hole_card"] == "7S"
    _, _, _, _, info = env.step(Blackjack.ACTIONS.index("stand"))
    assert info["dealer_cards"] == ["10H", "7S"] and info["dealer_total"] == 17


def test_blackjack_seeded_deals_are_reproducible_and_varied():
    deals = [Blackjack().reset(seed=s)[1]["player_cards"] for s in (1, 2, 3, 1)]
    assert deals[0] == deals[3] and len({tuple(d) for d in deals}) >= 2


# --- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENVS))
@pytest.mark.parametrize("size, shape", [(300, (300, 300, 3)), (56, (56, 56, 3)),
                                         ((200, 120), (120, 200, 3))])
def test_render_size_and_determinism(name, size, shape):
    a, _ = make_env(name, image_size=size).reset(seed=5)
    b, _ = make_env(name, image_size=size).reset(seed=5)
    assert a.shape == shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 2  # something was drawn on the background


@pytest.mark.parametrize("size", [300, 112, 56])
def test_render_differs_between_states(size):
    nl = NumberLine(image_size=size)
    a, _ = nl.reset(options={"current": 1, "target": 3})
    b, *_ = nl.step(1)  # current 2
    assert not np.array_equal(a, b)
    ezp = EZPoints(image_size=size)
    c, _ = ezp.reset(options={"cards": ["4H", "8S"]})
    d, *_ = ezp.step(3)  # formula "4"
    e, _ = ezp.reset(options={"cards": ["4H", "8D"]})  # only the suit differs
    assert not np.array_equal(c, d) and not np.array_equal(c, e)
    bjk = Blackjack(image_size=size)
    f, _ = bjk.reset(options={"deck": ["10H", "7S", "10D", "5C", "3D"]})
    g, *_ = bjk.step(1)  # a third player card
    assert not np.array_equal(f, g)


def test_render_hides_the_dealer_hole_card():
    env = Blackjack(image_size=112)
    a, _ = env.reset(options={"deck": ["10H", "7S", "10D", "5C"]})
    b, _ = env.reset(options={"deck": ["10H", "AS", "10D", "5C"]})
    assert np.array_equal(a, b)


def test_step_invalid_keeps_state_and_image():
    env = NumberLine(image_size=56)
    a, _ = env.reset(options={"current": 1, "target": 3})
    b, reward, terminated, truncated, info = env.step_invalid(-0.5)
    assert np.array_equal(a, b) and (reward, terminated, truncated) == (-0.5, False, False)
    assert info["current"] == 1 and info["step"] == 1 and info["episode_return"] == -0.5


# --- registry ----------------------------------------------------------------------------------


def test_make_env_registry():
    assert {n: type(make_env(n)) for n in ENVS} == {
        "numberline": NumberLine, "ezpoints": EZPoints, "points24": Points24,
        "blackjack": Blackjack}
    assert make_env("numberline", image_size=64).observation_space.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="blackjack.*ezpoints.*numberline.*points24"):
        make_env("alfworld")


@pytest.fixture
def without_dejavu(monkeypatch):
    """Render as on a machine without DejaVu fonts (Pillow's built-in default font)."""
    from rollout.envs import render

    def clear():
        for cached in (render.font_path, render.font, render.fitted_size):
            cached.cache_clear()

    monkeypatch.setattr(render, "_font_paths", lambda: [])
    clear()
    yield
    monkeypatch.undo()
    clear()


def test_render_with_pillow_default_font(without_dejavu):
    from rollout.envs import render

    assert render.font_path() is None
    env = NumberLine(image_size=56)
    a, _ = env.reset(options={"current": 1, "target": 3})
    b, _ = env.reset(options={"current": 1, "target": 3})
    c, *_ = env.step(1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("name", sorted(ENVS))
def test_gymnasium_env_checker_passes(name):
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(make_env(name, image_size=64), skip_render_check=False)
    # The only expected warning: alternative render modes need a gymnasium.make spec.
    assert [str(w.message) for w in caught if "spec" not in str(w.message)] == []
