"""Task data: one Parquet schema, loaders for the data sets we train on, and a registry by name.

``load_task_source(name, **kwargs)`` returns a :class:`TaskLoadResult` (tasks + skipped rows with
reasons) for:

=============  ===============================================  ====================================
name           function                                         main arguments
=============  ===============================================  ====================================
parquet        :func:`rollout.tasks.schema.read_tasks`          path
easy_vqa       :func:`rollout.tasks.easy_vqa.load_easy_vqa`     split, limit
cryptogram     :func:`load_cryptograms`                         n, seed, config (or its fields)
scienceqa      :func:`rollout.tasks.formats.load_scienceqa`     problems_path, images_dir, split
snli_ve        :func:`rollout.tasks.formats.load_snli_ve`       jsonl_path, images_dir
visual_genome  :func:`rollout.tasks.formats.load_visual_genome` qa_path, images_dir
hf             :func:`rollout.tasks.hf.load_hf`                 path, format, split, columns, limit
=============  ===============================================  ====================================

A source's accepted keyword arguments are its function's parameters, or, for the sources in
:data:`TASK_SOURCE_ARGS`, the fields of a typed model (checked at recipe load by
:mod:`cluster.plugin_args`, so a misspelt argument fails at ``duet check``).
"""

from __future__ import annotations

from typing import Any, Callable

from rollout.tasks.cryptogram import CryptogramConfig, generate_cryptograms
from rollout.tasks.easy_vqa import convert_easy_vqa, load_easy_vqa
from rollout.tasks.formats import load_scienceqa, load_snli_ve, load_visual_genome
from rollout.tasks.hf import ColumnMap, HFSourceArgs, load_hf
from rollout.tasks.schema import TASK_SCHEMA, read_tasks, tasks_to_table, write_tasks
from rollout.tasks.validate import TaskDataError, TaskLoadResult


def load_cryptograms(
    n: int, seed: int = 0, config: CryptogramConfig | None = None, start: int = 0, **config_fields: Any
) -> TaskLoadResult:
    """``n`` generated cryptograms; difficulty from ``config`` or its fields given as keywords."""
    if config is not None and config_fields:
        raise ValueError("load_cryptograms: pass either config or its fields, not both")
    config = config or CryptogramConfig(**config_fields)
    return TaskLoadResult(tasks=generate_cryptograms(n, seed=seed, config=config, start=start))


TASK_SOURCES: dict[str, Callable[..., TaskLoadResult]] = {
    "parquet": read_tasks,
    "easy_vqa": load_easy_vqa,
    "cryptogram": load_cryptograms,
    "scienceqa": load_scienceqa,
    "snli_ve": load_snli_ve,
    "visual_genome": load_visual_genome,
    "hf": load_hf,
}

TASK_SOURCE_ARGS: dict[str, type] = {"hf": HFSourceArgs, "cryptogram": CryptogramConfig}
"""Typed arguments of a source: a pydantic model that is the whole argument set ("hf"), or a
dataclass whose fields the source also takes as keywords besides its own parameters
(``load_cryptograms(n, seed, ..., **CryptogramConfig fields)``)."""


def load_task_source(spec: str, **kwargs: Any) -> TaskLoadResult:
    """Load the task source named ``spec`` with ``kwargs``; unknown names raise ValueError."""
    if spec not in TASK_SOURCES:
        raise ValueError(f"unknown task source {spec!r}; known: {sorted(TASK_SOURCES)}")
    return TASK_SOURCES[spec](**kwargs)


__all__ = [
    "TASK_SCHEMA",
    "TASK_SOURCES",
    "TASK_SOURCE_ARGS",
    "ColumnMap",
    "CryptogramConfig",
    "HFSourceArgs",
    "TaskDataError",
    "TaskLoadResult",
    "convert_easy_vqa",
    "load_cryptograms",
    "load_hf",
    "load_task_source",
    "read_tasks",
    "tasks_to_table",
    "write_tasks",
]
