"""Typed records that cross module and process boundaries.

Everything the rollout side hands to the learner is an :class:`Episode`: one task, one attempt, made
of :class:`Turn` records (one per generation call). Records are frozen; their invariants (equal
lengths of aligned arrays, spans inside the output) are checked on construction, so a malformed
record fails where it is made, not three processes later in the learner.

Token-in/token-out: a turn stores the exact ``prompt_ids`` the engine was fed and the ``output_ids``
it sampled. Multi-turn contexts are built by concatenating ids, never by re-tokenising decoded text,
so the learner scores exactly the tokens the sampler produced.

A reward grades an episode: :class:`Reward` (the protocol every reward plugin meets) and its
:class:`RewardResult` live here, beside the types they grade, so the rollout side needs nothing
from ``rewards/`` (which implements and registers the rewards and re-exports these two).

Only numpy-free standard library here: these types are imported by unit tests, the learner, the
rollout workers and the Arrow codec alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol, runtime_checkable

# Roles of the built-in rollout kinds. "policy" is the single acting model of environment episodes
# and single-turn tasks; "reasoner"/"observer" are the two IMMO roles. Each trainable role has its
# own model/adapter and its own weight version. A registered rollout kind (rollout.kinds) may name
# other roles: a turn's role is any identifier.
ROLES = ("policy", "reasoner", "observer")

FINISH_REASONS = ("stop", "length", "answered", "max_turns", "terminated", "truncated", "error")


@dataclass(frozen=True)
class Span:
    """Half-open token range ``[start, end)`` inside a turn's ``output_ids``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"Span: need 0 <= start <= end, got [{self.start}, {self.end})")

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Turn:
    """One generation call by one role.

    Shapes: ``output_ids`` and ``output_logprobs`` have the same length T_out (one log-prob per
    sampled token, the sampler's log pi_old(a_t|s_t)). ``prompt_ids`` has length T_in and already
    contains the image placeholder tokens for every image in ``image_hashes`` (in order).
    """

    role: str
    """Which role generated this turn: an identifier, a role of the rollout kind (:data:`ROLES` for
    the built-in kinds)."""
    prompt_ids: tuple[int, ...]
    """(T_in,) the full context fed to the engine, image placeholders expanded as the engine saw them."""
    output_ids: tuple[int, ...]
    """(T_out,) sampled token ids, including the stop token if one was generated."""
    output_logprobs: tuple[float, ...]
    """(T_out,) log-probability of each sampled token under the sampling policy."""
    adapter_version: int
    """Version of the role's LoRA adapter that generated this turn (0 = base model)."""
    text: str = ""
    """Decoded ``output_ids`` for transcripts (never re-tokenised)."""
    image_hashes: tuple[str, ...] = ()
    """Content hashes (sha256 hex) of the images in the prompt, in prompt order."""
    trainable: bool = True
    """False for turns that must never receive gradient (e.g. a frozen role's reply)."""
    cot_span: Span | None = None
    """Chain-of-thought tokens inside ``output_ids`` (RL4VLM scales their log-prob by lambda)."""
    action_span: Span | None = None
    """Action tokens inside ``output_ids`` (log-prob weight 1 in RL4VLM)."""
    reward: float = 0.0
    """Immediate reward that followed this turn (environment step reward); 0 for dialogue turns."""
    finish_reason: str = "stop"
    """Why generation stopped: "stop" (stop token) or "length" (token budget)."""
    latency_s: float = 0.0
    """Wall time of the generation call that produced this turn."""

    def __post_init__(self) -> None:
        if not self.role.isidentifier():
            raise ValueError(f"Turn.role: {self.role!r} is not an identifier (a rollout kind's role name)")
        n = len(self.output_ids)
        if len(self.output_logprobs) != n:
            raise ValueError(
                f"Turn.output_logprobs: length {len(self.output_logprobs)} != len(output_ids) {n}"
            )
        for name in ("cot_span", "action_span"):
            span = getattr(self, name)
            if span is not None and span.end > n:
                raise ValueError(f"Turn.{name}: {span} ends past output length {n}")
        if self.adapter_version < 0:
            raise ValueError(f"Turn.adapter_version: must be >= 0, got {self.adapter_version}")

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass(frozen=True)
class Episode:
    """One attempt at one task: a single answer, a dialogue, or an environment episode.

    ``group_id`` ties together the G episodes sampled for the same task (GRPO groups).
    ``reward`` is the scalar the advantage estimator sees (terminal, for outcome rewards);
    ``reward_components`` keeps every named part of a composite reward for diagnosis.
    For multi-step environments the per-step rewards live on the turns and ``reward`` is the return.
    """

    episode_id: str
    group_id: str
    task_id: str
    turns: tuple[Turn, ...]
    reward: float = 0.0
    reward_components: Mapping[str, float] = field(default_factory=dict)
    reward_reason: str = ""
    """Why the reward is zero or partial (e.g. "unparseable answer"), empty when not applicable."""
    finish_reason: str = "stop"
    success: bool | None = None
    """Task success as the benchmark defines it (exact match, env return > 0), None if undefined."""
    answer: str = ""
    """The final answer extracted from the episode (what rewards compare to the reference)."""
    policy_versions: Mapping[str, int] = field(default_factory=dict)
    """Adapter version per role that produced this episode (the minimum over its turns)."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    bootstrap: Turn | None = None
    """Truncated environment episodes: the state after the last step as a prompt with no output
    (``trainable=False``), built like every step's prompt; the learner's critic reads V(s_T) on
    it to bootstrap GAE instead of treating the time limit as the end of the task. None otherwise."""

    def __post_init__(self) -> None:
        if not self.episode_id or not self.group_id or not self.task_id:
            raise ValueError("Episode: episode_id, group_id and task_id must be non-empty")
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Episode.finish_reason: {self.finish_reason!r} not in {FINISH_REASONS}")
        if self.bootstrap is not None and (self.bootstrap.output_ids or self.bootstrap.trainable):
            raise ValueError("Episode.bootstrap: must be a prompt only turn (no output, trainable=False)")
        if not self.policy_versions and self.turns:
            versions: dict[str, int] = {}
            for t in self.turns:
                versions[t.role] = min(versions.get(t.role, t.adapter_version), t.adapter_version)
            object.__setattr__(self, "policy_versions", versions)

    def turns_of(self, role: str) -> tuple[Turn, ...]:
        return tuple(t for t in self.turns if t.role == role)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(t.output_ids) for t in self.turns)


@dataclass(frozen=True)
class Task:
    """One dataset row a rollout is asked to solve.

    ``image`` holds encoded image bytes (PNG/JPEG) or None for text-only tasks. ``answer`` is the
    reference the rewards compare against; ``choices`` is set for multiple-choice tasks (ScienceQA),
    in which case ``answer`` is one of them. ``metadata`` carries task-specific extras as strings
    (e.g. the cryptogram's coded message and key for the decoding reward).
    """

    task_id: str
    question: str
    answer: str
    image: bytes | None = None
    choices: tuple[str, ...] = ()
    source: str = ""
    """Data set or generator name, e.g. "easy_vqa", "cryptogram"."""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.task_id:
            raise ValueError("Task.task_id: must be non-empty")
        if self.choices and self.answer not in self.choices:
            raise ValueError(f"Task.answer: {self.answer!r} is not one of choices {self.choices}")


@dataclass(frozen=True)
class PluginFault:
    """A user plugin (a reward, an environment) that raised on one episode, as :mod:`rollout.guard`
    records it: the episode is scored 0 with :attr:`reason` instead of failing the rollout."""

    kind: str
    """What raised: "reward" or "env"."""
    name: str
    """The plugin's name (a reward's ``name``, the environment's name)."""
    error: str
    """The traceback's last line, e.g. ``"KeyError: 'colour'"``."""
    traceback: str = ""
    """The formatted traceback (its last lines when long)."""

    @property
    def plugin(self) -> str:
        """``"<kind>/<name>"``, the key faults are counted by (``plugin_errors/<kind>/<name>``)."""
        return f"{self.kind}/{self.name}"

    @property
    def reason(self) -> str:
        """The episode's reward reason, e.g. ``"reward 'x' raised KeyError: 'colour'"``."""
        return f"{self.kind} {self.name!r} raised {self.error}"


@dataclass(frozen=True)
class RewardResult:
    """One reward's verdict on one episode.

    ``components`` maps every named part to its unweighted score (a leaf reward reports at least
    ``{name: score}``; a composite reports all its children's). ``reason`` says why the score is
    zero or partial because of the output (e.g. "no <answer> block"); empty for a full score.
    """

    score: float
    """The scalar the episode is given (finite)."""
    components: Mapping[str, float] = field(default_factory=dict)
    """Every named part's unweighted score (a leaf: at least ``{name: score}``)."""
    reason: str = ""
    """Why the score is zero or partial because of the output; empty for a full score."""
    faults: tuple[PluginFault, ...] = ()
    """Rewards that raised instead of scoring (each then counted as 0 by :mod:`rollout.guard`);
    empty for a reward that ran."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.score):
            raise ValueError(f"RewardResult.score: must be finite, got {self.score}")
        object.__setattr__(self, "components", dict(self.components))
        object.__setattr__(self, "faults", tuple(self.faults))


@runtime_checkable
class Reward(Protocol):
    """A named, pure function of (task, episode). Must not raise on bad model output: bad output
    (empty, unparseable, huge, garbage text) is a score with a reason; a malformed *task* raises
    ``ValueError``. Implementations and their registry live in ``rewards/``."""

    name: str

    def __call__(self, task: Task, episode: Episode) -> RewardResult: ...
