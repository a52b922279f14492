"""Image-caption pairs drawn by the environments' own renderers, for pretraining the tiny VLM.

Every random-init model here has a vision tower that cannot read digits (issue 12 item 3), so the
pretrained built-in VLM (:mod:`deploy.offline_models.pretrain`) first learns to say what an RL
policy must read in each observation. Each example is an image, a short question and the caption
that answers it; the caption is written from the state the image was rendered from:

- ``numberline``: a :class:`rollout.envs.NumberLine` observation (the env's own pixels, at the sizes
  the recipes use) -> ``"Target: 3, Current: 1"`` (at 56 px the image says "T: 3" / "C: 1");
- ``numberline_jitter``: the same two lines drawn with :func:`rollout.envs.render.draw_text` at a
  random offset, scale and ink, digits 0-9 -> the same caption format (so the tower reads the digit
  glyphs, not 30 memorised pictures);
- ``blackjack``: a :class:`rollout.envs.Blackjack` deal -> ``"Dealer: K, Player: 7 9, Total: 16"``
  (ranks as drawn; the dealer's hole card is face down and not named);
- ``ezpoints``: a :class:`rollout.envs.EZPoints` hand after 0-2 formula steps ->
  ``"Cards: 5 Q, Formula: 5 +"`` (the formula as the image writes it, spaced);
- ``shapes``: one filled shape on a plain background (easy-VQA-like) -> ``"A red circle."``.

Everything is generated in-process from a seeded ``numpy`` generator: the same seed gives the same
examples (pixels included, on one machine's fonts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rollout.envs.blackjack import Blackjack
from rollout.envs.numberline import NumberLine
from rollout.envs.points import EZPoints
from rollout.envs.render import Card, draw_text

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (235, 210, 30),
           "black": (20, 20, 20), "gray": (128, 128, 128), "orange": (245, 140, 20), "purple": (140, 50, 170)}
"""The easy-VQA colours (name -> RGB)."""
SHAPES = ("circle", "square", "triangle")
"""The easy-VQA shapes."""

QUESTIONS = {
    "numberline": "What are the target and current numbers?",
    "numberline_jitter": "What are the target and current numbers?",
    "blackjack": "What cards do the dealer and the player show?",
    "ezpoints": "What cards and formula does the image show?",
    "shapes": "What shape and colour is in the image?",
}
"""The question asked with each kind of image (the user turn after the image)."""


@dataclass(frozen=True)
class CaptionExample:
    """One rendered image with the caption its state dictates."""

    kind: str
    """Which generator drew it (a key of :data:`QUESTIONS`)."""
    image: np.ndarray = field(repr=False)
    """(H, W, 3) uint8 RGB pixels."""
    question: str
    """The user's question after the image."""
    caption: str
    """The answer the model is trained to write: what the image shows, from its state."""
    state: dict[str, Any]
    """The symbolic state the image was drawn from (for checks): e.g. ``{"target": 3, "current": 1}``."""


def numberline_caption(target: int, current: int) -> str:
    """The read-out of a NumberLine observation."""
    return f"Target: {target}, Current: {current}"


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def numberline_example(rng: np.random.Generator, size: int) -> CaptionExample:
    """A fresh NumberLine observation of ``size`` pixels, drawn by the env from a random reset."""
    obs, info = NumberLine(image_size=size).reset(seed=_seed(rng))
    state = {"target": info["target"], "current": info["current"]}
    return CaptionExample("numberline", obs, QUESTIONS["numberline"], numberline_caption(**state), state)


def jitter_example(rng: np.random.Generator, size: int) -> CaptionExample:
    """"Target/Current" lines (short labels below 160 px, like the env) with digits 0-9 at a random
    offset and scale, dark ink on a light background."""
    target, current = (int(x) for x in rng.integers(0, 10, size=2))
    ink = tuple(int(x) for x in rng.integers(0, 80, size=3))
    paper = tuple(int(x) for x in rng.integers(200, 256, size=3))
    img = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(img)
    t, c = ("T: ", "C: ") if size < 160 else ("Target: ", "Current: ")
    scale, dx, dy = rng.uniform(0.75, 1.0), rng.uniform(-0.06, 0.06), rng.uniform(-0.04, 0.04)
    for text, (y0, y1) in ((f"{t}{target}", (0.06, 0.44)), (f"{c}{current}", (0.56, 0.94))):
        x0, x1 = 0.08 + dx, 0.08 + dx + 0.84 * scale
        y0, y1 = y0 + dy, y0 + dy + (y1 - y0) * scale
        draw_text(draw, text, (size * x0, size * y0, size * x1, size * y1), ink, align="left")
    state = {"target": target, "current": current}
    return CaptionExample("numberline_jitter", np.array(img), QUESTIONS["numberline_jitter"],
                          numberline_caption(**state), state)


