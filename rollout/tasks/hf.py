"""Local data sets in any format Hugging Face ``datasets`` reads, as tasks (``data.source = "hf"``).

The way TRL and verl users bring data: a Parquet, JSON/JSONL or CSV file (or a glob of them), an
image folder (``imagefolder``: images plus ``metadata.jsonl``/``metadata.csv`` with a ``file_name``
column), or a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``. A typed
column mapping (:class:`ColumnMap`) says which columns are the task's question, answer, image, id,
choices and metadata::

    [data]
    source = "hf"
    train = { path = "data/train.jsonl", columns = { question = "problem", answer = "solution" } }

Only local files are read: ``load_dataset(builder, data_files=... | data_dir=...)`` with one of the
packaged builders, or ``load_from_disk``; nothing names a hub repository, so nothing is fetched and
the load works the same with ``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``. ``datasets`` is
imported inside the functions that need it, so ``rollout.tasks`` stays light.

Images may be PIL images (``datasets.Image`` columns are read undecoded, so a broken file is a
skipped row, not a crash), ``{"bytes", "path"}`` dicts, raw bytes, or file paths (relative ones
against ``images_dir``, by default the data set's directory); a list of one image is that image.
Every image becomes PNG bytes in the task (lossless: the decoded pixels are kept exactly).

Rows go through :class:`rollout.tasks.validate.TaskCollector`, so malformed ones are skipped and
counted. Reasons added here: ``"question: not a string"``, ``"answer: not a string"``,
``"task_id: not a string"``, ``"image file not found"``, ``"unreadable image"``,
``"image: more than one image"``, ``"image: unsupported value"``. A missing mapped column, an
unreadable file or an unknown split is a :class:`TaskDataError` for the whole source.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from glob import glob, has_magic
from pathlib import Path
from typing import Any, Iterator, Literal

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from rollout.tasks.validate import TaskDataError, TaskLoadResult, collect_rows

HFFormat = Literal["parquet", "json", "csv", "imagefolder", "arrow"]

SUFFIX_FORMATS: dict[str, HFFormat] = {
    ".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv",
    ".arrow": "arrow",
}
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
"""Pillow modes PNG stores as they are; any other mode (CMYK, YCbCr, F) is converted to RGB."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ColumnMap(_Args):
    """Which columns of the data set hold each task field."""

    question: str = "question"
    """Column of the prompt text (a string; rows without one are skipped)."""
    answer: str = "answer"
    """Column of the reference answer (a string; an integer or float is written as text, a
    ``ClassLabel`` as its label name)."""
    image: str | None = None
    """Column of the image (PIL image, bytes, ``{"bytes", "path"}`` or a file path); None: the
    column named "image" if there is one, else text-only tasks."""
    task_id: str | None = None
    """Column of unique task ids (strings or integers); None: ``"{name}/{split}/{row index}"``."""
    choices: str | None = None
    """Column of multiple-choice options (a list of strings; the answer must be one of them)."""
    metadata: tuple[str, ...] = ()
    """Columns copied into ``Task.metadata`` under their own names, as strings (lists and dicts
    as JSON; nulls left out)."""


class HFSourceArgs(_Args):
    """Arguments of the "hf" task source (``data.train`` / ``data.eval``)."""

    path: str
    """A data file, a glob of files ("data/*.parquet") or a directory (an image folder, a
    ``save_to_disk`` output, or a folder of data files whose names give the splits)."""
    format: HFFormat | None = None
    """Builder to read with; None: from the path ("arrow" = a ``save_to_disk`` directory or
    ``.arrow`` files, "imagefolder" = a directory of images, else by the files' suffix)."""
    split: str = "train"
    """Split to read: a key of a saved ``DatasetDict`` or a split of a directory (``train/``,
    ``test-*.parquet``); a file or glob is read as this split."""
    columns: ColumnMap = ColumnMap()
    """Column mapping onto the task fields."""
    limit: int | None = Field(None, ge=0)
    """Rows considered, valid or not, from the start of the split; None: all."""
    images_dir: str | None = None
    """Directory that relative image paths are resolved against; None: the data set's directory
    (the directory given, or the one holding the data files)."""
    name: str | None = None
    """Data set name in generated task ids and ``Task.source``; None: the path's file or
    directory name without suffix."""
    cache_dir: str | None = None
    """Where ``datasets`` keeps its Arrow cache of the prepared files; None: its default
    (``HF_DATASETS_CACHE``). Not used for ``save_to_disk`` directories."""


# ----------------------------------------------------------------------------- locating the data


def _root_dir(path: str) -> Path:
    """The directory of ``path``: itself if a directory, else the deepest parent free of globs."""
    p = Path(path)
    if p.is_dir():
        return p
    parent = p.parent
    while has_magic(str(parent)) and parent != parent.parent:
        parent = parent.parent
    return parent


