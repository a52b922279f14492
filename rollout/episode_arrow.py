"""The one Arrow schema of episodes, for storing them (:meth:`EpisodeBatch.write_parquet`,
:meth:`EpisodeBatch.read_parquet`) and for the exact round trip the tests check; a run writes no
episode Parquet today (its transcripts are JSONL, :mod:`rollout.transcript`).

Not the wire format: between processes (rollout worker -> driver -> learner) an
:class:`EpisodeBatch` travels as the pickled dataclasses Ray sends by default, measured 1.5-2x
faster per round trip than Arrow IPC to and from the dataclasses, for 2-6% more bytes
(``python -m deploy.bench.wire_format``; the figures are in that module's docstring).

Layout: one row per :class:`~rollout.types.Episode`; its turns are a ``list<struct>`` column whose
token ids and log-probs are ragged ``list`` columns (no padding). Images never travel
inside turns: a turn names its images by sha256 content hash, and an :class:`EpisodeBatch` carries a
second table ``(hash, bytes)`` holding every distinct image once, however many turns or episodes
(a group of G samples of one task) show it.

Log-probs are float64 so that a round trip is exact (``from_arrow(to_arrow(x)) == x``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from rollout.types import Episode, Span, Turn

SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32())])

TURN = pa.struct(
    [
        ("role", pa.string()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("output_ids", pa.list_(pa.int32())),
        ("output_logprobs", pa.list_(pa.float64())),
        ("adapter_version", pa.int64()),
        ("text", pa.string()),
        ("image_hashes", pa.list_(pa.string())),
        ("trainable", pa.bool_()),
        ("cot_span", SPAN),
        ("action_span", SPAN),
        ("reward", pa.float64()),
        ("finish_reason", pa.string()),
        ("latency_s", pa.float64()),
    ]
)

EPISODE_SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("group_id", pa.string()),
        ("task_id", pa.string()),
        ("turns", pa.list_(TURN)),
        ("reward", pa.float64()),
        ("reward_components", pa.map_(pa.string(), pa.float64())),
        ("reward_reason", pa.string()),
        ("finish_reason", pa.string()),
        ("success", pa.bool_()),
        ("answer", pa.string()),
        ("policy_versions", pa.map_(pa.string(), pa.int64())),
        ("metadata", pa.map_(pa.string(), pa.string())),
        ("bootstrap", TURN),
    ]
)

IMAGE_SCHEMA = pa.schema([("hash", pa.string()), ("bytes", pa.binary())])


def image_hash(data: bytes) -> str:
    """Content hash naming an encoded image everywhere in the system."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class EpisodeBatch:
    """Episodes plus the images their turns reference, each image stored once."""

    episodes: tuple[Episode, ...]
    images: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = {h for e in self.episodes for t in (*e.turns, *_bootstrap(e)) for h in t.image_hashes} - set(self.images)
        if missing:
            raise ValueError(f"EpisodeBatch.images: missing bytes for hashes {sorted(missing)[:3]}")

    def __len__(self) -> int:
        return len(self.episodes)

    @staticmethod
    def concat(batches: Iterable["EpisodeBatch"]) -> "EpisodeBatch":
        episodes: list[Episode] = []
        images: dict[str, bytes] = {}
        for b in batches:
            episodes.extend(b.episodes)
            images.update(b.images)
        return EpisodeBatch(tuple(episodes), images)

    def to_arrow(self) -> tuple[pa.Table, pa.Table]:
        """(episodes table with :data:`EPISODE_SCHEMA`, images table with :data:`IMAGE_SCHEMA`)."""
        rows = [_episode_row(e) for e in self.episodes]
        episodes = pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA)
        hashes = sorted(self.images)
        images = pa.table({"hash": hashes, "bytes": [self.images[h] for h in hashes]}, schema=IMAGE_SCHEMA)
        return episodes, images

    @staticmethod
    def from_arrow(episodes: pa.Table, images: pa.Table) -> "EpisodeBatch":
        if not episodes.schema.equals(EPISODE_SCHEMA):
            raise ValueError(f"episodes table: schema differs from EPISODE_SCHEMA:\n{episodes.schema}")
        eps = tuple(_episode_from_row(r) for r in episodes.to_pylist())
        imgs = dict(zip(images.column("hash").to_pylist(), images.column("bytes").to_pylist()))
        return EpisodeBatch(eps, imgs)

    def write_parquet(self, directory: str | Path) -> None:
        """Write ``episodes.parquet`` and ``images.parquet`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        episodes, images = self.to_arrow()
        pq.write_table(episodes, d / "episodes.parquet")
        pq.write_table(images, d / "images.parquet")

    @staticmethod
    def read_parquet(directory: str | Path) -> "EpisodeBatch":
        d = Path(directory)
        return EpisodeBatch.from_arrow(
            pq.read_table(d / "episodes.parquet", schema=EPISODE_SCHEMA),
            pq.read_table(d / "images.parquet", schema=IMAGE_SCHEMA),
        )


def _bootstrap(e: Episode) -> tuple[Turn, ...]:
    return (e.bootstrap,) if e.bootstrap is not None else ()


def _span_dict(span: Span | None) -> dict | None:
    return None if span is None else {"start": span.start, "end": span.end}


def _turn_row(t: Turn) -> dict:
    return {
        "role": t.role,
        "prompt_ids": list(t.prompt_ids),
        "output_ids": list(t.output_ids),
        "output_logprobs": list(t.output_logprobs),
        "adapter_version": t.adapter_version,
        "text": t.text,
        "image_hashes": list(t.image_hashes),
        "trainable": t.trainable,
        "cot_span": _span_dict(t.cot_span),
        "action_span": _span_dict(t.action_span),
        "reward": t.reward,
        "finish_reason": t.finish_reason,
        "latency_s": t.latency_s,
    }


def _episode_row(e: Episode) -> dict:
    return {
        "episode_id": e.episode_id,
        "group_id": e.group_id,
        "task_id": e.task_id,
        "turns": [_turn_row(t) for t in e.turns],
        "reward": e.reward,
        "reward_components": list(e.reward_components.items()),
        "reward_reason": e.reward_reason,
        "finish_reason": e.finish_reason,
        "success": e.success,
        "answer": e.answer,
        "policy_versions": list(e.policy_versions.items()),
        "metadata": list(e.metadata.items()),
        "bootstrap": _turn_row(e.bootstrap) if e.bootstrap is not None else None,
    }


def _turn_from_row(r: dict) -> Turn:
    def span(d: dict | None) -> Span | None:
        return None if d is None else Span(d["start"], d["end"])

    return Turn(
        role=r["role"],
        prompt_ids=tuple(r["prompt_ids"]),
        output_ids=tuple(r["output_ids"]),
        output_logprobs=tuple(r["output_logprobs"]),
        adapter_version=r["adapter_version"],
        text=r["text"],
        image_hashes=tuple(r["image_hashes"]),
        trainable=r["trainable"],
        cot_span=span(r["cot_span"]),
        action_span=span(r["action_span"]),
        reward=r["reward"],
        finish_reason=r["finish_reason"],
        latency_s=r["latency_s"],
    )


def _episode_from_row(r: dict) -> Episode:
    return Episode(
        episode_id=r["episode_id"],
        group_id=r["group_id"],
        task_id=r["task_id"],
        turns=tuple(_turn_from_row(t) for t in r["turns"]),
        reward=r["reward"],
        reward_components=dict(r["reward_components"]),
        reward_reason=r["reward_reason"],
        finish_reason=r["finish_reason"],
        success=r["success"],
        answer=r["answer"],
        policy_versions=dict(r["policy_versions"]),
        metadata=dict(r["metadata"]),
        bootstrap=_turn_from_row(r["bootstrap"]) if r["bootstrap"] is not None else None,
    )
