"""Transcripts with their images: what :class:`cluster.progress.RunLog` saves, and what the report reads.

On disk, for each saved batch ``NAME`` (``step_00003``, ``eval_after_rl``)::

    transcripts/NAME.txt          the episodes' text transcripts (rollout/transcript.py), blank-line separated
    transcripts/NAME/images.json  {"episodes": [{"turns": [[hash, ...], ...]}, ...]}, aligned with NAME.txt
    transcripts/NAME/<hash>.png   each image a saved turn showed, once (``.jpg`` etc. for other encodings)

A transcript's text has one line per turn (after an optional ``[task]`` line), so turn ``j``'s
images go beside its line. Pure stdlib: RunLog imports this module on the driver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from rollout.types import Episode

INDEX = "images.json"

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"RIFF", "webp"), (b"BM", "bmp"))
MIME = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp"}


def image_ext(data: bytes) -> str:
    """File extension of an encoded image by its magic bytes ("bin" when unknown)."""
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), "bin")


def save_images(directory: Path, episodes: Sequence[Episode], images: Mapping[str, bytes]) -> None:
    """Write each image the episodes' turns show into ``directory`` (once per hash) and the index
    of which turn shows which (:data:`INDEX`). Nothing is written when no turn shows an image."""
    turns = [[list(t.image_hashes) for t in e.turns] for e in episodes]
    hashes = {h for e in turns for t in e for h in t}
    if not hashes:
        return
    directory.mkdir(parents=True, exist_ok=True)
    for h in sorted(hashes):
        data = images[h]
        (directory / f"{h}.{image_ext(data)}").write_bytes(data)
    (directory / INDEX).write_text(json.dumps({"episodes": [{"turns": t} for t in turns]}) + "\n")


@dataclass(frozen=True)
class TranscriptImage:
    """One image of a turn: its content hash and the file holding it."""

    hash: str
    path: Path


@dataclass(frozen=True)
class TranscriptLine:
    """One line of a transcript and the images shown with it (turn lines only)."""

    text: str
    images: tuple[TranscriptImage, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """One saved batch: its name and its episodes, each a tuple of lines."""

    name: str
    episodes: tuple[tuple[TranscriptLine, ...], ...]


def _episode(text: str, turn_hashes: list[list[str]], files: Mapping[str, Path]) -> tuple[TranscriptLine, ...]:
    lines = text.split("\n")
    first = 1 if lines and lines[0].startswith("[task] ") else 0
    out = []
    for i, line in enumerate(lines):
        j = i - first
        hashes = turn_hashes[j] if 0 <= j < len(turn_hashes) else []
        out.append(TranscriptLine(line, tuple(TranscriptImage(h, files[h]) for h in hashes if h in files)))
    return tuple(out)


def load_transcript(txt: Path) -> Transcript:
    """A saved batch read back: episodes split at blank lines, each turn line with its images."""
    blocks = [b for b in txt.read_text(encoding="utf-8").strip("\n").split("\n\n") if b.strip()]
    folder = txt.with_suffix("")
    index = json.loads((folder / INDEX).read_text()) if (folder / INDEX).is_file() else {"episodes": []}
    files = {p.stem: p for p in folder.glob("*") if p.name != INDEX} if folder.is_dir() else {}
    turns = [e["turns"] for e in index["episodes"]]
    return Transcript(txt.stem, tuple(_episode(b, turns[i] if i < len(turns) else [], files)
                                      for i, b in enumerate(blocks)))


def load_transcripts(run_dir: Path, eval_order: Sequence[str] = ()) -> list[Transcript]:
    """Every saved batch of the run: evaluations first (in ``eval_order``, the order they ran; others
    after them by name), then steps in order."""
    d = run_dir / "transcripts"
    rank = {f"eval_{label}": i for i, label in enumerate(eval_order)}

    def order(path: Path) -> tuple[int, int, str]:
        is_eval = path.stem.startswith("eval_")
        return (0 if is_eval else 1, rank.get(path.stem, len(rank)), path.stem)

    return [load_transcript(p) for p in sorted(d.glob("*.txt"), key=order)] if d.is_dir() else []
