"""Task Parquet schema: exact round trips, malformed rows skipped and counted, file-level errors."""

from __future__ import annotations

import io
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rollout.tasks.schema import TASK_SCHEMA, read_tasks, tasks_to_table, write_tasks
from rollout.tasks.validate import TaskDataError
from rollout.types import Task

pytestmark = pytest.mark.unit


def encoded(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = encoded((255, 0, 0))
JPEG = encoded((0, 128, 255), "JPEG")

TASKS = (
    Task("t/0", "what colour?", "red", image=PNG, source="unit", metadata={"split": "train", "k": "v"}),
    Task("t/1", "pick one", "b", image=JPEG, choices=("a", "b", "c"), source="unit"),
    Task("t/2", "text only?", "yes", metadata={"coded": "x q z _ d o g"}),
)


def test_round_trip_gives_equal_tasks_and_identical_image_bytes(tmp_path):
    path = tmp_path / "sub" / "tasks.parquet"
    assert write_tasks(path, TASKS) == 3
    result = read_tasks(path)
    assert result.tasks == TASKS
    assert result.skipped == 0 and result.reasons == Counter()
    assert result.tasks[0].image == PNG and result.tasks[1].image == JPEG and result.tasks[2].image is None
    assert result.tasks[0].metadata == {"split": "train", "k": "v"}
    assert list(result.tasks[0].metadata) == ["split", "k"]  # map keeps key order


def test_written_file_carries_the_one_schema(tmp_path):
    write_tasks(tmp_path / "t.parquet", TASKS)
    schema = pq.read_schema(tmp_path / "t.parquet")
    assert schema.equals(TASK_SCHEMA)
    assert schema.metadata == {b"duet_rl.task_schema_version": b"1"}
    assert tasks_to_table(TASKS).column("choices").to_pylist() == [[], ["a", "b", "c"], []]


# A foreign file: same column types, but every column nullable, so it can hold broken rows.
LOOSE = pa.schema([pa.field(f.name, f.type, nullable=True) for f in TASK_SCHEMA])

# (task_id, question, answer, image, choices, metadata pairs, expected reason or None)
ROWS = [
    ("a", "q", "ans", PNG, None, None, None),  # 0 valid; null choices/metadata read as empty
    (None, "q", "ans", None, None, None, "missing task_id"),  # 1
    ("b", "   ", "ans", None, None, None, "missing question"),  # 2 whitespace only
    ("c", None, "ans", None, None, None, "missing question"),  # 3
    ("d", "q", None, None, None, None, "missing answer"),  # 4
    ("e", "q", "ans", b"not an image", None, None, "undecodable image"),  # 5
    ("f", "q", "ans", PNG[: len(PNG) // 2], None, None, "undecodable image"),  # 6 truncated PNG
    ("g", "q", "c", None, ["a", "b"], None, "answer not among choices"),  # 7
    ("a", "q", "ans", None, None, None, "duplicate task_id"),  # 8 same id as row 0
    ("h", "q", "a", None, ["a", None], None, "choices: not a list of strings"),  # 9
    ("i", "q", "a", None, None, [("k", "v"), ("k", "w")], "metadata: duplicate key"),  # 10
    ("j", "q", "a", None, None, [("k", None)], "metadata: not a string map"),  # 11
    ("k", "q", "a", None, ["a", "a"], None, "duplicate choices"),  # 12
    ("d", "q", "fine", None, ["fine", "x"], [("m", "1")], None),  # 13 row 4's id: row 4 was skipped
]


def write_rows(path, rows) -> None:
    names = ("task_id", "question", "answer", "image", "choices", "metadata")
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    columns["source"] = ["unit"] * len(rows)
    pq.write_table(pa.table(columns, schema=LOOSE), path)


@pytest.mark.parametrize("batch_size", [1024, 3])  # 3: rows span several record batches
def test_malformed_rows_are_skipped_with_exact_reasons(tmp_path, batch_size):
    write_rows(tmp_path / "bad.parquet", ROWS)
    result = read_tasks(tmp_path / "bad.parquet", batch_size=batch_size)
    expected_skips = [(i, row[-1]) for i, row in enumerate(ROWS) if row[-1] is not None]
    assert result.skipped_rows == tuple(expected_skips)
    assert result.skipped == 12
    assert result.reasons == Counter(
        {"undecodable image": 2, "missing question": 2, "missing task_id": 1, "missing answer": 1,
         "answer not among choices": 1, "duplicate task_id": 1, "choices: not a list of strings": 1,
         "metadata: duplicate key": 1, "metadata: not a string map": 1, "duplicate choices": 1}
    )
    assert result.tasks == (
        Task("a", "q", "ans", image=PNG, source="unit"),
        Task("d", "q", "fine", choices=("fine", "x"), source="unit", metadata={"m": "1"}),
    )
    assert result.summary().startswith("2 tasks, 12 skipped (answer not among choices: 1,")


def test_check_images_false_keeps_undecodable_bytes(tmp_path):
    write_rows(tmp_path / "bad.parquet", ROWS[5:7])
    assert read_tasks(tmp_path / "bad.parquet").skipped == 2
    kept = read_tasks(tmp_path / "bad.parquet", check_images=False)
    assert [t.image for t in kept.tasks] == [b"not an image", PNG[: len(PNG) // 2]]


@pytest.mark.parametrize("column", ["task_id", "question", "answer"])
def test_missing_required_column_raises_naming_it_and_the_file(tmp_path, column):
    table = tasks_to_table(TASKS).drop_columns([column])
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(TaskDataError, match=f"t.parquet: required column '{column}' is missing"):
        read_tasks(tmp_path / "t.parquet")


def test_optional_columns_may_be_absent_or_alternative_arrow_types(tmp_path):
    table = pa.table(
        {
            "task_id": pa.array(["x", "y"], pa.large_string()),
            "question": pa.array(["q1", "q2"], pa.large_string()),
            "answer": ["1", "2"],
            "image": pa.array([None, None], pa.null()),  # all-null column written without a schema
            "extra": [1, 2],  # unknown columns are ignored
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    assert read_tasks(tmp_path / "t.parquet").tasks == (Task("x", "q1", "1"), Task("y", "q2", "2"))


@pytest.mark.parametrize(
    ("column", "array", "expected"),
    [
        ("question", pa.array([1, 2, 3]), "column 'question' has type int64, expected string"),
        ("metadata", pa.array(['{"a": "b"}'] * 3), "column 'metadata' has type string, expected map<string, string>"),
        ("image", pa.array(["x", "y", "z"]), "column 'image' has type string, expected binary"),
        ("choices", pa.array([[1], [2], [3]]), "column 'choices' has type list<element: int64>, expected list<element: string>"),
    ],
)
def test_wrong_column_type_raises_naming_the_column(tmp_path, column, array, expected):
    table = tasks_to_table(TASKS)
    table = table.set_column(table.schema.get_field_index(column), column, array)
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(TaskDataError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        read_tasks(tmp_path / "t.parquet")


def test_unreadable_or_missing_file_raises_naming_the_file(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(TaskDataError, match="cannot read task file .*junk.parquet"):
        read_tasks(tmp_path / "junk.parquet")
    with pytest.raises(TaskDataError, match="cannot read task file .*absent.parquet"):
        read_tasks(tmp_path / "absent.parquet")
