"""easy-vqa conversion to Parquet (on the installed package's real files) and the task registry."""

from __future__ import annotations

import io
from pathlib import Path

import easy_vqa
import pytest
from PIL import Image

from rollout.tasks import TASK_SOURCES, CryptogramConfig, load_task_source, write_tasks
from rollout.tasks.cryptogram import generate_cryptograms
from rollout.tasks.easy_vqa import answer_space, convert_easy_vqa, image_captions, load_easy_vqa
from rollout.tasks.schema import read_tasks

pytestmark = pytest.mark.unit


def test_convert_easy_vqa_test_split_matches_the_package_files(tmp_path):
    path, loaded = convert_easy_vqa(tmp_path, "test", limit=50)
    assert path == tmp_path / "easy_vqa_test.parquet"
    result = read_tasks(path)
    assert result.tasks == loaded.tasks and result.skipped == 0 and len(result.tasks) == 50
    # Reference: the package's own readers, row by row.
    questions, answers, image_ids = easy_vqa.get_test_questions()
    image_paths = easy_vqa.get_test_image_paths()
    for i, task in enumerate(result.tasks):
        assert task.task_id == f"easy_vqa/test/{i:05d}"
        assert (task.question, task.answer) == (questions[i], answers[i])
        assert task.image == Path(image_paths[image_ids[i]]).read_bytes()
        assert {k: v for k, v in task.metadata.items() if k != "caption"} == {"split": "test",
                                                                              "image_id": str(image_ids[i])}
        assert task.answer in answer_space() and task.source == "easy_vqa"
    with Image.open(io.BytesIO(result.tasks[0].image)) as im:
        assert im.size == (64, 64)


def test_captions_come_from_the_colour_and_shape_answers_about_the_image():
    tasks = load_easy_vqa("train", limit=12).tasks  # the 12 questions about training image 0
    # the package's questions on it: "what is the blue shape?" -> rectangle, "what color is the
    # shape?" -> blue (and ten yes/no questions)
    assert {t.metadata["image_id"] for t in tasks} == {"0"}
    assert {t.metadata["caption"] for t in tasks} == {"a blue rectangle"}
    assert image_captions(["red", "yes", "circle", "no", "teal"], [1, 1, 2, 2, 3]) == {
        1: "a red shape", 2: "a circle", 3: "a teal shape"}
    assert image_captions(["triangle", "gray"], [7, 7]) == {7: "a gray triangle"}


def test_easy_vqa_ids_are_deterministic_and_answers_are_the_13():
    assert load_easy_vqa("train", limit=20) == load_easy_vqa("train", limit=20)
    assert len(answer_space()) == 13 and {"yes", "no", "circle", "teal"} <= set(answer_space())
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_easy_vqa("val")


def test_registry_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        load_task_source("mnist")
    for name in ("parquet", "easy_vqa", "cryptogram", "scienceqa", "snli_ve", "visual_genome"):
        assert name in str(err.value) and name in TASK_SOURCES


def test_registry_dispatches_with_kwargs(tmp_path):
    tasks = load_task_source("cryptogram", n=4, seed=5, max_words=1, key_letters=4).tasks
    assert tasks == generate_cryptograms(4, seed=5, config=CryptogramConfig(max_words=1, key_letters=4))
    write_tasks(tmp_path / "c.parquet", tasks)
    assert load_task_source("parquet", path=tmp_path / "c.parquet").tasks == tasks
    assert load_task_source("easy_vqa", split="test", limit=3).tasks == load_easy_vqa("test", 3).tasks
    with pytest.raises(ValueError, match="either config or its fields"):
        load_task_source("cryptogram", n=1, config=CryptogramConfig(), max_words=1)
