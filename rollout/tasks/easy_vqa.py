"""The ``easy-vqa`` PyPI data set as tasks: 64x64 PNGs of one coloured shape, short questions.

The package (pinned ``easy-vqa==1.0``) ships 4,000 train / 1,000 test images and 38,575 / 9,673
questions with 13 possible answers (yes/no, 3 shapes, 8 colours). Its own readers give the question
list in file order and a map image_id -> PNG path; we keep that order, so task ids
``easy_vqa/{split}/{index:05d}`` (index in the package's question file) are deterministic, and the
PNG bytes are stored exactly as shipped (no re-encoding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import easy_vqa

from rollout.tasks.schema import write_tasks
from rollout.tasks.validate import TaskLoadResult, collect_rows

SPLITS = ("train", "test")


def _split_data(split: str) -> tuple[list[str], list[str], list[int], dict[int, str]]:
    """(questions, answers, image_ids, image_id -> png path) from the installed package."""
    if split == "train":
        return (*easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths())
    if split == "test":
        return (*easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths())
    raise ValueError(f"easy_vqa: unknown split {split!r}, expected one of {SPLITS}")


def answer_space() -> tuple[str, ...]:
    """The 13 answers of easy-vqa, in the package's order."""
    return tuple(easy_vqa.get_answers())


def _rows(split: str, limit: int | None) -> Iterator[tuple[int, dict | str]]:
    questions, answers, image_ids, paths = _split_data(split)
    n = len(questions) if limit is None else min(limit, len(questions))
    images: dict[int, bytes] = {}
    for i in range(n):
        image_id = image_ids[i]
        if image_id not in paths:
            yield i, "image file not found"
            continue
        if image_id not in images:
            images[image_id] = Path(paths[image_id]).read_bytes()
        yield i, {
            "task_id": f"easy_vqa/{split}/{i:05d}",
            "question": questions[i],
            "answer": answers[i],
            "image": images[image_id],
            "source": "easy_vqa",
            "metadata": {"split": split, "image_id": str(image_id)},
        }


def load_easy_vqa(
    split: str = "train", limit: int | None = None, *, check_images: bool = True
) -> TaskLoadResult:
    """The first ``limit`` questions (all if None) of ``split`` as tasks, in the package's order."""
    return collect_rows(_rows(split, limit), check_images=check_images)


def convert_easy_vqa(
    out_dir: str | Path, split: str = "train", limit: int | None = None
) -> tuple[Path, TaskLoadResult]:
    """Write ``split`` to ``out_dir/easy_vqa_{split}.parquet``; returns (path, what was loaded)."""
    result = load_easy_vqa(split, limit)
    path = Path(out_dir) / f"easy_vqa_{split}.parquet"
    write_tasks(path, result.tasks)
    return path, result
