"""One Arrow schema for task data sets on disk (Parquet), with a writer and a checking reader.

Columns (one row per :class:`rollout.types.Task`):

============  ========================  ====================================================
column        type                      meaning
============  ========================  ====================================================
task_id       string (required)         unique id within the file
question      string (required)         the prompt text shown to the model
answer        string (required)         reference answer the rewards compare against
image         binary, nullable          encoded PNG/JPEG bytes as-is (null = text-only task)
choices       list<string>              multiple-choice options (empty = free-form)
source        string                    data set or generator name ("easy_vqa", ...)
metadata      map<string, string>       task-specific extras (e.g. the cryptogram key)
============  ========================  ====================================================

``metadata`` is an Arrow ``map<string, string>`` rather than a JSON string: the type is enforced by
Arrow itself, every reader (pyarrow, DuckDB, Spark) sees real keys, and no row can hold invalid
JSON. Images are stored as the original encoded bytes, never re-encoded, so hashes are stable.

Only the three required columns must exist; the optional ones default to null/empty. Columns of a
wrong type make the whole file unusable (a Parquet column has one type for all its rows), so they
raise :class:`TaskDataError` naming the column; row-level damage (nulls, empty questions, answers
outside the choices, undecodable images, duplicate ids) is skipped and counted, see
:mod:`rollout.tasks.validate`. Extra columns are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from rollout.tasks.validate import TaskDataError, TaskLoadResult, collect_rows
from rollout.types import Task

SCHEMA_VERSION = "1"

TASK_SCHEMA = pa.schema(
    [
        pa.field("task_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("choices", pa.list_(pa.field("element", pa.string()))),  # Parquet's list naming
        pa.field("source", pa.string()),
        pa.field("metadata", pa.map_(pa.string(), pa.string())),
    ],
    metadata={"duet_rl.task_schema_version": SCHEMA_VERSION},
)

REQUIRED_COLUMNS = ("task_id", "question", "answer")

_STRINGS = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
_BINARIES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view)


def tasks_to_table(tasks: Iterable[Task]) -> pa.Table:
    """Arrow table of ``tasks`` in :data:`TASK_SCHEMA` (row order = iteration order)."""
    rows = list(tasks)
    columns = {
        "task_id": [t.task_id for t in rows],
        "question": [t.question for t in rows],
        "answer": [t.answer for t in rows],
        "image": [t.image for t in rows],
        "choices": [list(t.choices) for t in rows],
        "source": [t.source for t in rows],
        "metadata": [list(t.metadata.items()) for t in rows],
    }
    return pa.table(columns, schema=TASK_SCHEMA)


def write_tasks(path: str | Path, tasks: Iterable[Task]) -> int:
    """Write ``tasks`` to a Parquet file at ``path`` (parents created); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = tasks_to_table(tasks)
    pq.write_table(table, path)
    return table.num_rows


def _type_ok(name: str, dtype: pa.DataType) -> bool:
    if pa.types.is_null(dtype):  # an all-null column written without a schema
        return True
    if name == "image":
        return any(check(dtype) for check in _BINARIES)
    if name == "choices":
        is_list = pa.types.is_list(dtype) or pa.types.is_large_list(dtype)
        return is_list and _type_ok("", dtype.value_type)
    if name == "metadata":
        return pa.types.is_map(dtype) and _type_ok("", dtype.key_type) and _type_ok("", dtype.item_type)
    return any(check(dtype) for check in _STRINGS)


def _check_schema(path: Path, schema: pa.Schema) -> list[str]:
    """Names of the known columns present in ``schema``; raises on a missing or mistyped one."""
    names = schema.names
    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise TaskDataError(f"{path}: required column {name!r} is missing (columns: {names})")
    present = [name for name in TASK_SCHEMA.names if name in names]
    for name in present:
        dtype = schema.field(name).type
        if not _type_ok(name, dtype):
            expected = TASK_SCHEMA.field(name).type
            raise TaskDataError(f"{path}: column {name!r} has type {dtype}, expected {expected}")
    return present


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise TaskDataError(f"cannot read task file {path}: {err}") from err


def check_task_file(path: str | Path) -> None:
    """Raise :class:`TaskDataError` unless ``path`` is a Parquet file with the required columns of
    usable types; reads only the footer (the schema), never the rows (``duet check`` uses it)."""
    path = Path(path)
    _check_schema(path, _open(path).schema_arrow)


def _row_fields(row: dict[str, Any]) -> dict[str, Any] | str:
    """Plain field dict of one Parquet row, or the reason it cannot be one.

    Null ``choices``/``metadata`` cells read as empty; the map column arrives as a list of
    (key, value) pairs, and a map with a repeated key is rejected rather than silently collapsed.
    """
    choices = row.get("choices") or ()
    if any(c is None for c in choices):
        return "choices: not a list of strings"
    pairs = row.get("metadata") or []
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        return "metadata: duplicate key"
    return {**row, "choices": choices, "metadata": dict(pairs)}


def read_tasks(
    path: str | Path, *, check_images: bool = True, batch_size: int = 1024
) -> TaskLoadResult:
    """Read a task Parquet file, keeping valid rows and counting each skipped row's reason.

    Reads in record batches of ``batch_size`` rows (bounded memory per step). Raises
    :class:`TaskDataError` if the file is unreadable or a required column is missing or mistyped.
    A null ``metadata`` or ``choices`` cell is read as empty; a null choice entry, a null metadata
    value or a repeated metadata key skips the row.
    """
    path = Path(path)
    pf = _open(path)
    columns = _check_schema(path, pf.schema_arrow)
    rows = enumerate(
        _row_fields(row)
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns)
        for row in batch.to_pylist()
    )
    try:
        return collect_rows(rows, check_images=check_images)
    except (OSError, pa.ArrowException) as err:
        raise TaskDataError(f"cannot read task file {path}: {err}") from err
