"""Cryptogram generator: bijective keys, coded messages that decode back, determinism, key images."""

from __future__ import annotations

import io
import string

import numpy as np
import pytest
from PIL import Image

from rollout.tasks.cryptogram import (
    EASY,
    CryptogramConfig,
    decode,
    encode,
    generate_cryptograms,
    key_pairs,
    make_cryptogram,
    render_key,
    spaced,
)
from rollout.tasks.words import WORDS

pytestmark = pytest.mark.unit

ALPHABET = string.ascii_lowercase


def test_encode_decode_by_hand():
    # key[i] is the plain letter of coded letter ALPHABET[i]; this key says coded a -> plain b,
    # coded b -> plain c, ..., coded z -> plain a, so plain letter p is coded as the letter before it:
    # "cat" -> "b z s", "dog" -> "c n f"; the space becomes "_".
    key = ALPHABET[1:] + "a"
    assert encode("cat dog", key) == "b z s _ c n f"
    assert decode("b z s _ c n f", key) == "cat dog"
    assert spaced("cat dog") == "c a t _ d o g"


def test_word_list_is_common_words_of_three_or_more_letters():
    assert len(WORDS) >= 300
    assert all(w.isascii() and w.isalpha() and w.islower() and len(w) >= 3 for w in WORDS)
    assert list(WORDS) == sorted(set(WORDS))


def test_generated_messages_decode_back_through_a_bijective_key():
    tasks = generate_cryptograms(40, seed=0)
    for task in tasks:
        key, coded = task.metadata["key"], task.metadata["coded"]
        assert sorted(key) == list(ALPHABET)  # a permutation of the alphabet = a bijection
        assert decode(coded, key) == task.answer
        assert encode(task.answer, key) == coded
        assert task.metadata["chars"] == spaced(task.answer)
        words = task.answer.split(" ")
        assert 1 <= len(words) <= 3 and task.metadata["num_words"] == str(len(words))
        assert all(w in WORDS for w in words)
        assert coded in task.question and "<chars>" in task.question and "<answer>" in task.question
        assert task.source == "cryptogram" and task.choices == ()
    assert {len(t.answer.split(" ")) for t in tasks} == {1, 2, 3}  # singles, pairs and triples occur
    assert len({t.task_id for t in tasks}) == 40


def test_same_seed_same_tasks_and_examples_are_addressable_by_index():
    first = generate_cryptograms(5, seed=7)
    again = generate_cryptograms(5, seed=7)
    assert first == again  # Task equality includes the PNG bytes
    assert make_cryptogram(7, 3) == first[3]
    assert generate_cryptograms(2, seed=7, start=3) == first[3:5]


def test_different_seeds_give_different_keys():
    keys_a = [t.metadata["key"] for t in generate_cryptograms(5, seed=0)]
    keys_b = [t.metadata["key"] for t in generate_cryptograms(5, seed=1)]
    assert len(set(keys_a) | set(keys_b)) == 10
    assert len({t.metadata["key"] for t in generate_cryptograms(20, seed=0)}) == 20


@pytest.mark.parametrize("size", [(400, 400), (320, 200)])
def test_key_image_has_the_configured_size_and_differs_between_keys(size):
    config = CryptogramConfig(image_size=size)
    tasks = generate_cryptograms(3, seed=11, config=config)
    pixels = []
    for task in tasks:
        with Image.open(io.BytesIO(task.image)) as im:
            assert im.format == "PNG" and im.size == size
            pixels.append(np.asarray(im.convert("L")))
    assert all((p < 128).sum() > 100 for p in pixels)  # text was drawn
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])


def test_changing_one_pair_changes_the_image():
    config = CryptogramConfig(key_letters=3, shuffle_key=False)
    assert render_key([("a", "b"), ("c", "d")], config) == render_key([("a", "b"), ("c", "d")], config)
    assert render_key([("a", "b"), ("c", "d")], config) != render_key([("a", "b"), ("c", "e")], config)


def test_key_pairs_show_the_message_letters_plus_distractors():
    key = ALPHABET[1:] + "a"  # coded x -> plain x+1
    rng = np.random.default_rng(0)
    config = CryptogramConfig(key_letters=5, shuffle_key=False)
    pairs = key_pairs("cab", key, rng, config)
    # "cab" uses plain c, a, b, i.e. coded b, z, a; 2 distractors make 5 pairs, sorted by coded letter.
    assert len(pairs) == 5
    assert {("b", "c"), ("z", "a"), ("a", "b")} <= set(pairs)
    assert all(plain == key[ALPHABET.index(coded)] for coded, plain in pairs)
    assert [c for c, _ in pairs] == sorted(c for c, _ in pairs)
    # key_letters below the message's needs still shows every needed letter.
    assert len(key_pairs("cab", key, rng, CryptogramConfig(key_letters=0))) == 3
    assert len(key_pairs("cab", key, rng, CryptogramConfig())) == 26


def test_easy_variant_is_one_short_word_with_a_small_key():
    for task in generate_cryptograms(20, seed=3, config=EASY):
        assert " " not in task.answer and 3 <= len(task.answer) <= 4
        with Image.open(io.BytesIO(task.image)) as im:
            assert im.size == (256, 256)


@pytest.mark.parametrize(
    "fields",
    [dict(min_words=3, max_words=2), dict(min_word_len=9, max_word_len=12), dict(key_letters=27),
     dict(image_size=(8, 400))],
)
def test_invalid_config_raises(fields):
    with pytest.raises(ValueError, match="CryptogramConfig"):
        CryptogramConfig(**fields)