def _data_files(path: str) -> list[str]:
    """Files a file path or glob names, sorted; none is a TaskDataError."""
    files = sorted(glob(path, recursive=True)) if has_magic(path) else [path] if Path(path).is_file() else []
    files = [f for f in files if Path(f).is_file()]
    if not files:
        raise TaskDataError(f"hf: no data file at {path!r}")
    return files


def _dir_format(root: Path) -> HFFormat:
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "arrow"
    suffixes = {f.suffix.lower() for f in root.rglob("*") if f.is_file()}
    if suffixes & IMAGE_SUFFIXES:
        return "imagefolder"
    for suffix, fmt in SUFFIX_FORMATS.items():
        if suffix in suffixes:
            return fmt
    raise TaskDataError(f"hf: cannot tell the format of directory {str(root)!r}; set format")


def detect_format(path: str) -> HFFormat:
    """The builder for ``path`` (see :attr:`HFSourceArgs.format`)."""
    if Path(path).is_dir():
        return _dir_format(Path(path))
    suffix = Path(_data_files(path)[0]).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise TaskDataError(f"hf: cannot tell the format of {path!r} from suffix {suffix!r}; set format")
    return SUFFIX_FORMATS[suffix]


def _csv_features(files: list[str]) -> Any:
    """Every CSV column typed as string (pandas would make "1" a float next to an empty cell)."""
    from datasets import Features, Value

    delimiter = "\t" if files[0].endswith(".tsv") else ","
    with open(files[0], newline="", encoding="utf-8") as f:
        header = next(csv.reader(f, delimiter=delimiter), [])
    return {"features": Features({c: Value("string") for c in header}), "sep": delimiter}


def _pick_split(data: Any, split: str, where: str) -> Any:
    """``data[split]`` of a DatasetDict (a plain Dataset is returned as it is)."""
    from datasets import DatasetDict

    if not isinstance(data, DatasetDict):
        return data
    if split not in data:
        raise TaskDataError(f"hf: {where} has no split {split!r} (splits: {sorted(data)})")
    return data[split]


def _load(args: HFSourceArgs, fmt: HFFormat) -> Any:
    import datasets

    path = args.path
    if fmt == "arrow" and Path(path).is_dir():
        return _pick_split(datasets.load_from_disk(path), args.split, path)
    if Path(path).is_dir():
        data = datasets.load_dataset(fmt, data_dir=path, cache_dir=args.cache_dir)
        return _pick_split(data, args.split, path)
    files = _data_files(path)
    extra = _csv_features(files) if fmt == "csv" else {}
    return datasets.load_dataset(fmt, data_files={args.split: files}, split=args.split,
                                 cache_dir=args.cache_dir, **extra)


def open_dataset(args: HFSourceArgs) -> Any:
    """The ``datasets.Dataset`` of the arguments' split, read from local files only."""
    import datasets

    fmt = args.format or detect_format(args.path)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return _load(args, fmt)
    except TaskDataError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets/pyarrow/pandas raise many types; all mean "unreadable"
        raise TaskDataError(f"hf: cannot read {args.path!r} as {fmt}: {type(err).__name__}: {err}") from err
    finally:
        if bars:
            datasets.enable_progress_bars()


# ----------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Columns:
    """The mapping resolved against one data set's columns (None: the field is not read)."""

    question: str
    answer: str
    image: str | None
    task_id: str | None
    choices: str | None
    metadata: tuple[str, ...]
    answer_labels: tuple[str, ...] | None
    """Label names when the answer column is a ``ClassLabel`` (its values are indices)."""


def resolve_columns(features: Any, mapping: ColumnMap) -> Columns:
    """Check that every mapped column exists; the default image column only if present."""
    from datasets import ClassLabel

    names = list(features)
    wanted = {"question": mapping.question, "answer": mapping.answer, "image": mapping.image,
              "task_id": mapping.task_id, "choices": mapping.choices}
    wanted.update({f"metadata[{i}]": c for i, c in enumerate(mapping.metadata)})
    for field, column in wanted.items():
        if column is not None and column not in names:
            raise TaskDataError(f"hf: column {column!r} (columns.{field}) not in the data set; columns: {names}")
    image = mapping.image or ("image" if "image" in names else None)
    label = features[mapping.answer]
    return Columns(question=mapping.question, answer=mapping.answer, image=image,
                   task_id=mapping.task_id, choices=mapping.choices, metadata=mapping.metadata,
                   answer_labels=tuple(label.names) if isinstance(label, ClassLabel) else None)


