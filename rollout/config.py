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


def _prefixed(err: ValidationError, *prefix: str | int) -> ValidationError:
    """``err`` with ``prefix`` put in front of every error's location (its messages kept)."""
    details = [InitErrorDetails(type=PydanticCustomError(e["type"], "{msg}", {"msg": e["msg"]}),
                                loc=(*prefix, *e["loc"]), input=e["input"]) for e in err.errors()]
    return ValidationError.from_exception_data(err.title, details)


def _section(kind: str, value: Any) -> RolloutKind:
    """``value`` (a mapping or an instance) validated as the section of ``kind``; errors are
    located at ``kind`` (``rollout.<kind>.<field>`` in a recipe)."""
    try:
        cls = kind_class(kind)
    except ValueError as err:
        raise _prefixed(ValidationError.from_exception_data("RolloutConfig", [InitErrorDetails(
            type=PydanticCustomError("unknown_kind", "{msg}", {"msg": str(err)}), loc=(), input=kind)]),
            "kind") from None
    if isinstance(value, cls):
        return value
    try:
        return cls.model_validate(value)
    except ValidationError as err:
        raise _prefixed(err, kind) from None


class RolloutConfig(_Config):
    """What a rollout worker produces per call."""

    kind: str = "single_turn"
    """Which rollout (a registered kind): "single_turn" (single replies), "dialogue"
    (Reasoner/Observer dialogues) or "env" (environment episodes)."""
    group_size: int = Field(4, ge=1)
    """G: samples (replies, dialogues or episodes) per task or env seed, one GRPO group."""
    seed: int = 0
    """Base seed; each sample's engine seed is derived from (seed, step, task id, sample index)."""
    transcripts: bool = True
    """Store each episode's readable transcript in ``Episode.metadata["transcript"]``."""
    spec: SerializeAsAny[RolloutKind]
    """The kind's settings: section ``[rollout.<kind>]`` of a recipe (defaults when it is absent),
    written back under that name. Sections of other registered kinds are validated and dropped."""

    @model_validator(mode="before")
    @classmethod
    def _kind_section(cls, data: Any) -> Any:
        """``{kind: K, K: {...}}`` -> ``{kind: K, spec: <K's class>(...)}``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        kind = data.setdefault("kind", "single_turn")
        if not isinstance(kind, str):
            return data  # the field's own check reports it
        for other in set(registered_kinds()) - {kind}:
            if other in data:
                _section(other, data.pop(other))
        data["spec"] = _section(kind, data.pop("spec", data.pop(kind, {})))
        return data

    @model_validator(mode="after")
    def _spec_is_kind(self) -> RolloutConfig:
        if self.spec.name != self.kind:
            raise ValueError(f"spec: a {self.spec.name!r} section for kind {self.kind!r}")
        return self

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
