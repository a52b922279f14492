"""What every rollout kind is made of, and the registry that maps ``rollout.kind`` to its class.

A rollout kind is ONE pydantic class, the config section ``[rollout.<name>]`` of a recipe, that
also owns everything that differs by kind (RLlib's ``EnvRunner`` per environment type, verl's
registered estimators):

- its **roles**: every :class:`RoleConfig` field of the class is a generating role, named by the
  field (``policy``; ``reasoner`` and ``observer``);
- its **items** (:meth:`RolloutKind.items`): tasks of the recipe's data source, or env seeds;
- **running a batch** (:meth:`RolloutKind.run`): G episodes per item on the role engines;
- its **greedy copy** (:meth:`RolloutKind.with_greedy`, :meth:`RolloutKind.greedy`) for
  evaluation and for roles frozen in an alternating phase;
- its **SFT warm-start transcripts** (:meth:`RolloutKind.sft_examples`), built from the same
  functions that build the rollout's prompts.

``@register_kind`` on a subclass with a ``name`` makes ``rollout.kind = "<name>"`` valid
(:class:`rollout.config.RolloutConfig` looks the section's class up here). The built-in kinds are
:mod:`rollout.kinds.single_turn`, :mod:`rollout.kinds.dialogue` and :mod:`rollout.kinds.env`.

Also here, because every kind uses them: :class:`SamplingConfig`, :class:`RoleConfig`,
:class:`AnswerFormat` and the template check.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rollout.engine.base import Engine, Sampling
from rollout.episode_arrow import EpisodeBatch
from rollout.types import Reward, Task


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def check_template(template: str, allowed: set[str], owner: str) -> str:
    """``template`` unchanged if its ``{placeholders}`` are all in ``allowed``; else ValueError."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ValueError(f"{owner}: malformed template {template!r} ({err})") from err
    unknown = names - allowed
    if unknown:
        raise ValueError(f"{owner}: unknown placeholders {sorted(unknown)}; allowed: {sorted(allowed)}")
    return template


TASK_FIELDS = {"question", "choices"}
"""Placeholders a prompt template may use for the task: its question and its formatted options."""


class SamplingConfig(_Config):
    """Per-role sampling settings (engine-neutral; ``n`` and ``seed`` are set by the runtime)."""

    temperature: float = Field(1.0, ge=0.0)
    """Softmax temperature; 0 is greedy. RL needs > 0 for exploration (RL4VLM used 0.2)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass; 1 disables it (keep 1 for on-policy log-probs)."""
    top_k: int = Field(0, ge=0)
    """Top-k cut-off; 0 disables it."""
    max_tokens: int = Field(256, ge=1)
    """Token budget of one generation call (one turn)."""

    def to_sampling(self, n: int = 1, seed: int | None = None) -> Sampling:
        """The engine's :class:`~rollout.engine.base.Sampling` with ``n`` samples and ``seed``."""
        return Sampling(n=n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                        max_tokens=self.max_tokens, seed=seed)


class RoleConfig(_Config):
    """One generating role: which adapter serves it, its system prompt, how it samples."""

    adapter: str | None = None
    """LoRA adapter name on the role's engine ("policy", "reasoner", "observer"); None = base model.
    The one key a role's adapter versions go by everywhere (a trained role must have one)."""
    system_prompt: str | None = None
    """System message opening every prompt of this role; None writes no system message."""
    sampling: SamplingConfig = SamplingConfig()
    """How this role samples."""
    trainable: bool = True
    """Whether this role's turns receive gradient (False for the frozen role of an IMMO epoch)."""

    def greedy(self) -> RoleConfig:
        """A copy that samples at temperature 0 (its other sampling settings kept)."""
        return self.model_copy(update={"sampling": self.sampling.model_copy(update={"temperature": 0.0})})


class AnswerFormat(_Config):
    """How the final answer is read from a reply (what the rewards compare to the reference)."""

    pattern: str | None = r"<answer>(.*?)</answer>"
    """Regex whose first group is the answer (the LAST match counts); None takes the whole reply."""
    flags: str = "s"
    """``re`` flag letters for ``pattern``: any of "s", "i", "m"."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None and re.compile(v).groups < 1:
            raise ValueError(f"pattern {v!r} needs one capturing group (the answer)")
        return v

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, v: str) -> str:
        if set(v) - set("sim"):
            raise ValueError(f"unknown regex flags {sorted(set(v) - set('sim'))}; use s, i, m")
        return v

    def regex(self) -> re.Pattern[str] | None:
        """The compiled pattern (None when the whole reply is the answer)."""
        if self.pattern is None:
            return None
        flags = {"s": re.S, "i": re.I, "m": re.M}
        return re.compile(self.pattern, sum(flags[c] for c in set(self.flags)))

    def reference_reply(self, answer: str) -> str:
        """The reply this format reads ``answer`` back from (the SFT target of a reference answer)."""
        if self.pattern and "<answer>" in self.pattern:
            return f"<answer>{answer}</answer>"
        return answer


Messages = tuple[tuple[str, str], ...]
"""(role, text) chat messages in order; roles "system", "user", "assistant"."""


def opening(system: str | None, user: str) -> Messages:
    """A role's first messages: its system prompt (when it has one), then the user message."""
    return ((("system", system),) if system else ()) + (("user", user),)


