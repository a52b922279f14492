"""Bad inputs the recipe's types cannot see, refused before anything starts: one line, exit 2.

Recipe validation (``cluster.config``, ``cluster.plugin_args``) already refuses unknown fields,
reward and task-source names and their arguments, and environment names. What it cannot see is
the machine: the files a task source reads and the models the roles load. :func:`input_problems`
checks them without reading any data:

- ``data.source = "parquet"``: ``data.<split>.path`` exists and is a Parquet file whose schema
  (its footer only, :func:`rollout.tasks.schema.check_task_file`) has the required columns;
- the other file-based sources: every ``*_path`` / ``*_dir`` argument exists but the ones a source
  writes (``cache_dir``; ``"hf"``: its ``path``, a file, a directory or a glob that matches);
- ``roles.<r>.model``: ``builtin:NAME`` built, a local directory present
  (:func:`cluster.models.resolve_model`); a hub id is left to ``duet train``, which fetches it.

Environment episodes read no task data, so the data tables are not checked for them.
``duet check`` and ``duet train`` both call :func:`preflight` before Ray starts; each problem
names its recipe field (``data.train.path: ...``).
"""

from __future__ import annotations

from glob import glob, has_magic
from pathlib import Path
from typing import Any, Mapping

from cluster.config import Recipe


class BadInput(ValueError):
    """A recipe names a file or model that is not usable here; the message is one line naming the
    recipe field of each problem."""


def parquet_problem(path: Any) -> str | None:
    """Why ``path`` is not a usable task file (missing, not Parquet, required columns missing or
    mistyped), or None."""
    from rollout.tasks.schema import check_task_file
    from rollout.tasks.validate import TaskDataError

    if not Path(str(path)).is_file():
        return f"task file {str(path)!r} does not exist"
    try:
        check_task_file(str(path))
    except TaskDataError as err:
        return str(err)
    return None


def exists_problem(value: Any, glob_ok: bool = False) -> str | None:
    """Why the file or directory ``value`` (a glob when ``glob_ok``) names nothing, or None."""
    text = str(value)
    if glob_ok and has_magic(text):
        return None if glob(text, recursive=True) else f"no file matches {text!r}"
    return None if Path(text).exists() else f"{text!r} does not exist"


WRITTEN = frozenset({"cache_dir", "output_dir", "out_dir"})
"""Directory arguments a source creates (a cache, an output), not inputs: never required to exist."""


def split_problems(source: str, split: str, kwargs: Mapping[str, Any]) -> list[str]:
    """Problems of one split's file arguments (``data.<split>.<arg>: ...``)."""
    where = f"data.{split}"
    if source == "parquet" and "path" in kwargs:
        problem = parquet_problem(kwargs["path"])
        return [f"{where}.path: {problem}"] if problem else []
    names = [k for k in kwargs if (k.endswith(("_path", "_dir")) and k not in WRITTEN) or (source == "hf" and k == "path")]
    found = [(k, exists_problem(kwargs[k], glob_ok=source == "hf")) for k in names if kwargs[k] is not None]
    return [f"{where}.{k}: {problem}" for k, problem in found if problem]


def model_problems(recipe: Recipe, models_dir: Path) -> list[str]:
    """``roles.<r>.model: ...`` for each built-in or local model that is not there (hub ids skipped)."""
    from cluster.models import BUILTIN_PREFIX, ModelNotFound, is_hub_id, resolve_model

    problems = []
    for role, runtime in sorted(recipe.roles.items()):
        if is_hub_id(runtime.model) and not runtime.model.startswith(BUILTIN_PREFIX):
            continue
        try:
            resolve_model(runtime.model, models_dir)
        except ModelNotFound as err:
            problems.append(f"roles.{role}.model: {err}")
    return problems


def input_problems(recipe: Recipe, models_dir: Path | None = None) -> list[str]:
    """Every problem of the recipe's task files (and, with ``models_dir``, its models), in order."""
    problems: list[str] = []
    if recipe.rollout.spec.uses_tasks:
        for split in ("train", "eval"):
            problems += split_problems(recipe.data.source, split, getattr(recipe.data, split))
    if models_dir is not None:
        problems += model_problems(recipe, models_dir)
    return problems


def preflight(recipe: Recipe, models_dir: Path | None = None) -> None:
    """Raise :class:`BadInput` (one line, every problem joined by "; ") when :func:`input_problems`
    finds any."""
    problems = input_problems(recipe, models_dir)
    if problems:
        raise BadInput("; ".join(problems))
