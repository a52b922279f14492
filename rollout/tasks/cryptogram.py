"""Cryptogram tasks after Groundlight's r1_vlm "message decoding": decode a substitution cipher
using a key that is only shown as an image.

Each example (as r1_vlm's ``message_decoding_words_and_sequences``):

- a message of 1-3 common English words (>= 3 letters), lower case, single spaces;
- a fresh random letter bijection (the *key*, coded letter -> plain letter) per example;
- the coded message with ``"_"`` for a space and a space between characters, e.g. ``"x q z _ d o g"``;
- the key rendered as an image: a grid of ``"coded -> plain"`` pairs, shuffled by default;
- the prompt asks for ``<think> ... <chars> c a t _ d o g </chars> ... </think>\\n<answer>cat dog</answer>``.

Randomness is a numpy ``Generator`` seeded with ``[seed, index]``: example ``index`` of a seed is the
same whether generated alone or in a batch, and different seeds give unrelated keys. The text
uses Pillow's embedded font (``ImageFont.load_default(size=...)``), so images are byte-identical on
every machine with the same Pillow version; that font has no arrow glyph, hence ``"->"``.

Difficulty knobs (:class:`CryptogramConfig`): word count range, word length range, how many pairs
the key image shows (the message's letters plus distractors), key order, image size. Tiny models
need e.g. :data:`EASY`: one short word, few pairs, sorted key, large glyphs.
"""

from __future__ import annotations

import io
import math
import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rollout.tasks.words import WORDS
from rollout.types import Task

ALPHABET = string.ascii_lowercase
SPACE_CODE = "_"
ARROW = " -> "


@lru_cache(maxsize=64)
def word_pool(min_len: int, max_len: int) -> tuple[str, ...]:
    """Words of the embedded list with ``min_len <= len <= max_len``, sorted."""
    return tuple(w for w in WORDS if min_len <= len(w) <= max_len)


@dataclass(frozen=True)
class CryptogramConfig:
    """How hard the generated cryptograms are and how the key image looks."""

    min_words: int = 1
    """Fewest words in a message."""
    max_words: int = 3
    """Most words in a message (r1_vlm: single words, pairs and triples)."""
    min_word_len: int = 3
    """Shortest word drawn from the word list (r1_vlm: >= 3 letters)."""
    max_word_len: int = 8
    """Longest word drawn from the word list (the embedded list has words up to 8 letters)."""
    key_letters: int = 26
    """Pairs drawn in the key image: every letter the message uses, plus random other pairs up
    to this many (26 = the whole alphabet, as r1_vlm; the message's letters are always shown)."""
    shuffle_key: bool = True
    """Shuffle the pairs in the image (r1_vlm); False sorts them by coded letter (easier)."""
    image_size: tuple[int, int] = (400, 400)
    """(width, height) of the key image in pixels."""
    font_size: int | None = None
    """Glyph size in pixels; None picks the largest that fits a grid cell."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"CryptogramConfig: need 1 <= min_words <= max_words, got {self}")
        if not 1 <= self.min_word_len <= self.max_word_len:
            raise ValueError(f"CryptogramConfig: need 1 <= min_word_len <= max_word_len, got {self}")
        if not word_pool(self.min_word_len, self.max_word_len):
            raise ValueError(f"CryptogramConfig: no word of length {self.min_word_len}-{self.max_word_len}")
        if not 0 <= self.key_letters <= len(ALPHABET):
            raise ValueError(f"CryptogramConfig.key_letters: must be in 0..26, got {self.key_letters}")
        if min(self.image_size) < 16:
            raise ValueError(f"CryptogramConfig.image_size: too small, got {self.image_size}")


EASY = CryptogramConfig(
    max_words=1, max_word_len=4, key_letters=6, shuffle_key=False, image_size=(256, 256)
)
"""A variant a tiny model can learn: one 3-4 letter word, at most 6 pairs, sorted, big glyphs."""


def random_key(rng: np.random.Generator) -> str:
    """A uniformly random bijection as a 26-letter string: ``key[i]`` is the plain letter that
    coded letter ``ALPHABET[i]`` stands for (the compact form stored in ``metadata["key"]``)."""
    return "".join(ALPHABET[i] for i in rng.permutation(len(ALPHABET)))


def spaced(text: str) -> str:
    """Characters separated by spaces, a word space written as ``"_"``: "cat dog" -> "c a t _ d o g"."""
    return " ".join(SPACE_CODE if c == " " else c for c in text)


def encode(plain: str, key: str) -> str:
    """The spaced coded message of ``plain`` under ``key`` (coded -> plain, so we invert it)."""
    to_coded = {p: c for c, p in zip(ALPHABET, key)}
    return spaced("".join(to_coded.get(ch, ch) for ch in plain))


def decode(coded: str, key: str) -> str:
    """The plain message of a spaced coded message: the inverse of :func:`encode`."""
    to_plain = dict(zip(ALPHABET, key))
    chars = coded.split(" ")
    return "".join(" " if c == SPACE_CODE else to_plain.get(c, c) for c in chars)


def sample_message(rng: np.random.Generator, config: CryptogramConfig) -> str:
    """``min_words..max_words`` words drawn uniformly (with replacement) from the word pool."""
    pool = word_pool(config.min_word_len, config.max_word_len)
    n_words = int(rng.integers(config.min_words, config.max_words + 1))
    return " ".join(pool[int(i)] for i in rng.integers(0, len(pool), size=n_words))


def key_pairs(
    plain: str, key: str, rng: np.random.Generator, config: CryptogramConfig
) -> list[tuple[str, str]]:
    """The (coded, plain) pairs the image shows: the message's letters plus distractors."""
    to_coded = {p: c for c, p in zip(ALPHABET, key)}
    needed = sorted({to_coded[ch] for ch in plain if ch != " "})
    others = [c for c in ALPHABET if c not in needed]
    extra = max(0, config.key_letters - len(needed))
    chosen = needed + [others[int(i)] for i in rng.choice(len(others), size=extra, replace=False)]
    pairs = [(c, key[ALPHABET.index(c)]) for c in sorted(chosen)]
    if config.shuffle_key:
        pairs = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    return pairs


