"""Typed records: construction checks, and an exact Arrow/Parquet round trip."""

import pyarrow as pa
import pytest

from rollout.episode_arrow import EPISODE_SCHEMA, EpisodeBatch, image_hash
from rollout.types import Episode, Span, Task, Turn

pytestmark = pytest.mark.unit

IMG_A = b"\x89PNG fake image a"
IMG_B = b"\x89PNG fake image b"


def _turn(role="policy", version=3, **kw):
    base = dict(
        role=role,
        prompt_ids=(1, 2, 3),
        output_ids=(7, 8),
        output_logprobs=(-0.25, -1.5),
        adapter_version=version,
        text="hi",
    )
    base.update(kw)
    return Turn(**base)


def _episode(i, group="g0", images=(image_hash(IMG_A),)):
    observer = _turn("observer", 2, image_hashes=images, cot_span=Span(0, 1), action_span=Span(1, 2))
    reasoner = _turn("reasoner", 5, prompt_ids=(4,) * (i + 1), reward=0.5, latency_s=0.01)
    return Episode(
        episode_id=f"e{i}",
        group_id=group,
        task_id="t0",
        turns=(observer, reasoner),
        reward=1.0 - i,
        reward_components={"exact_match": 1.0, "format": 0.5},
        reward_reason="" if i == 0 else "wrong answer",
        finish_reason="answered",
        success=i == 0,
        answer="blue",
        metadata={"k": "v"},
    )


def test_turn_checks_lengths_and_spans():
    with pytest.raises(ValueError, match="output_logprobs"):
        _turn(output_logprobs=(-1.0,))
    with pytest.raises(ValueError, match="action_span"):
        _turn(action_span=Span(1, 3))
    with pytest.raises(ValueError, match="role"):
        _turn(role="two words")  # any identifier is a role (a registered rollout kind names its own)
    with pytest.raises(ValueError, match="start"):
        Span(2, 1)


def test_episode_policy_versions_are_min_per_role():
    ep = Episode("e", "g", "t", (_turn("reasoner", 4), _turn("reasoner", 3), _turn("observer", 9)))
    assert ep.policy_versions == {"reasoner": 3, "observer": 9}
    assert ep.num_generated_tokens == 6
    assert len(ep.turns_of("reasoner")) == 2


def test_task_answer_must_be_a_choice():
    with pytest.raises(ValueError, match="choices"):
        Task("t", "q?", "c", choices=("a", "b"))


def test_arrow_round_trip_is_exact_and_images_stored_once(tmp_path):
    batch = EpisodeBatch(
        (_episode(0), _episode(1), _episode(2, images=(image_hash(IMG_A), image_hash(IMG_B)))),
        {image_hash(IMG_A): IMG_A, image_hash(IMG_B): IMG_B},
    )
    episodes, images = batch.to_arrow()
    assert episodes.schema.equals(EPISODE_SCHEMA)
    assert images.num_rows == 2  # three episodes reference IMG_A, its bytes travel once
    assert EpisodeBatch.from_arrow(episodes, images) == batch
    # ragged, unpadded: the reasoner prompt of episode i has exactly i+1 tokens
    prompt_lens = [len(eps[1]["prompt_ids"]) for eps in episodes.column("turns").to_pylist()]
    assert prompt_lens == [1, 2, 3]
    batch.write_parquet(tmp_path)
    assert EpisodeBatch.read_parquet(tmp_path) == batch


def test_bootstrap_turn_round_trips_and_its_image_must_travel(tmp_path):
    boot = _turn(prompt_ids=(9, 9), output_ids=(), output_logprobs=(), image_hashes=(image_hash(IMG_B),),
                 trainable=False, text="")
    ep = Episode("e", "g", "t", (_turn(image_hashes=(image_hash(IMG_A),)),), finish_reason="truncated",
                 bootstrap=boot)
    batch = EpisodeBatch((ep, _episode(1)), {image_hash(IMG_A): IMG_A, image_hash(IMG_B): IMG_B})
    assert EpisodeBatch.from_arrow(*batch.to_arrow()) == batch
    assert batch.to_arrow()[0].column("bootstrap").to_pylist()[1] is None
    with pytest.raises(ValueError, match="missing bytes"):
        EpisodeBatch((ep,), {image_hash(IMG_A): IMG_A})  # the bootstrap state's image is missing
    with pytest.raises(ValueError, match="Episode.bootstrap: must be a prompt only turn"):
        Episode("e", "g", "t", (), bootstrap=_turn(trainable=False))


def test_batch_rejects_missing_image_bytes():
    with pytest.raises(ValueError, match="missing bytes"):
        EpisodeBatch((_episode(0),), {})


def test_from_arrow_rejects_foreign_schema():
    bad = pa.table({"episode_id": ["e"]})
    with pytest.raises(ValueError, match="schema"):
        EpisodeBatch.from_arrow(bad, pa.table({"hash": [], "bytes": []}))


def test_wire_format_bench_round_trips_every_format_exactly():
    from deploy.bench.wire_format import make_batch, measure

    batch = make_batch(episodes=16, turns=2, tokens=8, with_images=True)
    assert len(batch) == 16 and len(batch.images) == 2  # one image per group of 8
    assert len(batch.episodes[0].turns[1].prompt_ids) == 8 + 8 + 32  # the context so far plus 32 ids
    rows = measure(batch, reps=1)  # asserts each round trip equals the batch
    assert [r[0] for r in rows] == ["pickle", "cloudpickle", "arrow-ipc", "arrow-ipc tables only"]
    assert all(size > sum(map(len, batch.images.values())) for _, size, _, _ in rows)
