"""The ``easy-vqa`` PyPI data set as tasks: 64x64 PNGs of one coloured shape, short questions.

The package (pinned ``easy-vqa==1.0``) ships 4,000 train / 1,000 test images and 38,575 / 9,673
questions with 13 possible answers (yes/no, 3 shapes, 8 colours). Its own readers give the question
list in file order and a map image_id -> PNG path; we keep that order, so task ids
``easy_vqa/{split}/{index:05d}`` (index in the package's question file) are deterministic, and the
PNG bytes are stored exactly as shipped (no re-encoding).

Each task's ``metadata["caption"]`` describes its image from the answers the package gives to the
colour and shape questions about that same image ("a blue rectangle"; "a blue shape" or "a
rectangle" when only one is asked; absent when neither is): the reference caption of the IMMO
recipe's dialogue warm start (IMMO's first stage trains on written dialogues).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import easy_vqa

from rollout.tasks.schema import write_tasks
from rollout.tasks.validate import TaskLoadResult, collect_rows

SPLITS = ("train", "test")
COLOURS = ("red", "green", "blue", "black", "gray", "yellow", "teal", "brown")
SHAPES = ("circle", "rectangle", "triangle")


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


def image_captions(answers: Sequence[str], image_ids: Sequence[int]) -> dict[int, str]:
    """image id -> caption from the colour / shape answers about that image (module docstring)."""
    colour: dict[int, str] = {}
    shape: dict[int, str] = {}
    for answer, image_id in zip(answers, image_ids):
        if answer in COLOURS:
            colour[image_id] = answer
        elif answer in SHAPES:
            shape[image_id] = answer
    out = {}
    for image_id in set(colour) | set(shape):
        c, s = colour.get(image_id), shape.get(image_id)
        out[image_id] = f"a {c} {s}" if c and s else f"a {c} shape" if c else f"a {s}"
    return out


def _rows(split: str, limit: int | None, keep: frozenset[str] | None = None) -> Iterator[tuple[int, dict | str]]:
    questions, answers, image_ids, paths = _split_data(split)
    captions = image_captions(answers, image_ids)
    images: dict[int, bytes] = {}
    kept = 0
    for i in range(len(questions)):
        if limit is not None and kept >= limit:
            return
        if keep is not None and answers[i] not in keep:
            continue
        kept += 1
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
            "metadata": {"split": split, "image_id": str(image_id)}
            | ({"caption": captions[image_id]} if image_id in captions else {}),
        }


def load_easy_vqa(
    split: str = "train", limit: int | None = None, *, answers: Sequence[str] | None = None,
    check_images: bool = True,
) -> TaskLoadResult:
    """The first ``limit`` questions (all if None) of ``split`` as tasks, in the package's order.

    ``answers`` keeps only questions whose answer is in it (e.g. the 8 colours: the colour
    questions); task ids keep the index in the package's file, so a filtered set is a subset.
    """
    if answers is not None:
        unknown = set(answers) - set(answer_space())
        if unknown:
            raise ValueError(f"easy_vqa: answers {sorted(unknown)} not in the answer space {answer_space()}")
    keep = frozenset(answers) if answers is not None else None
    return collect_rows(_rows(split, limit, keep), check_images=check_images)


def convert_easy_vqa(
    out_dir: str | Path, split: str = "train", limit: int | None = None
) -> tuple[Path, TaskLoadResult]:
    """Write ``split`` to ``out_dir/easy_vqa_{split}.parquet``; returns (path, what was loaded)."""
    result = load_easy_vqa(split, limit)
    path = Path(out_dir) / f"easy_vqa_{split}.parquet"
    write_tasks(path, result.tasks)
    return path, result
