"""Procedural drawing for the gym_cards observations: fonts, fitted text, playing cards.

RL4VLM's gym_cards pastes PNG card images and DejaVu text onto a 300x300 canvas. Here everything
is drawn with Pillow primitives so nothing but Pillow is needed offline, and every element is
sized relative to its box, so the same scene stays legible at 56x56 or 112x112 for tiny models:
text is fitted to the largest font that fits its box, suits are filled polygons (no glyphs needed).

Fonts: DejaVu Sans Bold when the system (Debian ``fonts-dejavu-core``) or matplotlib ships it,
otherwise Pillow's built-in TrueType default (``ImageFont.load_default(size=...)``, Pillow >= 10.1)
drawn with a thin outline in the text colour to make it bold.
Rendering is deterministic for a given state on a given machine; machines with different fonts
draw slightly different pixels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageDraw, ImageFont

RANKS = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
SUITS = ("S", "H", "D", "C")
"""Spades, hearts, diamonds, clubs."""

RED, BLACK, WHITE = (200, 16, 46), (20, 20, 20), (255, 255, 255)
CARD_BACK = (31, 63, 143)

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels."""


@dataclass(frozen=True)
class Card:
    """A playing card: ``rank`` in :data:`RANKS`, ``suit`` in :data:`SUITS`; written e.g. "10H"."""

    rank: str
    suit: str

    def __post_init__(self) -> None:
        if self.rank not in RANKS or self.suit not in SUITS:
            raise ValueError(f"Card: bad {self.rank!r}{self.suit!r}; ranks {RANKS}, suits {SUITS}")

    @classmethod
    def parse(cls, text: str) -> Card:
        """Parse "AS", "10H", "qd" (rank then suit letter)."""
        text = text.strip().upper()
        return cls(text[:-1], text[-1:])

    @property
    def number(self) -> int:
        """Rank as 1..13 (A = 1, J = 11, Q = 12, K = 13)."""
        return RANKS.index(self.rank) + 1

    @property
    def value(self) -> int:
        """Game value: A = 1, 2..10 face value, J/Q/K = 10 (gym_cards and Blackjack alike)."""
        return min(self.number, 10)

    def __str__(self) -> str:
        return self.rank + self.suit


