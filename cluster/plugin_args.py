"""The recipe's plugin arguments checked at load: task sources and rewards, by name and keyword.

``data.train`` / ``data.eval`` are keyword arguments of the task source ``data.source`` and each
``rewards[i].kwargs`` those of the reward factory ``rewards[i].name``; the recipe keeps them as
plain tables, so without this check a misspelt name would surface as a ``TypeError`` inside a Ray
actor minutes into a run. :func:`plugin_problems` compares them with what each plugin accepts:

- a function's (or class's) keyword parameters (``inspect.signature``); ``**kwargs`` accepts any;
- for the sources in ``rollout.tasks.TASK_SOURCE_ARGS``: a pydantic model validated in full (types
  and nested tables too, e.g. ``columns`` of "hf"), or a dataclass whose fields the source takes as
  extra keywords (the cryptogram difficulty fields);
- a dotted-path reward ``"pkg.mod:Factory"`` is imported here, and a path that does not import is a
  problem of its ``name``.

Pure: it returns ``(dotted location, message)`` pairs and raises nothing; ``cluster.config`` turns
them into the recipe's validation error, so ``duet check`` (exit 2) names each field.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

Problem = tuple[tuple[str | int, ...], str]
"""(location in the recipe tree, e.g. ("data", "train", "limt"), message)."""

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The keywords a plugin takes: ``names`` (``required`` among them), or anything if ``open``."""

    names: frozenset[str]
    required: frozenset[str]
    open: bool


def accepted(factory: Callable[..., Any], extra_fields: type | None = None) -> Accepted:
    """Keyword parameters of ``factory``, plus the fields of the dataclass ``extra_fields`` when the
    factory forwards its ``**kwargs`` to it (then ``**kwargs`` no longer means "anything")."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: nothing can be checked
        return Accepted(frozenset(), frozenset(), True)
    names = {p.name for p in params if p.kind in _KEYWORD_KINDS}
    required = {p.name for p in params if p.kind in _KEYWORD_KINDS and p.default is p.empty}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if extra_fields is not None and dataclasses.is_dataclass(extra_fields):
        names |= {f.name for f in dataclasses.fields(extra_fields)}
        var_kw = False
    return Accepted(frozenset(names), frozenset(required), var_kw)


def keyword_problems(
    kwargs: Mapping[str, Any], takes: Accepted, what: str, *, require: bool = True
) -> list[Problem]:
    """Unknown keywords (and, with ``require``, missing required ones) as problems at ``(key,)``."""
    problems: list[Problem] = []
    if not takes.open:
        known = ", ".join(sorted(takes.names))
        problems += [((k,), f"not an argument of {what} (known: {known})")
                     for k in kwargs if k not in takes.names]
    if require:
        problems += [((k,), f"required argument of {what} is missing")
                     for k in sorted(takes.required - set(kwargs))]
    return problems


def model_problems(kwargs: Mapping[str, Any], model: type, what: str, *, require: bool = True) -> list[Problem]:
    """``kwargs`` validated by the pydantic ``model``: unknown top-level keys named as in
    :func:`keyword_problems`, every other error with pydantic's location and message."""
    from pydantic import ValidationError

    fields = model.model_fields
    known = ", ".join(fields)
    problems: list[Problem] = [((k,), f"not an argument of {what} (known: {known})")
                               for k in kwargs if k not in fields]
    try:
        model.model_validate({k: v for k, v in kwargs.items() if k in fields})
    except ValidationError as err:
        for e in err.errors():
            if e["type"] != "missing":
                problems.append((tuple(e["loc"]), e["msg"]))
            elif require:
                problems.append((tuple(e["loc"]), f"required argument of {what} is missing"))
    return problems


def source_problems(source: str, kwargs: Mapping[str, Any], *, require: bool = True) -> list[Problem]:
    """Problems of one split's arguments for task source ``source``, at locations below the split."""
    from rollout.tasks import TASK_SOURCE_ARGS, TASK_SOURCES

    what = f"task source {source!r}"
    typed = TASK_SOURCE_ARGS.get(source)
    if typed is not None and not dataclasses.is_dataclass(typed):
        return model_problems(kwargs, typed, what, require=require)
    return keyword_problems(kwargs, accepted(TASK_SOURCES[source], typed), what, require=require)


def data_problems(data: Any, uses_tasks: bool) -> list[Problem]:
    """``data.source`` known; ``data.train`` / ``data.eval`` its arguments. Missing required ones
    only for a table the recipe writes and when the rollout kind reads tasks (environment episodes
    ignore the data tables; a recipe tree without them keeps the defaults, e.g. in tests)."""
    from rollout.tasks import TASK_SOURCES

    if data.source not in TASK_SOURCES:
        known = ", ".join(sorted(TASK_SOURCES))
        return [(("data", "source"), f"unknown task source {data.source!r} (known: {known})")]
    problems: list[Problem] = []
    for split in ("train", "eval"):
        require = uses_tasks and split in data.model_fields_set
        found = source_problems(data.source, getattr(data, split), require=require)
        problems += [(("data", split, *loc), msg) for loc, msg in found]
    return problems


def reward_problems(index: int, name: str, kwargs: Mapping[str, Any]) -> list[Problem]:
    """Problems of ``rewards[index]``: an unknown name or unimportable path, or its kwargs."""
    from rewards import registered_rewards
    from rewards.base import reward_factory

    try:
        factory = reward_factory(name)
    except Exception as err:  # noqa: BLE001 - a user's module may fail to import in any way
        if ":" not in name:
            known = ", ".join(registered_rewards())
            return [(("rewards", index, "name"), f"unknown reward {name!r} (known: {known})")]
        return [(("rewards", index, "name"), f"cannot load reward {name!r}: {err}")]
    found = keyword_problems(kwargs, accepted(factory), f"reward {name!r}")
    return [(("rewards", index, "kwargs", *loc), msg) for loc, msg in found]


def plugin_problems(recipe: Any) -> list[Problem]:
    """Every problem of the recipe's task source and reward arguments, in recipe order."""
    problems = data_problems(recipe.data, uses_tasks=recipe.rollout.spec.uses_tasks)
    for i, term in enumerate(recipe.rewards):
        problems += reward_problems(i, term.name, term.kwargs)
    return problems
