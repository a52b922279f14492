"""``Recipe.seed``, the run's one seed, spread over the components that draw random numbers.

The recipe's ``seed`` is used directly for the data (the training tasks' shuffle, the environment
seeds of train and held-out episodes) and is the **default** of the two component seeds:

* ``rollout.seed``: sampling (each sample's engine seed is derived from it, the step, the task id
  and the sample index);
* ``roles.<r>.learner.seed``: learner initialisation (LoRA A matrices, the value head), the
  minibatch shuffle and dropout.

A component seed written in the recipe (or by ``--set``) keeps its value, so ``seed = 0`` (every
shipped recipe) runs exactly as before this default existed, and ``--set seed=1`` now changes the
data, the samples and the initialisation together. Applied to the raw recipe input before
validation; idempotent (a dumped recipe carries every seed explicitly, so re-validating it in an
actor changes nothing).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def _section_with_seed(section: Any, seed: int) -> Any:
    """``section`` (a mapping or a validated model) with ``seed`` unless it names its own."""
    if isinstance(section, BaseModel):
        return section if "seed" in section.model_fields_set else section.model_copy(update={"seed": seed})
    if isinstance(section, dict):
        return {"seed": seed, **section}
    return section


def _role_with_seed(runtime: Any, seed: int) -> Any:
    """A role's runtime with its learner's default seed (a frozen role, ``learner = None``, has none)."""
    if isinstance(runtime, BaseModel):
        learner = runtime.learner
        return runtime if learner is None else runtime.model_copy(update={"learner": _section_with_seed(learner, seed)})
    if isinstance(runtime, dict) and runtime.get("learner", {}) is not None:
        return {**runtime, "learner": _section_with_seed(runtime.get("learner", {}), seed)}
    return runtime


def with_seed_defaults(data: Any, default_roles: tuple[str, ...] = ("policy",)) -> Any:
    """Raw recipe input with ``seed`` as the default of ``rollout.seed`` and of every
    ``roles.<r>.learner.seed`` (``default_roles``: the roles an input without ``roles`` gets).
    Input without an integer ``seed`` is returned as it is (the defaults are all 0 already)."""
    if not isinstance(data, dict) or not isinstance(data.get("seed"), int) or isinstance(data["seed"], bool):
        return data
    seed = data["seed"]
    roles = data.get("roles", {name: {} for name in default_roles})
    out = dict(data, rollout=_section_with_seed(data.get("rollout", {}), seed))
    if isinstance(roles, dict):
        out["roles"] = {name: _role_with_seed(rt, seed) for name, rt in roles.items()}
    return out