@dataclass(frozen=True)
class Reference:
    """One written transcript for the SFT warm start (``learner.sft.SFTExample`` is built from it)."""

    messages: Messages
    """The role's prompt messages exactly as its rollout builds them, then ("assistant", reply)."""
    image: bytes | None = None
    """The image the role sees in its first user message; None for a text-only role."""


@dataclass(frozen=True)
class ItemSource:
    """What a kind may draw its items from; ``cluster.run.load_items`` builds it from the recipe."""

    seed: int
    """The recipe's seed (``Recipe.seed``)."""
    train_size: int
    """Items the training loop consumes: ``data.tasks_per_step * max(train.steps, 1)``."""
    eval_size: int
    """Held-out items per evaluation (``data.eval_size``)."""
    tasks: Callable[[], tuple[list[Task], list[Task]]]
    """Loads (training, held-out) tasks of the recipe's data source: malformed rows skipped and
    reported, training tasks shuffled by ``seed``, held-out ones cut to ``eval_size``, an id in both
    splits refused. Called only by kinds whose items are tasks."""


K = TypeVar("K", bound="RolloutKind")


class RolloutKind(_Config):
    """Base of a rollout kind: its ``[rollout.<name>]`` section and what differs by kind (module
    docstring). A subclass sets ``name``, declares its roles as :class:`RoleConfig` fields and
    implements :meth:`run`; it is made available with ``@register_kind``."""

    name: ClassVar[str]
    """The ``rollout.kind`` value that selects this class, and the name of its section."""
    uses_tasks: ClassVar[bool] = True
    """Whether the items come from the recipe's data source (``data.*`` is then checked at load)."""

    def roles(self) -> dict[str, RoleConfig]:
        """Role name -> settings: the :class:`RoleConfig` fields, in declaration order."""
        fields = type(self).model_fields
        return {n: v for n in fields if isinstance(v := getattr(self, n), RoleConfig)}

    def with_greedy(self: K, roles: Sequence[str]) -> K:
        """A copy in which ``roles`` sample greedily (temperature 0), the others unchanged."""
        own = self.roles()
        return self.model_copy(update={r: own[r].greedy() for r in roles})

    def greedy(self: K) -> K:
        """A copy in which every role samples greedily (deterministic evaluation)."""
        return self.with_greedy(tuple(self.roles()))

    def check_greedy_roles(self, roles: Sequence[str]) -> None:
        """ValueError unless ``roles`` may be frozen (greedy) in one call: roles of this kind, and
        only in a kind with several roles (the others keep learning)."""
        own = self.roles()
        if roles and (set(roles) - set(own) or len(own) < 2):
            raise ValueError(f"greedy_roles: {sorted(roles)} cannot be frozen in a {self.name} rollout "
                             f"({self.name} roles: {', '.join(own)})")

    def items(self, source: ItemSource) -> tuple[list[Any], list[Any]]:
        """(training items, held-out items); by default the data source's tasks."""
        return source.tasks()

    def run(self, engines: Mapping[str, Engine], items: Sequence[Any], group_size: int, *,
            reward: Reward | None, step: int, seed: int) -> EpisodeBatch:
        """G = ``group_size`` episodes per item on ``engines`` (role -> engine), scored by
        ``reward``; ``step`` and ``seed`` make the episode ids and sampling seeds unique."""
        raise NotImplementedError(f"rollout kind {self.name!r} does not implement run")

    def sft_examples(self, tasks: Sequence[Task]) -> dict[str, list[Reference]]:
        """Role -> warm-start transcripts of ``tasks`` (ValueError where the kind has none)."""
        raise ValueError(f"train.sft: the built-in warm start does not cover {self.name} rollouts; "
                         "use learner.sft with your own transcripts")


_KINDS: dict[str, type[RolloutKind]] = {}

RESERVED = frozenset({"kind", "group_size", "seed", "transcripts", "spec"})
"""Names a kind may not take: the fields of ``RolloutConfig`` its section sits beside."""


def register_kind(cls: type[K]) -> type[K]:
    """Class decorator: make ``rollout.kind = cls.name`` select ``cls`` (re-registering the same
    class is a no-op; another class under a taken name is an error)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier() or name in RESERVED:
        raise ValueError(f"register_kind: {cls.__name__}.name must be an identifier other than "
                         f"{sorted(RESERVED)}, got {name!r}")
    known = _KINDS.get(name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"register_kind: kind {name!r} is already {known.__module__}.{known.__qualname__}")
    _KINDS[name] = cls
    return cls


def kind_class(name: str) -> type[RolloutKind]:
    """The class registered as ``name``; ValueError listing the registered kinds otherwise."""
    if name not in _KINDS:
        raise ValueError(f"unknown rollout kind {name!r} (registered: {', '.join(registered_kinds())})")
    return _KINDS[name]


def registered_kinds() -> tuple[str, ...]:
    """Names of every registered kind, sorted."""
    return tuple(sorted(_KINDS))


def as_tasks(items: Sequence[Any], kind: str) -> list[Task]:
    """``items`` as :class:`Task` records (TypeError naming ``kind`` on anything else)."""
    bad = [x for x in items if not isinstance(x, Task)]
    if bad:
        raise TypeError(f"{kind} rollouts take Task records, got {type(bad[0]).__name__}")
    return list(items)
