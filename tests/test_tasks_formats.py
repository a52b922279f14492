"""ScienceQA, SNLI-VE and Visual Genome loaders on small files in their distributed layouts."""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from PIL import Image

from rollout.tasks.formats import load_scienceqa, load_snli_ve, load_visual_genome
from rollout.tasks.schema import read_tasks, write_tasks
from rollout.tasks.validate import TaskDataError

pytestmark = pytest.mark.unit


def save_image(path, color, fmt="PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def problem(question="Which is a mammal?", choices=("cat", "trout"), answer=0, image=None, split="train", **extra):
    choices = choices if isinstance(choices, str) else list(choices)
    return {"question": question, "choices": choices, "answer": answer, "hint": "", "image": image,
            "lecture": "Mammals have fur.", "solution": "A cat is a mammal.", "split": split,
            "subject": "natural science", "grade": "grade2", **extra}


@pytest.fixture
def scienceqa(tmp_path):
    """problems.json + images/{split}/{pid}/image.png as ScienceQA ships them."""
    images = tmp_path / "images"
    png = save_image(images / "train" / "1" / "image.png", (10, 200, 30))
    (images / "train" / "8").mkdir(parents=True)
    (images / "train" / "8" / "image.png").write_bytes(b"\x89PNG broken")
    problems = {
        "1": problem(image="image.png", answer=1, choices=("trout", "cat", "newt")),  # row 0 valid
        "2": problem(),  # 1 valid, text only, empty hint
        "3": problem(answer=5),  # 2 answer index out of range
        "4": problem(answer="0"),  # 3 answer index not an integer
        "5": problem(image="image.png"),  # 4 image file not found
        "6": problem(question=""),  # 5 missing question
        "7": problem(choices="cat or trout"),  # 6 choices: not a list of strings
        "8": problem(image="image.png"),  # 7 undecodable image
        "9": problem(split="test"),  # 8 valid, but in the test split
        "10": problem(hint="Fur keeps animals warm."),  # 9 valid, hint becomes context
        "11": "not a problem",  # 10 record not an object
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    return tmp_path, png


def test_scienceqa_problems_json_with_split_filter(scienceqa):
    root, png = scienceqa
    result = load_scienceqa(root / "problems.json", root / "images", split="train")
    assert [t.task_id for t in result.tasks] == ["scienceqa/1", "scienceqa/2", "scienceqa/10"]
    assert result.skipped_rows == (
        (2, "answer index out of range"), (3, "answer index not an integer"), (4, "image file not found"),
        (5, "missing question"), (6, "choices: not a list of strings"), (7, "undecodable image"),
        (10, "record not an object"),
    )
    first, text_only, hinted = result.tasks
    assert first.image == png and first.choices == ("trout", "cat", "newt") and first.answer == "cat"
    assert first.metadata["answer_index"] == "1" and first.metadata["lecture"] == "Mammals have fur."
    assert first.metadata["split"] == "train" and "hint" not in first.metadata  # empty hint dropped
    assert text_only.image is None and text_only.question == "Which is a mammal?"
    assert hinted.question == "Which is a mammal?\nContext: Fur keeps animals warm."
    assert first.source == "scienceqa"


def test_scienceqa_all_splits_and_limit(scienceqa):
    root, _ = scienceqa
    everything = load_scienceqa(root / "problems.json", root / "images")
    assert len(everything.tasks) == 4 and everything.skipped == 7  # "9" (test split) now included
    assert load_scienceqa(root / "problems.json", root / "images", limit=3).reasons == Counter(
        {"answer index out of range": 1}
    )


def test_scienceqa_jsonl_records_with_pid_and_a_broken_line(tmp_path):
    lines = [json.dumps({**problem(), "pid": "a"}), "{broken", json.dumps({**problem(answer=1), "pid": "b"})]
    (tmp_path / "sqa.jsonl").write_text("\n".join(lines) + "\n")
    result = load_scienceqa(tmp_path / "sqa.jsonl")
    assert [(t.task_id, t.answer) for t in result.tasks] == [("scienceqa/a", "cat"), ("scienceqa/b", "trout")]
    assert result.skipped_rows == ((1, "invalid JSON line"),)


def snli(pair_id, image="1.jpg", label="entailment", hypothesis="A dog runs.", **extra):
    return json.dumps({"Flikr30kID": image, "sentence2": hypothesis, "gold_label": label, "pairID": pair_id,
                       "sentence1": "A brown dog runs on grass.", **extra})


def test_snli_ve_jsonl(tmp_path):
    jpg1 = save_image(tmp_path / "flickr" / "1.jpg", (90, 60, 30), "JPEG")
    jpg2 = save_image(tmp_path / "flickr" / "2.jpg", (30, 60, 90), "JPEG")
    lines = [
        snli("p0"),  # 0 valid
        snli("p1", label="contradiction", hypothesis="A cat sleeps."),  # 1 valid, same image
        snli("p2", label="-"),  # 2 invalid label (no annotator consensus in SNLI)
        snli("p3", hypothesis=" "),  # 3 missing hypothesis
        json.dumps({"sentence2": "x", "gold_label": "neutral", "pairID": "p4"}),  # 4 missing image id
        snli("p5", image="999.jpg"),  # 5 image file not found
        "{not json",  # 6 invalid JSON line
        snli("p0", label="neutral"),  # 7 duplicate task_id
        snli("p8", image="2", label="neutral"),  # 8 valid: id without suffix -> 2.jpg
    ]
    (tmp_path / "snli_ve_dev.jsonl").write_text("\n".join(lines))
    result = load_snli_ve(tmp_path / "snli_ve_dev.jsonl", tmp_path / "flickr")
    assert [(t.task_id, t.answer) for t in result.tasks] == [
        ("snli_ve/p0", "entailment"), ("snli_ve/p1", "contradiction"), ("snli_ve/p8", "neutral")]
    assert result.skipped_rows == (
        (2, "invalid label"), (3, "missing hypothesis"), (4, "missing image id"),
        (5, "image file not found"), (6, "invalid JSON line"), (7, "duplicate task_id"),
    )
    a, b, c = result.tasks
    assert a.image == jpg1 and a.image is b.image and c.image == jpg2  # shared image read once
    assert a.choices == ("entailment", "neutral", "contradiction")
    assert '"A dog runs."' in a.question and a.metadata == {
        "hypothesis": "A dog runs.", "image_id": "1.jpg", "premise": "A brown dog runs on grass."}
    assert [t.task_id for t in load_snli_ve(tmp_path / "snli_ve_dev.jsonl", tmp_path / "flickr", limit=2).tasks] == [
        "snli_ve/p0", "snli_ve/p1"]


def test_visual_genome_question_answers(tmp_path):
    jpg1 = save_image(tmp_path / "VG_100K" / "1.jpg", (0, 0, 255), "JPEG")
    jpg2 = save_image(tmp_path / "VG_100K_2" / "2.jpg", (0, 255, 0), "JPEG")
    doc = [
        {"id": 1, "qas": [
            {"qa_id": 10, "image_id": 1, "question": "What color is the sky?", "answer": "Blue. "},  # 0
            {"qa_id": 11, "image_id": 1, "question": "", "answer": "x"},  # 1 missing question
            {"qa_id": 12, "image_id": 1, "question": "Where?", "answer": "."},  # 2 missing answer
        ]},
        {"id": 2, "qas": [{"qa_id": 20, "image_id": 2, "question": "What is green?", "answer": "Grass"}]},  # 3
        {"id": 3, "qas": [{"qa_id": 30, "question": "a?", "answer": "b"},  # 4 image file not found
                          {"qa_id": 31, "question": "c?", "answer": "d"}]},  # 5 image file not found
        {"id": 4, "qas": "oops"},  # 6 qas not a list
        "junk",  # 7 record not an object
        {"id": 5, "qas": []},  # no rows
        {"id": 2, "qas": [{"question": "Is it day?", "answer": "Yes."}]},  # 8 valid, id from image+position
    ]
    (tmp_path / "question_answers.json").write_text(json.dumps(doc))
    result = load_visual_genome(tmp_path / "question_answers.json", tmp_path)
    assert [(t.task_id, t.question, t.answer) for t in result.tasks] == [
        ("visual_genome/10", "What color is the sky?", "Blue"),
        ("visual_genome/20", "What is green?", "Grass"),
        ("visual_genome/2-0", "Is it day?", "Yes"),
    ]
    assert result.tasks[0].image == jpg1 and result.tasks[1].image == jpg2
    assert result.tasks[0].metadata == {"image_id": "1", "raw_answer": "Blue. "}
    assert result.skipped_rows == (
        (1, "missing question"), (2, "missing answer"), (4, "image file not found"),
        (5, "image file not found"), (6, "qas not a list"), (7, "record not an object"),
    )


def test_loaded_tasks_round_trip_through_parquet(tmp_path, scienceqa):
    root, _ = scienceqa
    loaded = load_scienceqa(root / "problems.json", root / "images")
    write_tasks(tmp_path / "sqa.parquet", loaded.tasks)
    assert read_tasks(tmp_path / "sqa.parquet").tasks == loaded.tasks


def test_unreadable_annotation_files_raise_naming_the_file(tmp_path):
    (tmp_path / "problems.json").write_text("{not json")
    with pytest.raises(TaskDataError, match="cannot read JSON file .*problems.json"):
        load_scienceqa(tmp_path / "problems.json")
    with pytest.raises(TaskDataError, match="cannot read JSONL file .*missing.jsonl"):
        load_snli_ve(tmp_path / "missing.jsonl", tmp_path)
    (tmp_path / "qa.json").write_text('{"not": "a list"}')
    with pytest.raises(TaskDataError, match="Visual Genome: expected a list"):
        load_visual_genome(tmp_path / "qa.json", tmp_path)
