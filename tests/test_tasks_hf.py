"""The "hf" task source: local data sets in every format Hugging Face ``datasets`` reads, written
here with datasets / pyarrow / PIL, loaded through ``load_task_source("hf", ...)`` and compared
with what was written (questions, answers, ids, metadata, and images decoded pixel for pixel)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from rollout.tasks import TaskDataError, load_task_source
from rollout.tasks.hf import detect_format

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "teal": (0, 128, 128)}


def encoded(colour: str, fmt: str = "PNG", size=(6, 4)) -> bytes:
    """A small image with one coloured pixel row on white, so pixel equality is meaningful."""
    img = Image.new("RGB", size, (255, 255, 255))
    for x in range(size[0]):
        img.putpixel((x, 0), COLOURS[colour])
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def pixels(data: bytes) -> tuple[tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size, img.convert("RGB").tobytes()


def load(tmp_path: Path, **kwargs):
    return load_task_source("hf", cache_dir=str(tmp_path / "hf-cache"), **kwargs)


def fields(result) -> list[tuple[str, str, str, str]]:
    return [(t.task_id, t.question, t.answer, t.source) for t in result.tasks]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


# ----------------------------------------------------------------------------- Parquet


def test_parquet_with_image_bytes_and_a_column_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jpeg = encoded("blue", "JPEG")
    table = pa.table({
        "problem": ["Colour of the top row?", "And here?", "Text only?"],
        "solution": ["red", "blue", "none"],
        "img": [encoded("red"), jpeg, None],
        "level": [1, 2, 3],
    })
    pq.write_table(table, tmp_path / "vqa.parquet")
    result = load(tmp_path, path=str(tmp_path / "vqa.parquet"), limit=None,
                  columns={"question": "problem", "answer": "solution", "image": "img", "metadata": ["level"]})
    assert fields(result) == [("vqa/train/0", "Colour of the top row?", "red", "vqa"),
                              ("vqa/train/1", "And here?", "blue", "vqa"),
                              ("vqa/train/2", "Text only?", "none", "vqa")]
    assert [t.metadata for t in result.tasks] == [{"level": "1"}, {"level": "2"}, {"level": "3"}]
    red, blue, text = (t.image for t in result.tasks)
    assert red.startswith(b"\x89PNG") and blue.startswith(b"\x89PNG") and text is None
    assert pixels(red) == pixels(encoded("red"))
    assert pixels(blue) == pixels(jpeg)  # the JPEG's decoded pixels, kept exactly by PNG
    assert result.skipped == 0


def test_parquet_written_by_datasets_with_an_image_feature(tmp_path):
    import datasets

    images = [Image.open(io.BytesIO(encoded(c))) for c in ("green", "teal")]
    ds = datasets.Dataset.from_dict({"question": ["q0", "q1"], "answer": ["green", "teal"], "image": images},
                                    features=datasets.Features({"question": datasets.Value("string"),
                                                                "answer": datasets.Value("string"),
                                                                "image": datasets.Image()}))
    ds.to_parquet(str(tmp_path / "shapes.parquet"))
    result = load(tmp_path, path=str(tmp_path / "shapes.parquet"), split="test")
    assert fields(result) == [("shapes/test/0", "q0", "green", "shapes"), ("shapes/test/1", "q1", "teal", "shapes")]
    assert [pixels(t.image) for t in result.tasks] == [pixels(encoded("green")), pixels(encoded("teal"))]


# ----------------------------------------------------------------------------- JSON / JSONL


def test_jsonl_with_image_paths_and_malformed_rows(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "r.png").write_bytes(encoded("red"))
    (tmp_path / "img" / "b.jpg").write_bytes(encoded("blue", "JPEG"))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    write_jsonl(tmp_path / "train.jsonl", [
        {"id": "a", "q": "What colour?", "a": "red", "image": "img/r.png"},
        {"id": "b", "q": "What colour?", "a": "blue", "image": str(tmp_path / "img" / "b.jpg")},  # absolute
        {"id": "c", "q": "What colour?", "a": "red", "image": "img/missing.png"},
        {"id": "d", "q": "What colour?", "a": "red", "image": "img/broken.png"},
        {"id": "e", "q": None, "a": "red", "image": "img/r.png"},
        {"id": "f", "q": 7, "a": "red", "image": None},
        {"id": "g", "q": "How many?", "a": 3, "image": None},  # a number answer becomes its text
        {"id": "a", "q": "Again?", "a": "red", "image": None},  # duplicate id
    ])
    result = load(tmp_path, path=str(tmp_path / "train.jsonl"),
                  columns={"question": "q", "answer": "a", "task_id": "id"})
    assert fields(result) == [("a", "What colour?", "red", "train"), ("b", "What colour?", "blue", "train"),
                              ("g", "How many?", "3", "train")]
    assert pixels(result.tasks[0].image) == pixels(encoded("red"))
    assert pixels(result.tasks[1].image) == pixels(encoded("blue", "JPEG"))
    assert result.skipped_rows == ((2, "image file not found"), (3, "unreadable image"), (4, "missing question"),
                                   (5, "question: not a string"), (7, "duplicate task_id"))
    assert result.reasons == Counter({"image file not found": 1, "unreadable image": 1, "missing question": 1,
                                      "question: not a string": 1, "duplicate task_id": 1})


def test_json_list_with_choices_and_images_dir(tmp_path):
    pics = tmp_path / "pictures"
    pics.mkdir()
    (pics / "0.png").write_bytes(encoded("teal"))
    records = [
        {"question": "Which colour?", "answer": "teal", "choices": ["red", "teal"], "file": "0.png"},
        {"question": "Which colour?", "answer": "blue", "choices": ["red", "teal"], "file": "0.png"},
        {"question": "Which colour?", "answer": "red", "choices": ["red", "red"], "file": "0.png"},
    ]
    (tmp_path / "mc.json").write_text(json.dumps(records))
    result = load(tmp_path, path=str(tmp_path / "mc.json"), images_dir=str(pics), name="colours",
                  columns={"image": "file", "choices": "choices"})
    assert fields(result) == [("colours/train/0", "Which colour?", "teal", "colours")]
    assert result.tasks[0].choices == ("red", "teal")
    assert pixels(result.tasks[0].image) == pixels(encoded("teal"))
    assert result.skipped_rows == ((1, "answer not among choices"), (2, "duplicate choices"))


def test_explicit_format_and_limit(tmp_path):
    write_jsonl(tmp_path / "rows.txt", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(5)])
    with pytest.raises(TaskDataError, match="cannot tell the format"):
        load(tmp_path, path=str(tmp_path / "rows.txt"))
    result = load(tmp_path, path=str(tmp_path / "rows.txt"), format="json", limit=2)
    assert fields(result) == [("rows/train/0", "q0", "a0", "rows"), ("rows/train/1", "q1", "a1", "rows")]


def test_glob_of_files_in_order(tmp_path):
    (tmp_path / "shards").mkdir()
    for k in range(2):
        write_jsonl(tmp_path / "shards" / f"part-{k}.jsonl", [{"question": f"q{k}{i}", "answer": "x"} for i in range(2)])
    result = load(tmp_path, path=str(tmp_path / "shards" / "*.jsonl"))
    assert [t.question for t in result.tasks] == ["q00", "q01", "q10", "q11"]
    assert [t.task_id for t in result.tasks] == [f"shards/train/{i}" for i in range(4)]


# ----------------------------------------------------------------------------- CSV


def test_csv_keeps_text_as_written(tmp_path):
    (tmp_path / "r.png").write_bytes(encoded("green"))
    (tmp_path / "qa.csv").write_text(
        "question,answer,image,topic\n"
        "How many legs?,02,r.png,animals\n"
        "What year?,1969,,history\n"
        "Empty answer?,,,misc\n"
    )
    result = load(tmp_path, path=str(tmp_path / "qa.csv"), columns={"metadata": ["topic"]})
    # pandas alone would read the answers as floats (2.0, 1969.0): every column is read as text
    assert fields(result) == [("qa/train/0", "How many legs?", "02", "qa"), ("qa/train/1", "What year?", "1969", "qa")]
    assert [t.metadata for t in result.tasks] == [{"topic": "animals"}, {"topic": "history"}]
    assert pixels(result.tasks[0].image) == pixels(encoded("green")) and result.tasks[1].image is None
    assert result.skipped_rows == ((2, "missing answer"),)


# ----------------------------------------------------------------------------- image folder


def test_imagefolder_with_metadata_and_splits(tmp_path):
    root = tmp_path / "folder"
    for split, colours in (("train", ["red", "green"]), ("test", ["blue", "teal"])):
        (root / split).mkdir(parents=True)
        for colour in colours:
            (root / split / f"{colour}.png").write_bytes(encoded(colour))
        write_jsonl(root / split / "metadata.jsonl",
                    [{"file_name": f"{c}.png", "prompt": "Top row colour?", "label": c} for c in colours])
    (root / "test" / "teal.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # listed, but broken
    assert detect_format(str(root)) == "imagefolder"
    result = load(tmp_path, path=str(root), split="test", columns={"question": "prompt", "answer": "label"})
    assert fields(result) == [("folder/test/0", "Top row colour?", "blue", "folder")]
    assert pixels(result.tasks[0].image) == pixels(encoded("blue"))
    assert result.skipped_rows == ((1, "unreadable image"),)
    train = load(tmp_path, path=str(root), columns={"question": "prompt", "answer": "label"})
    assert sorted(t.answer for t in train.tasks) == ["green", "red"]
    by_answer = {t.answer: t.image for t in train.tasks}
    assert {c: pixels(b) for c, b in by_answer.items()} == {c: pixels(encoded(c)) for c in ("green", "red")}
    with pytest.raises(TaskDataError, match=r"no split 'validation' \(splits: \['test', 'train'\]\)"):
        load(tmp_path, path=str(root), split="validation", columns={"question": "prompt", "answer": "label"})


# ----------------------------------------------------------------------------- save_to_disk


def test_save_to_disk_dataset_dict_with_class_labels_and_image_lists(tmp_path):
    import datasets

    features = datasets.Features({
        "uid": datasets.Value("int64"), "question": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["red", "green", "blue"]), "images": datasets.List(datasets.Image()),
    })
    img = {c: Image.open(io.BytesIO(encoded(c))) for c in ("red", "green", "blue")}
    test = datasets.Dataset.from_dict({"uid": [10, 11, 12, 13], "question": ["q"] * 4, "label": [2, 0, 1, 1],
                                       "images": [[img["blue"]], [img["red"]], [img["green"], img["red"]], []]},
                                      features=features)
    datasets.DatasetDict({"train": test.select([0]), "test": test}).save_to_disk(str(tmp_path / "saved"))
    assert detect_format(str(tmp_path / "saved")) == "arrow"
    result = load(tmp_path, path=str(tmp_path / "saved"), split="test",
                  columns={"task_id": "uid", "answer": "label", "image": "images"})
    assert fields(result) == [("10", "q", "blue", "saved"), ("11", "q", "red", "saved"), ("13", "q", "green", "saved")]
    assert pixels(result.tasks[0].image) == pixels(encoded("blue"))
    assert pixels(result.tasks[1].image) == pixels(encoded("red"))
    assert result.tasks[2].image is None  # an empty image list: a text-only task
    assert result.skipped_rows == ((2, "image: more than one image"),)


def test_save_to_disk_single_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"question": ["a?", ""], "answer": ["b", "c"]}).save_to_disk(str(tmp_path / "one"))
    result = load_task_source("hf", path=str(tmp_path / "one"), format="arrow")
    assert fields(result) == [("one/train/0", "a?", "b", "one")]
    assert result.skipped_rows == ((1, "missing question"),)


# ----------------------------------------------------------------------------- whole-source errors


def test_missing_mapped_column_names_the_mapping(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"problem": "q", "answer": "a"}])
    with pytest.raises(TaskDataError, match=r"column 'question' \(columns.question\) not in the data set; "
                                            r"columns: \['problem', 'answer'\]"):
        load(tmp_path, path=str(tmp_path / "d.jsonl"))
    with pytest.raises(TaskDataError, match=r"column 'src' \(columns.metadata\[0\]\)"):
        load(tmp_path, path=str(tmp_path / "d.jsonl"), columns={"question": "problem", "metadata": ["src"]})


def test_missing_path_and_misspelt_argument(tmp_path):
    with pytest.raises(TaskDataError, match="no data file at"):
        load(tmp_path, path=str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValidationError, match="limt"):
        load(tmp_path, path=str(tmp_path / "nope.jsonl"), limt=3)


# ----------------------------------------------------------------------------- no network


@pytest.mark.parametrize("offline", [True, False])
def test_loads_with_the_network_cut(tmp_path, offline):
    """Every socket connect raises in the child; with or without the offline variables set, the
    load never tries the hub (it names local files and packaged builders only)."""
    write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "from rollout.tasks import load_task_source\n"
        f"r = load_task_source('hf', path={str(tmp_path / 'd.jsonl')!r}, cache_dir={str(tmp_path / 'c')!r})\n"
        "print([(t.task_id, t.question, t.answer) for t in r.tasks])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    if offline:
        env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[('d/train/0', 'q', 'a')]"


def test_light_modules_do_not_import_datasets():
    code = ("import sys\nimport rollout.tasks, cluster.config, cluster.cli\n"
            "from cluster.config import load_recipe\nload_recipe(None)\n"
            "print('datasets' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
