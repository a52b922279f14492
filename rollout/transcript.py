"""Readable transcripts of episodes: a text form (one line per turn) and a JSON form.

Text form, for eyes and logs::

    [task] easy_vqa/train/00001: what color is the shape? (reference 'red')
    [observer v3] A red circle on a white background.
    [reasoner v5] What colour is the circle?
    [observer v3] Red.
    [reasoner v5] <answer>red</answer>
    [result] answer='red' reward=1 finish=answered

The ``[task]`` line is there when the task is known (dataset tasks, not environment seeds).
Newlines inside a turn are written as ``\\n`` so each turn is one line; when any turn carries a
step reward (environment episodes) each line ends with ``(reward r)``.

Where it is saved: the rollout worker stores the text form in ``Episode.metadata["transcript"]``
(so it travels in the episode's Arrow row and its Parquet file, next to the tokens it describes).
The JSON form is derived on demand from the episode (:func:`transcript_json`) and written as JSON
Lines beside a batch by :func:`write_transcripts_jsonl`; it is not stored twice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

from rollout.types import Episode, Task, Turn

TRANSCRIPT_KEY = "transcript"
"""``Episode.metadata`` key holding the text transcript."""


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def turn_line(turn: Turn, show_reward: bool = False) -> str:
    """``[role vN] text`` (plus ``(reward r)`` when ``show_reward``)."""
    line = f"[{turn.role} v{turn.adapter_version}] {_one_line(turn.text)}"
    return f"{line} (reward {turn.reward:g})" if show_reward else line


def transcript_text(episode: Episode, task: Task | None = None) -> str:
    """A ``[task]`` line (when ``task`` is given), one line per turn, then a ``[result]`` line with
    answer, reward, finish reason (and why)."""
    show = any(t.reward != 0 for t in episode.turns)
    header = [f"[task] {task.task_id}: {_one_line(task.question)} (reference {task.answer!r})"] if task else []
    lines = header + [turn_line(t, show) for t in episode.turns]
    result = f"[result] answer={episode.answer!r} reward={episode.reward:g} finish={episode.finish_reason}"
    if episode.reward_reason:
        result += f" reason={_one_line(episode.reward_reason)!r}"
    return "\n".join(lines + [result])


def transcript_json(episode: Episode) -> dict[str, Any]:
    """The transcript as a JSON-ready dict: episode fields and one object per turn (no token ids)."""
    turns = [
        {"role": t.role, "adapter_version": t.adapter_version, "text": t.text, "reward": t.reward,
         "finish_reason": t.finish_reason, "prompt_tokens": len(t.prompt_ids),
         "output_tokens": len(t.output_ids), "images": list(t.image_hashes), "latency_s": t.latency_s}
        for t in episode.turns
    ]
    return {
        "episode_id": episode.episode_id, "group_id": episode.group_id, "task_id": episode.task_id,
        "reward": episode.reward, "reward_components": dict(episode.reward_components),
        "reward_reason": episode.reward_reason, "answer": episode.answer,
        "finish_reason": episode.finish_reason, "success": episode.success,
        "policy_versions": dict(episode.policy_versions), "turns": turns,
    }


def with_transcript(episode: Episode, task: Task | None = None) -> Episode:
    """``episode`` with its text transcript stored in ``metadata["transcript"]``."""
    metadata = {**episode.metadata, TRANSCRIPT_KEY: transcript_text(episode, task)}
    return dataclasses.replace(episode, metadata=metadata)


def write_transcripts_jsonl(episodes: Iterable[Episode], path: str | Path) -> None:
    """Write one :func:`transcript_json` object per line to ``path``."""
    with open(path, "w", encoding="utf-8") as f:
        for e in episodes:
            f.write(json.dumps(transcript_json(e), ensure_ascii=False) + "\n")