def grid_shape(n: int) -> tuple[int, int]:
    """(columns, rows) of the key grid for ``n`` pairs: ceil(sqrt(n)) columns."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return cols, max(1, math.ceil(n / cols))


@lru_cache(maxsize=64)
def fitting_font_size(cell_w: int, cell_h: int) -> int:
    """Largest font size at which the pair text "w -> m" fits 90% of a cell's width, 60% of its height."""
    size = max(6, int(cell_h * 0.6))
    while size > 6:
        left, top, right, bottom = ImageFont.load_default(size=size).getbbox("w" + ARROW + "m")
        if right - left <= 0.9 * cell_w and bottom - top <= 0.6 * cell_h:
            break
        size -= 1
    return size


def render_key(pairs: list[tuple[str, str]], config: CryptogramConfig) -> bytes:
    """PNG bytes of a white image with the pairs as black "coded -> plain" text in a grid."""
    width, height = config.image_size
    cols, rows = grid_shape(len(pairs))
    cell_w, cell_h = width // cols, height // rows
    font = ImageFont.load_default(size=config.font_size or fitting_font_size(cell_w, cell_h))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for k, (coded, plain) in enumerate(pairs):
        col, row = k % cols, k // cols
        center = (col * cell_w + cell_w // 2, row * cell_h + cell_h // 2)
        draw.text(center, coded + ARROW + plain, fill="black", font=font, anchor="mm")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cryptogram_prompt(coded: str) -> str:
    """The instruction (r1_vlm's, reworded) with the r1_vlm output format and the coded message."""
    return (
        "The image is a decoder: each pair 'x -> c' means the coded letter x stands for the plain "
        "letter c. Decode the coded message below. Its characters are separated by spaces and an "
        "underscore '_' stands for a space between words. The decoded message is one or more "
        "English words.\n"
        "Think inside <think> </think> tags. While thinking, write the decoded characters in order "
        "inside <chars> </chars> tags, with '_' where a space goes. Then give the decoded message "
        "inside <answer> </answer> tags. For the coded message 'x q z _ d o g' the reply looks like:\n"
        "<think> ... <chars> c a t _ d o g </chars> ... </think>\n<answer>cat dog</answer>\n"
        f"The coded message is: {coded}"
    )


def make_cryptogram(seed: int, index: int, config: CryptogramConfig = CryptogramConfig()) -> Task:
    """Example ``index`` of stream ``seed``: a Task whose answer is the plain message.

    ``metadata``: ``coded`` (spaced coded message), ``key`` (see :func:`random_key`), ``chars``
    (the spaced plain message, the target of the <chars> block), ``num_words``.
    """
    rng = np.random.default_rng([seed, index])
    plain = sample_message(rng, config)
    key = random_key(rng)
    coded = encode(plain, key)
    image = render_key(key_pairs(plain, key, rng, config), config)
    metadata = {"coded": coded, "key": key, "chars": spaced(plain), "num_words": str(len(plain.split()))}
    return Task(
        task_id=f"cryptogram/{seed}/{index}",
        question=cryptogram_prompt(coded),
        answer=plain,
        image=image,
        source="cryptogram",
        metadata=metadata,
    )


def generate_cryptograms(
    n: int, seed: int = 0, config: CryptogramConfig = CryptogramConfig(), start: int = 0
) -> tuple[Task, ...]:
    """Examples ``start .. start+n-1`` of stream ``seed`` (see :func:`make_cryptogram`)."""
    return tuple(make_cryptogram(seed, i, config) for i in range(start, start + n))