def blackjack_caption(dealer_up: str, player: list[str], total: int) -> str:
    """The read-out of a Blackjack deal: the dealer's up card rank, the player's ranks and total."""
    return f"Dealer: {dealer_up}, Player: {' '.join(player)}, Total: {total}"


def blackjack_example(rng: np.random.Generator, size: int) -> CaptionExample:
    """A fresh Blackjack deal (dealer up card + face-down card, two player cards)."""
    obs, info = Blackjack(image_size=size).reset(seed=_seed(rng))
    up = Card.parse(info["dealer_cards"][0]).rank
    player = [Card.parse(c).rank for c in info["player_cards"]]
    state = {"dealer": up, "player": player, "total": info["player_total"]}
    return CaptionExample("blackjack", obs, QUESTIONS["blackjack"], blackjack_caption(up, player, state["total"]), state)


def ezpoints_caption(ranks: list[str], formula: str) -> str:
    """The read-out of an EZPoints observation: the card ranks and the formula so far."""
    return f"Cards: {' '.join(ranks)}, Formula: {formula}".rstrip()


def ezpoints_example(rng: np.random.Generator, size: int) -> CaptionExample:
    """A fresh EZPoints hand after 0-2 formula steps: a card's number, then maybe an operator."""
    env = EZPoints(image_size=size)
    obs, info = env.reset(seed=_seed(rng))
    steps = int(rng.integers(3))
    actions = [str(info["numbers"][int(rng.integers(2))]), str(rng.choice(["+", "*"]))][:steps]
    for a in actions:
        obs, _, _, _, info = env.step(EZPoints.ACTIONS.index(a))
    ranks = [Card.parse(c).rank for c in info["cards"]]
    state = {"ranks": ranks, "formula": info["formula_text"]}
    return CaptionExample("ezpoints", obs, QUESTIONS["ezpoints"], ezpoints_caption(ranks, state["formula"]), state)


def shapes_example(rng: np.random.Generator, size: int) -> CaptionExample:
    """One filled circle, square or triangle of a named colour on a white or pale background."""
    colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    img = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(225, 256, size=3)))
    r, cx, cy = size * rng.uniform(0.2, 0.35), size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6)
    draw, fill = ImageDraw.Draw(img), COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    state = {"colour": colour, "shape": shape}
    return CaptionExample("shapes", np.array(img), QUESTIONS["shapes"], f"A {colour} {shape}.", state)


GENERATORS: dict[str, Callable[[np.random.Generator, int], CaptionExample]] = {
    "numberline": numberline_example,
    "numberline_jitter": jitter_example,
    "blackjack": blackjack_example,
    "ezpoints": ezpoints_example,
    "shapes": shapes_example,
}
"""kind -> ``generator(rng, image_size)``."""


def examples(mix: tuple[tuple[str, int, float], ...], n: int, seed: int) -> list[CaptionExample]:
    """``n`` examples; ``mix`` is ``(kind, image_size, weight)`` rows, each example's row drawn with
    probability proportional to its weight, all from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    weights = np.array([w for _, _, w in mix], dtype=np.float64)
    rows = rng.choice(len(mix), size=n, p=weights / weights.sum())
    return [GENERATORS[mix[i][0]](rng, mix[i][1]) for i in rows]


def numberline_grid(size: int, max_position: int = 5) -> list[CaptionExample]:
    """Every NumberLine observation of ``size`` pixels (all ordered pairs current != target), as the
    env renders it: the complete set of states a numberline policy can see."""
    out = []
    for target in range(max_position + 1):
        for current in range(max_position + 1):
            if current != target:
                obs, _ = NumberLine(image_size=size).reset(options={"current": current, "target": target})
                state = {"target": target, "current": current}
                out.append(CaptionExample("numberline", obs, QUESTIONS["numberline"], numberline_caption(**state), state))
    return out