def undecoded_images(dataset: Any, column: str | None) -> Any:
    """``dataset`` with an ``Image`` (or list-of-``Image``) column left as ``{"bytes", "path"}``
    dicts, so that this module decodes each image and a broken one skips only its row."""
    from datasets import Image as ImageFeature
    from datasets import List, Sequence

    if column is None:
        return dataset
    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset.cast_column(column, ImageFeature(decode=False))
    if isinstance(feature, (List, Sequence)) and isinstance(feature.feature, ImageFeature):
        return dataset.cast_column(column, List(ImageFeature(decode=False)))
    return dataset


# ----------------------------------------------------------------------------- values


def png_bytes(img: Image.Image) -> bytes:
    """``img`` as PNG (lossless); modes PNG cannot store are converted to RGB."""
    img.load()
    if img.mode not in PNG_MODES:
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _decode(data: bytes) -> bytes | str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return png_bytes(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return "unreadable image"


class ImageReader:
    """Turns image cells into PNG bytes (or a skip reason); each distinct file or byte string is
    converted once and its result shared."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Any, bytes | str] = {}

    def read(self, value: Any) -> bytes | str | None:
        """PNG bytes, None for no image, or the reason the cell is not a usable image."""
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return self._one_of(value)
        if isinstance(value, Image.Image):
            return png_bytes(value)
        if isinstance(value, dict):
            data = value.get("bytes")
            return self.read(data if data is not None else value.get("path"))
        if isinstance(value, (bytes, bytearray)):
            return self._cached(bytes(value), lambda: _decode(bytes(value)))
        if isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() else self.root / value
            return self._cached(path, lambda: self._file(path))
        return "image: unsupported value"

    @staticmethod
    def _file(path: Path) -> bytes | str:
        return _decode(path.read_bytes()) if path.is_file() else "image file not found"

    def _one_of(self, values: list | tuple) -> bytes | str | None:
        if len(values) > 1:
            return "image: more than one image"
        return self.read(values[0]) if values else None

    def _cached(self, key: Any, convert) -> bytes | str:
        if key not in self._cache:
            self._cache[key] = convert()
        return self._cache[key]


def _text(value: Any) -> Any:
    """A number becomes its text (JSON ``42`` -> "42"); a string or None is unchanged; anything
    else is returned as it is, for the caller to reject."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    return value


def _metadata_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


@dataclass
class RowConverter:
    """Turns one data-set row into task fields for the collector, or a skip reason."""

    columns: Columns
    images: ImageReader
    name: str
    split: str

    def fields(self, index: int, row: dict[str, Any]) -> dict[str, Any] | str:
        c = self.columns
        question, answer = row.get(c.question), self._answer(row.get(c.answer))
        if question is not None and not isinstance(question, str):
            return "question: not a string"
        if answer is not None and not isinstance(answer, str):
            return "answer: not a string"
        task_id = self._task_id(index, row)
        if task_id is not None and not isinstance(task_id, str):
            return "task_id: not a string"
        image = self.images.read(row.get(c.image)) if c.image else None
        if isinstance(image, str):
            return image
        metadata = {k: _metadata_value(row[k]) for k in c.metadata if row.get(k) is not None}
        return {"task_id": task_id, "question": question, "answer": answer, "image": image,
                "choices": row.get(c.choices) if c.choices else (), "source": self.name,
                "metadata": metadata}

    def _answer(self, value: Any) -> Any:
        labels = self.columns.answer_labels
        if labels is not None and isinstance(value, int) and 0 <= value < len(labels):
            return labels[value]
        return _text(value)

    def _task_id(self, index: int, row: dict[str, Any]) -> Any:
        if self.columns.task_id is None:
            return f"{self.name}/{self.split}/{index}"
        value = row.get(self.columns.task_id)
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _dataset_name(args: HFSourceArgs) -> str:
    """``args.name``, else the file's stem, the directory's name, or a glob's directory name."""
    if args.name:
        return args.name
    if has_magic(args.path):
        return _root_dir(args.path).resolve().name
    return Path(args.path.rstrip("/")).stem


def _rows(dataset: Any, convert: RowConverter) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for index, row in enumerate(dataset):
        yield index, convert.fields(index, row)


def load_hf(**kwargs: Any) -> TaskLoadResult:
    """Tasks from a local data set; ``kwargs`` are :class:`HFSourceArgs` (checked, typos refused)."""
    args = HFSourceArgs.model_validate(kwargs)
    dataset = open_dataset(args)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    columns = resolve_columns(dataset.features, args.columns)
    dataset = undecoded_images(dataset, columns.image)
    root = Path(args.images_dir) if args.images_dir else _root_dir(args.path)
    convert = RowConverter(columns, ImageReader(root), _dataset_name(args), args.split)
    return collect_rows(_rows(dataset, convert), args.limit, check_images=False)
