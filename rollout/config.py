"""Typed configuration of the rollout runtime: the rollout kind, its section, the group size.

One pydantic model per component, ``extra="forbid"`` (a misspelt key is an error, not a silently
ignored default) and a docstring under every field (``use_attribute_docstrings``, so the field
descriptions in ``model_json_schema()`` and error messages are these docstrings). Templates are
checked at load time: a placeholder the runtime does not fill is a clear ``ValidationError``.

The tree: :class:`RolloutConfig` (kind, group size G, seed) holds the section of its kind, an
instance of the class registered under that name (:mod:`rollout.kinds.base`): one of
:class:`SingleTurnConfig`, :class:`DialogueConfig` (IMMO Reasoner/Observer) or
:class:`EnvEpisodeConfig` (RL4VLM gym_cards), or a kind a user registered. In a recipe::

    [rollout]
    kind = "dialogue"
    group_size = 4
    [rollout.dialogue]
    max_questions = 2

Each role of a kind is a :class:`RoleConfig` with its own :class:`SamplingConfig`.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    SerializationInfo,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from rollout.kinds.base import (  # noqa: F401 - re-exported: the rollout's config types live here
    TASK_FIELDS,
    AnswerFormat,
    RoleConfig,
    RolloutKind,
    SamplingConfig,
    _Config,
    check_template,
    kind_class,
    registered_kinds,
)
from rollout.kinds.dialogue import DialogueConfig  # noqa: F401 - built-in kinds register on import
from rollout.kinds.env import EnvEpisodeConfig  # noqa: F401
from rollout.kinds.single_turn import SingleTurnConfig  # noqa: F401


def _error(loc: tuple[str | int, ...], msg: str, value: Any, kind: str = "rollout_kind") -> InitErrorDetails:
    """One validation error at ``loc`` with message ``msg`` (kept verbatim)."""
    return InitErrorDetails(type=PydanticCustomError(kind, "{msg}", {"msg": msg}), loc=loc, input=value)


def _section(kind: str, value: Any) -> tuple[RolloutKind | None, list[InitErrorDetails]]:
    """``value`` (a mapping or an instance) validated as the section of ``kind``, or its errors,
    located at ``kind`` (``rollout.<kind>.<field>`` in a recipe); an unknown kind's at ``kind``."""
    try:
        cls = kind_class(kind)
    except ValueError as err:
        return None, [_error(("kind",), str(err), kind)]
    if isinstance(value, cls):
        return value, []
    try:
        return cls.model_validate(value), []
    except ValidationError as err:
        return None, [_error((kind, *e["loc"]), e["msg"], e["input"], e["type"]) for e in err.errors()]


def _errors(err: ValidationError) -> list[InitErrorDetails]:
    return [_error(e["loc"], e["msg"], e["input"], e["type"]) for e in err.errors()]


class _RolloutFields(_Config):
    """The settings every rollout kind shares."""

    kind: str = "single_turn"
    """Which rollout (a registered kind): "single_turn" (single replies), "dialogue"
    (Reasoner/Observer dialogues) or "env" (environment episodes)."""
    group_size: int = Field(4, ge=1)
    """G: samples (replies, dialogues or episodes) per task or env seed, one GRPO group."""
    seed: int = 0
    """Base seed; each sample's engine seed is derived from (seed, step, task id, sample index)."""
    transcripts: bool = True
    """Store each episode's readable transcript in ``Episode.metadata["transcript"]``."""


class RolloutConfig(_RolloutFields):
    """What a rollout worker produces per call: the shared settings and the kind's section."""

    spec: SerializeAsAny[RolloutKind]
    """The kind's settings: section ``[rollout.<kind>]`` of a recipe (defaults when it is absent),
    written back under that name. Sections of other registered kinds are validated and dropped."""

    @model_validator(mode="before")
    @classmethod
    def _kind_section(cls, data: Any) -> Any:
        """``{kind: K, K: {...}}`` -> ``{kind: K, spec: <K's class>(...)}``; every error of the
        sections and of the shared fields is reported at once."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        kind = data.setdefault("kind", "single_turn")
        if not isinstance(kind, str):
            return data  # the field's own check reports it
        errors = [e for other in set(registered_kinds()) - {kind} if other in data
                  for e in _section(other, data.pop(other))[1]]
        data["spec"], own = _section(kind, data.pop("spec", data.pop(kind, {})))
        if errors or own:
            try:
                _RolloutFields.model_validate({k: v for k, v in data.items() if k != "spec"})
            except ValidationError as err:
                errors = _errors(err) + errors
            raise ValidationError.from_exception_data(cls.__name__, errors + own)
        return data

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """The recipe's shape: the section under the kind's name."""
        out = handler(self)
        if "spec" in out:
            out[self.kind] = out.pop("spec")
        return out

    def __getattr__(self, name: str) -> Any:
        """``rollout.<kind>`` reads the section as the recipe names it (``recipe.rollout.dialogue``)."""
        fields = self.__dict__
        if "spec" in fields and name == fields.get("kind"):
            return fields["spec"]
        if "spec" in fields and name in registered_kinds():
            raise AttributeError(f"rollout.{name}: this rollout's kind is {fields['kind']!r}")
        return super().__getattr__(name)

    def roles(self) -> dict[str, RoleConfig]:
        """The roles the configured kind generates with, by role name."""
        return self.spec.roles()

    def evaluation(self) -> RolloutConfig:
        """A copy with G = 1 and greedy sampling for every role (deterministic evaluation)."""
        return self.model_copy(update={"group_size": 1, "spec": self.spec.greedy()})
