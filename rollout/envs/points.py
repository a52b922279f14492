"""EZPoints and Points24 (RL4VLM gym_cards): build a formula from the cards that hits a target.

Rules (docs/anchors.md; RL4VLM ``gym_cards/envs/ezpoints.py``, ``points.py``): the policy appends
one token per step (a number 1..10 or an operator) to a formula shown under the cards; J/Q/K count
as 10.

- A number used more times than the cards allow: reward -1, the formula is unchanged, the episode
  continues.
- "=": evaluate. +10 and terminated if the formula uses every card's number exactly once and
  equals the target; otherwise -1 and terminated.
- Appending a token that makes the formula longer than ``max_formula_len`` (5 for EZPoints, 20 for
  Points24): reward -1, truncated.
- Anything else: reward 0.

Deviations from RL4VLM's code, all on formulas it would score with Python ``eval``: evaluation
here is exact rational arithmetic over a whitelisted syntax tree (so 8/(3-8/3) == 24 exactly);
adjacent numbers ("1" then "2") do not fuse into "12" and "*" "*" is not a power: both make the
formula invalid (-1). RL4VLM appends a blank to the formula after an over-used number so that
length-truncation eventually stops a looping policy; here the generic step cap
(``max_steps``, default 2 x ``max_formula_len``) does that instead and the formula stays clean.
"""

from __future__ import annotations

import ast
import operator
from collections import Counter
from fractions import Fraction
from typing import Any, ClassVar

from PIL import ImageDraw

from rollout.envs.base import CardsEnv
from rollout.envs.render import RANKS, SUITS, WHITE, Card, card_row, draw_card, draw_text

NUMBERS = tuple(str(i) for i in range(1, 11))
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub,
           ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(tokens: list[str] | tuple[str, ...]) -> Fraction | None:
    """Exact value of the formula ``tokens`` (numbers, + - * / and parentheses), None if invalid.

    Tokens are joined with spaces and parsed by Python's ``ast``; only integer literals, unary +/-,
    and binary + - * / are accepted. Invalid syntax, other constructs and division by zero give
    None.
    """
    try:
        return _eval(ast.parse(" ".join(tokens), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError(f"formula: unsupported syntax {ast.dump(node)}")


class PointsEnv(CardsEnv):
    """Shared rules of the points games; subclasses set the cards, target and operators.

    ``reset(options={"cards": ["4H", "8S"]})`` fixes the hand.
    """

    BACKGROUND = "#35654d"
    N_CARDS: ClassVar[int]
    TARGET: ClassVar[int]
    MAX_FORMULA_LEN: ClassVar[int]

    def __init__(self, image_size: int | tuple[int, int] = 300, max_formula_len: int | None = None,
                 max_steps: int | None = None) -> None:
        self.max_formula_len = max_formula_len or self.MAX_FORMULA_LEN
        super().__init__(image_size, max_steps or 2 * self.max_formula_len)
        self.cards: list[Card] = []
        self.formula: list[str] = []

    @property
    def numbers(self) -> list[int]:
        """Card values (J/Q/K = 10), in card order."""
        return [c.value for c in self.cards]

    def _new_state(self, options: dict[str, Any]) -> None:
        cards = [Card.parse(c) for c in options["cards"]] if "cards" in options else self._deal()
        if len(cards) != self.N_CARDS:
            raise ValueError(f"{type(self).__name__}: need {self.N_CARDS} cards, got {len(cards)}")
        self.cards, self.formula = cards, []

    def _deal(self) -> list[Card]:
        raise NotImplementedError

    def _random_suit(self) -> str:
        return SUITS[int(self.np_random.integers(len(SUITS)))]

    def _used(self) -> Counter[int]:
        return Counter(int(t) for t in self.formula if t in NUMBERS)

    def _apply(self, action: str) -> tuple[float, bool, bool]:
        if action == "=":
            return (10.0 if self.solved() else -1.0), True, False
        if action in NUMBERS and self._used()[int(action)] >= self.numbers.count(int(action)):
            return -1.0, False, False
        self.formula.append(action)
        if len(self.formula) > self.max_formula_len:
            return -1.0, False, True
        return 0.0, False, False

    def solved(self) -> bool:
        """True when the formula uses each card's number exactly once and equals the target."""
        uses_all = self._used() == Counter(self.numbers)
        return uses_all and evaluate(self.formula) == self.TARGET

    def _state_info(self) -> dict[str, Any]:
        return {
            "cards": [str(c) for c in self.cards],
            "numbers": self.numbers,
            "formula": list(self.formula),
            "formula_text": " ".join(self.formula),  # spaced: "1 10" is not "110"
            "target": self.TARGET,
        }

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        w, h = self.width, self.height
        boxes = card_row(len(self.cards), (w * 0.04, h * 0.05, w * 0.96, h * 0.76))
        for box, card in zip(boxes, self.cards):
            draw_card(draw, box, card)
        shown = " ".join(self.formula)
        text = f"F: {shown}" if w < 160 else f"Formula: {shown}"
        box = (w * 0.04, h * 0.80, w * 0.96, h * 0.96)
        draw_text(draw, text.rstrip(), box, WHITE, align="left")


class EZPoints(PointsEnv):
    """Two cards whose values make 12 with + or *; actions 1..10, "+", "*", "=" (13)."""

    ACTIONS = NUMBERS + ("+", "*", "=")
    N_CARDS, TARGET, MAX_FORMULA_LEN = 2, 12, 5

    def _deal(self) -> list[Card]:
        """RL4VLM's generator: first rank 2..K (value v); second value 12 // v (half the time,
        when v divides 12) or 12 - v; a value of 10 gets a random rank among 10/J/Q/K."""
        first = RANKS[int(self.np_random.integers(1, 13))]
        v = Card(first, "S").value
        other = 12 // v if v in (2, 3, 4, 6) and self.np_random.random() < 0.5 else 12 - v
        tens = ("10", "J", "Q", "K")
        second = tens[int(self.np_random.integers(4))] if other == 10 else str(other)
        cards = [Card(first, self._random_suit()), Card(second, self._random_suit())]
        return cards[::-1] if self.np_random.random() < 0.5 else cards


class Points24(PointsEnv):
    """Four random cards (A..K, J/Q/K = 10), target 24; actions 1..10, + - * / ( ) = (17)."""

    ACTIONS = NUMBERS + ("+", "-", "*", "/", "(", ")", "=")
    N_CARDS, TARGET, MAX_FORMULA_LEN = 4, 24, 20

    def _deal(self) -> list[Card]:
        ranks = self.np_random.integers(0, 13, size=4)
        return [Card(RANKS[int(r)], self._random_suit()) for r in ranks]
