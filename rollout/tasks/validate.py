"""Row validation shared by every task loader: accept well-formed rows, skip and count the rest.

Every loader (Parquet, easy-vqa, ScienceQA, SNLI-VE, Visual Genome) turns its raw records into the
same plain field dict (``task_id, question, answer, image, choices, source, metadata``) and hands it
to a :class:`TaskCollector`. The collector applies one set of checks, in a fixed order, and records
the first problem of each bad row as a short reason string, so a data set's damage is reported as a
count per reason instead of a crash three processes later (or a silent zero reward).

Row reasons produced here (format loaders add their own, e.g. "image file not found"):

- ``"missing task_id"``: null, empty or not a string
- ``"missing question"``: null, not a string, or only whitespace
- ``"missing answer"``: null, not a string, or only whitespace
- ``"choices: not a list of strings"`` / ``"duplicate choices"`` / ``"answer not among choices"``
- ``"metadata: not a string map"``: keys or values that are not strings (or null);
  the Parquet reader also reports ``"metadata: duplicate key"`` for a map with a repeated key
- ``"image: not bytes"`` / ``"undecodable image"``: bytes Pillow cannot fully decode
- ``"duplicate task_id"``: the id of a row already accepted (the first valid row wins)
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from PIL import Image, UnidentifiedImageError

from rollout.types import Task


class TaskDataError(ValueError):
    """A whole task file or column is unusable (unreadable, missing or mistyped column)."""


@dataclass(frozen=True)
class TaskLoadResult:
    """What a loader returns: the accepted tasks and every skipped row with its reason."""

    tasks: tuple[Task, ...]
    skipped_rows: tuple[tuple[int, str], ...] = ()
    """(row_index, reason) for each skipped row, in input order; row_index counts from 0."""

    @property
    def skipped(self) -> int:
        return len(self.skipped_rows)

    @property
    def reasons(self) -> Counter[str]:
        """Number of skipped rows per reason."""
        return Counter(reason for _, reason in self.skipped_rows)

    def summary(self) -> str:
        """One line for logs, e.g. ``"98 tasks, 2 skipped (missing answer: 1, undecodable image: 1)"``."""
        parts = ", ".join(f"{r}: {n}" for r, n in sorted(self.reasons.items()))
        return f"{len(self.tasks)} tasks, {self.skipped} skipped" + (f" ({parts})" if parts else "")


def image_decodes(data: bytes) -> bool:
    """True iff Pillow can identify *and* fully decode ``data`` (``load()`` catches truncation)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _is_blank(value: Any) -> bool:
    return not isinstance(value, str) or not value.strip()


def _choices_problem(choices: Any, answer: str) -> str | None:
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, str) for c in choices):
        return "choices: not a list of strings"
    if len(set(choices)) != len(choices):
        return "duplicate choices"
    if choices and answer not in choices:
        return "answer not among choices"
    return None


def _metadata_problem(metadata: Any) -> str | None:
    if not isinstance(metadata, Mapping):
        return "metadata: not a string map"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        return "metadata: not a string map"
    return None


class TaskCollector:
    """Accumulates rows into a :class:`TaskLoadResult`, checking each one (see module docstring).

    ``check_images=False`` skips the Pillow decode (faster for trusted, already-validated files);
    decode results are cached per distinct image bytes, so a data set whose records share images
    (SNLI-VE, Visual Genome) decodes each image once.
    """

    def __init__(self, *, check_images: bool = True) -> None:
        self.check_images = check_images
        self._tasks: list[Task] = []
        self._skipped: list[tuple[int, str]] = []
        self._seen_ids: set[str] = set()
        self._decodes: dict[bytes, bool] = {}

    def skip(self, row_index: int, reason: str) -> None:
        """Record a row a format loader already found malformed."""
        self._skipped.append((row_index, reason))

    def add(self, row_index: int, fields: Mapping[str, Any]) -> Task | None:
        """Check one row's fields; keep it as a Task or record why it was skipped."""
        reason = self.problem(fields)
        if reason is not None:
            self.skip(row_index, reason)
            return None
        task = Task(
            task_id=fields["task_id"],
            question=fields["question"],
            answer=fields["answer"],
            image=fields.get("image"),
            choices=tuple(fields.get("choices") or ()),
            source=fields.get("source") or "",
            metadata=dict(fields.get("metadata") or {}),
        )
        self._seen_ids.add(task.task_id)
        self._tasks.append(task)
        return task

    def problem(self, fields: Mapping[str, Any]) -> str | None:
        """The first problem of a row in the documented order, or None if it is a valid task."""
        if _is_blank(fields.get("task_id")):
            return "missing task_id"
        if _is_blank(fields.get("question")):
            return "missing question"
        if _is_blank(fields.get("answer")):
            return "missing answer"
        reason = _choices_problem(fields.get("choices") or (), fields["answer"])
        reason = reason or _metadata_problem(fields.get("metadata") or {})
        reason = reason or self._image_problem(fields.get("image"))
        if reason is None and fields["task_id"] in self._seen_ids:
            return "duplicate task_id"
        return reason

    def _image_problem(self, image: Any) -> str | None:
        if image is None:
            return None
        if not isinstance(image, bytes):
            return "image: not bytes"
        if self.check_images:
            if image not in self._decodes:
                self._decodes[image] = image_decodes(image)
            if not self._decodes[image]:
                return "undecodable image"
        return None

    def result(self) -> TaskLoadResult:
        return TaskLoadResult(tasks=tuple(self._tasks), skipped_rows=tuple(self._skipped))


def collect_rows(
    rows: Iterable[tuple[int, Mapping[str, Any] | str]], limit: int | None = None, *, check_images: bool = True
) -> TaskLoadResult:
    """Run ``(row_index, fields or reason)`` pairs through a collector; ``limit`` caps the rows."""
    collector = TaskCollector(check_images=check_images)
    for n, (index, row) in enumerate(rows):
        if limit is not None and n >= limit:
            break
        if isinstance(row, str):
            collector.skip(index, row)
        else:
            collector.add(index, row)
    return collector.result()