def _font_paths() -> list[Path]:
    paths = [Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        paths.append(Path(spec.origin).parent / "mpl-data/fonts/ttf/DejaVuSans-Bold.ttf")
    return paths


@lru_cache(maxsize=None)
def font_path() -> str | None:
    """The bold DejaVu font file if one is installed, else None (Pillow's default font is used)."""
    return next((str(p) for p in _font_paths() if p.is_file()), None)


@lru_cache(maxsize=512)
def font(size: int) -> ImageFont.FreeTypeFont:
    """A bold sans font of ``size`` pixels (DejaVu Sans Bold, else Pillow's TrueType default)."""
    path = font_path()
    if path is not None:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def stroke(size: int) -> int:
    """Outline width that fakes bold when only Pillow's regular default font is available."""
    return 0 if font_path() is not None else max(1, round(size / 24))


@lru_cache(maxsize=4096)
def fitted_size(text: str, width: int, height: int) -> int:
    """Largest font size whose bounding box of ``text`` fits in ``width`` x ``height`` (>= 1)."""
    lo, hi = 1, max(1, height)
    while lo < hi:  # binary search on the monotone "fits" predicate
        mid = (lo + hi + 1) // 2
        x0, y0, x1, y1 = font(mid).getbbox(text, stroke_width=stroke(mid))
        if x1 - x0 <= width and y1 - y0 <= height:
            lo = mid
        else:
            hi = mid - 1
    return lo


def draw_text(draw: ImageDraw.ImageDraw, text: str, box: Box, fill, align: str = "center") -> None:
    """Draw ``text`` as large as fits in ``box``, centred vertically, left- or centre-aligned."""
    x0, y0, x1, y1 = box
    size = fitted_size(text, int(x1 - x0), int(y1 - y0))
    f, sw = font(size), stroke(size)
    bx0, by0, bx1, by1 = f.getbbox(text, stroke_width=sw)
    y = (y0 + y1) / 2 - (by0 + by1) / 2
    x = x0 - bx0 if align == "left" else (x0 + x1) / 2 - (bx0 + bx1) / 2
    draw.text((round(x), round(y)), text, fill=fill, font=f, stroke_width=sw, stroke_fill=fill)


def _suit_shape(draw: ImageDraw.ImageDraw, suit: str, box: Box, fill) -> None:
    """Draw a filled suit symbol in a square ``box`` from circles and polygons."""
    x0, y0, x1, y1 = box
    s, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
    r = s / 4
    if suit == "D":
        draw.polygon([(cx, y0), (x1 - s * 0.15, cy), (cx, y1), (x0 + s * 0.15, cy)], fill=fill)
    elif suit == "H":
        draw.ellipse((x0, y0, cx, y0 + 2 * r), fill=fill)
        draw.ellipse((cx, y0, x1, y0 + 2 * r), fill=fill)
        draw.polygon([(x0 + s * 0.02, y0 + r * 1.3), (x1 - s * 0.02, y0 + r * 1.3), (cx, y1)],
                     fill=fill)
    elif suit == "S":
        draw.polygon([(cx, y0), (x1 - s * 0.02, cy + r * 0.3), (x0 + s * 0.02, cy + r * 0.3)],
                     fill=fill)
        draw.ellipse((x0, cy - r * 0.4, cx, cy + r * 1.6), fill=fill)
        draw.ellipse((cx, cy - r * 0.4, x1, cy + r * 1.6), fill=fill)
        draw.polygon([(cx, cy), (cx + r * 0.7, y1), (cx - r * 0.7, y1)], fill=fill)
    else:  # clubs
        c = s * 0.22
        for ox, oy in ((cx, y0 + c), (x0 + c, cy + c * 0.4), (x1 - c, cy + c * 0.4)):
            draw.ellipse((ox - c, oy - c, ox + c, oy + c), fill=fill)
        draw.polygon([(cx, cy), (cx + r * 0.7, y1), (cx - r * 0.7, y1)], fill=fill)


def draw_card(draw: ImageDraw.ImageDraw, box: Box, card: Card | None) -> None:
    """Draw ``card`` face up in ``box`` (big rank, suit symbol below), or face down if None."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    radius, line = max(1, round(w * 0.08)), max(1, round(w / 30))
    if card is None:
        draw.rounded_rectangle(box, radius, fill=CARD_BACK, outline=WHITE, width=line)
        m = w * 0.15
        draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), outline=WHITE, width=line)
        draw.line((x0 + m, y0 + m, x1 - m, y1 - m), fill=WHITE, width=line)
        draw.line((x0 + m, y1 - m, x1 - m, y0 + m), fill=WHITE, width=line)
        return
    color = RED if card.suit in ("H", "D") else BLACK
    draw.rounded_rectangle(box, radius, fill=WHITE, outline=BLACK, width=line)
    m = w * 0.08
    draw_text(draw, card.rank, (x0 + m, y0 + m, x1 - m, y0 + h * 0.58), color)
    side = min(w * 0.5, h * 0.3)
    cx, top = (x0 + x1) / 2, y0 + h * 0.63
    _suit_shape(draw, card.suit, (cx - side / 2, top, cx + side / 2, top + side), color)


def card_row(n: int, area: Box, aspect: float = 5 / 7, gap: float = 0.06,
             center: bool = True) -> list[Box]:
    """Boxes for ``n`` cards of width/height ``aspect`` in one row, as large as ``area`` allows.

    The row is centred in the area when ``center`` is True, else it starts at the area's left edge
    and is centred vertically; ``gap`` is the spacing as a fraction of the card width.
    """
    x0, y0, x1, y1 = area
    w = min((y1 - y0) * aspect, (x1 - x0) / (n + gap * (n - 1)))
    h = w / aspect
    top = (y0 + y1) / 2 - h / 2
    left = (x0 + x1) / 2 - w * (n + gap * (n - 1)) / 2 if center else x0
    lefts = [left + i * w * (1 + gap) for i in range(n)]
    return [(x, top, x + w, top + h) for x in lefts]
