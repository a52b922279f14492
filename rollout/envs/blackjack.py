"""Blackjack (RL4VLM gym_cards; Sutton & Barto Example 5.1, as gymnasium's ``Blackjack-v1``).

Rules: infinite deck (each card A..K with probability 1/13, suits uniform); the dealer gets one
card face up and one face down, the player two face up. Actions "stand" (index 0) and "hit" (1).
Hit: draw a card; going over 21 loses (-1, terminated), else reward 0. Stand: the dealer reveals
the hole card and draws until its total is >= 17 (a soft 17 stands), then +1 win / -1 loss /
0 draw by comparing totals, a bust counting as 0 (terminated). An ace counts 11 when that does not
bust the hand. Naturals get no bonus (RL4VLM's default); with ``sab=True`` a player's natural beats
any dealer hand that is not also a natural (Sutton & Barto).

Deal order: dealer up card, dealer hole card, player, player, then hits and dealer draws.
``reset(options={"deck": ["10H", "7S", ...]})`` deals those cards first, in that order, and then
falls back to the seeded RNG, so tests can script whole games.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from PIL import ImageDraw

from rollout.envs.base import CardsEnv
from rollout.envs.render import RANKS, SUITS, WHITE, Card, card_row, draw_card, draw_text


def hand_total(cards: list[Card]) -> int:
    """Best blackjack total: sum of values, plus 10 for one ace if that stays <= 21."""
    total = sum(c.value for c in cards)
    return total + 10 if any(c.rank == "A" for c in cards) and total + 10 <= 21 else total


def usable_ace(cards: list[Card]) -> bool:
    """True when an ace is currently counted as 11."""
    return hand_total(cards) != sum(c.value for c in cards)


def is_natural(cards: list[Card]) -> bool:
    """An ace and a ten-valued card as the first two cards."""
    return len(cards) == 2 and sorted(c.value for c in cards) == [1, 10]


def score(cards: list[Card]) -> int:
    """Total for comparison: 0 when bust."""
    total = hand_total(cards)
    return 0 if total > 21 else total


class Blackjack(CardsEnv):
    """Green table: "Dealer" row (up card + face-down card) above the "Player" row.

    Below 160 pixels of width the "Dealer"/"Player" labels are dropped to leave room for the cards.
    """

    ACTIONS = ("stand", "hit")
    BACKGROUND = "#35654d"

    def __init__(self, image_size: int | tuple[int, int] = 300, sab: bool = False,
                 max_steps: int = 30) -> None:
        self.sab = sab
        super().__init__(image_size, max_steps)
        self.dealer: list[Card] = []
        self.player: list[Card] = []
        self.outcome = ""
        self._scripted: Iterator[Card] = iter(())

    def _draw_card(self) -> Card:
        """Next scripted card if any remain, else a uniform random one (infinite deck)."""
        card = next(self._scripted, None)
        if card is not None:
            return card
        rank, suit = self.np_random.integers(13), self.np_random.integers(4)
        return Card(RANKS[int(rank)], SUITS[int(suit)])

    def _new_state(self, options: dict[str, Any]) -> None:
        self._scripted = iter([Card.parse(c) for c in options.get("deck", ())])
        self.outcome = ""
        self.dealer = [self._draw_card(), self._draw_card()]
        self.player = [self._draw_card(), self._draw_card()]

    def _apply(self, action: str) -> tuple[float, bool, bool]:
        if action == "hit":
            self.player.append(self._draw_card())
            if hand_total(self.player) > 21:
                return self._end(-1.0)
            return 0.0, False, False
        while hand_total(self.dealer) < 17:
            self.dealer.append(self._draw_card())
        player, dealer = score(self.player), score(self.dealer)
        reward = float(player > dealer) - float(player < dealer)
        if self.sab and is_natural(self.player) and not is_natural(self.dealer):
            reward = 1.0
        return self._end(reward)

    def _end(self, reward: float) -> tuple[float, bool, bool]:
        self.outcome = {1.0: "win", 0.0: "draw", -1.0: "loss"}[reward]
        return reward, True, False

    def _state_info(self) -> dict[str, Any]:
        """Symbolic state. ``dealer_cards`` is what the image shows (only the up card while the
        game runs); ``dealer_hole_card`` is hidden from the player and is here for tests only."""
        visible = self.dealer if self.outcome else self.dealer[:1]
        return {
            "player_cards": [str(c) for c in self.player],
            "player_total": hand_total(self.player),
            "usable_ace": usable_ace(self.player),
            "dealer_cards": [str(c) for c in visible],
            "dealer_total": hand_total(visible),
            "dealer_hole_card": str(self.dealer[1]),
            "outcome": self.outcome,
        }

    def _draw(self, draw: ImageDraw.ImageDraw) -> None:
        w, h = self.width, self.height
        label = 0.0 if w < 160 else 0.1  # small images: no labels, bigger cards (dealer on top)
        if label:
            draw_text(draw, "Dealer", (w * 0.03, h * 0.01, w * 0.5, h * 0.10), WHITE, align="left")
            draw_text(draw, "Player", (w * 0.03, h * 0.50, w * 0.5, h * 0.59), WHITE, align="left")
        dealer = self.dealer if self.outcome else [self.dealer[0], None]
        rows = ((dealer, (w * 0.03, h * (0.02 + label), w * 0.97, h * 0.48)),
                (self.player, (w * 0.03, h * (0.52 + label), w * 0.97, h * 0.98)))
        for cards, area in rows:
            for box, card in zip(card_row(len(cards), area, center=False), cards):
                draw_card(draw, box, card)
