"""Typed configuration of the rollout runtime: roles, the three rollout kinds, the group size.

One pydantic model per component, ``extra="forbid"`` (a misspelt key is an error, not a silently
ignored default) and a docstring under every field (``use_attribute_docstrings``, so the field
descriptions in ``model_json_schema()`` and error messages are these docstrings). Templates are
checked at load time: a placeholder the runtime does not fill is a clear ``ValidationError``.

The tree: :class:`RolloutConfig` (kind, group size G, seed) holds one of
:class:`SingleTurnConfig`, :class:`DialogueConfig` (IMMO Reasoner/Observer) or
:class:`EnvEpisodeConfig` (RL4VLM gym_cards); each role is a :class:`RoleConfig` with its own
:class:`SamplingConfig`.
"""

from __future__ import annotations

import re
import string
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rollout.engine.base import Sampling


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
    """LoRA adapter name on the role's engine ("policy", "reasoner", "observer"); None = base model."""
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


TASK_FIELDS = {"question", "choices"}


class SingleTurnConfig(_Config):
    """One reply per sample (r1_vlm cryptograms, easy-VQA, Visual Genome)."""

    policy: RoleConfig = RoleConfig(adapter="policy")
    """The answering role."""
    prompt_template: str = "{question}{choices}"
    """User message; ``{question}`` is the task's question, ``{choices}`` its formatted options
    ("\\nOptions: (A) x (B) y", empty when the task has none)."""
    answer: AnswerFormat = AnswerFormat()
    """How the final answer is extracted from the reply."""
    success_component: str | None = None
    """Reward component whose value >= 1 marks success (e.g. "exact_match"); None: undefined."""

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return check_template(v, TASK_FIELDS, "prompt_template")


class DialogueConfig(_Config):
    """IMMO inner monologue: Observer captions, Reasoner asks up to K questions, then answers."""

    reasoner: RoleConfig = RoleConfig(
        adapter="reasoner",
        system_prompt="You are the Reasoner. You cannot see the image. An Observer who sees it "
                      "describes it and answers your questions.")
    """The text-only role that asks and answers (Vicuna in IMMO)."""
    observer: RoleConfig = RoleConfig(
        adapter="observer",
        system_prompt="You are the Observer. You see the image. Answer questions about it briefly "
                      "and truthfully.")
    """The vision role that captions and answers questions (BLIP-2 in IMMO)."""
    max_questions: int = Field(3, ge=0)
    """K: most question/answer rounds before the Reasoner must answer."""
    caption_prompt: str = "Describe the image in detail."
    """The Observer's first user message (after the image)."""
    reasoner_template: str = (
        "Task: {question}{choices}\nImage description: {caption}\n"
        "Ask the Observer one question about the image, or, if you are sure, give the final "
        "answer as <answer>...</answer>.")
    """The Reasoner's first user message; ``{caption}`` is the Observer's caption text."""
    question_template: str = "{question}"
    """How a Reasoner question is written as a user message to the Observer."""
    reply_template: str = "Observer: {answer}"
    """How an Observer answer is written as a user message to the Reasoner."""
    final_prompt: str = "Now give the final answer as <answer>...</answer>."
    """User message forcing the Reasoner's final answer after K rounds."""
    answer: AnswerFormat = AnswerFormat()
    """Final-answer format: a Reasoner reply matching it ends the dialogue (early answer)."""
    success_component: str | None = None
    """Reward component whose value >= 1 marks success (e.g. "exact_match"); None: undefined."""

    def with_greedy(self, roles: Sequence[str]) -> DialogueConfig:
        """A copy in which ``roles`` sample greedily (temperature 0), the others unchanged."""
        return self.model_copy(update={r: getattr(self, r).greedy() for r in roles})

    @model_validator(mode="after")
    def _templates(self) -> DialogueConfig:
        check_template(self.reasoner_template, TASK_FIELDS | {"caption"}, "reasoner_template")
        check_template(self.question_template, {"question"}, "question_template")
        check_template(self.reply_template, {"answer"}, "reply_template")
        return self


class EnvEpisodeConfig(_Config):
    """RL4VLM multi-step episodes in a gym_cards environment."""

    env: Literal["numberline", "ezpoints", "points24", "blackjack"] = "numberline"
    """Environment name for ``rollout.envs.make_env``."""
    policy: RoleConfig = RoleConfig(adapter="policy")
    """The acting VLM."""
    max_steps: int | None = Field(None, ge=1)
    """Step cap (truncation); None keeps the environment's default (NumberLine: 10)."""
    image_size: int = Field(300, ge=16)
    """Side of the square observation in pixels (RL4VLM: 300)."""
    cot: bool = True
    """Ask for thoughts before the action (False = RL4VLM's "without CoT" ablation)."""
    invalid_action: Literal["random", "penalty"] = "random"
    """Unparseable reply: play a uniformly random action (RL4VLM) or reward ``invalid_penalty``."""
    invalid_penalty: float = -1.0
    """Step reward of an invalid reply in "penalty" mode (state unchanged)."""
    span_mode: Literal["rl4vlm", "values"] = "rl4vlm"
    """Token spans: "rl4vlm" splits the reply at the "action" key (CoT before, action from it to
    the end, as RL4VLM's code); "values" marks only the thoughts value and the action value."""


class RolloutConfig(_Config):
    """What a rollout worker produces per call."""

    kind: Literal["single_turn", "dialogue", "env"] = "single_turn"
    """Which rollout: single replies, Reasoner/Observer dialogues, or environment episodes."""
    group_size: int = Field(4, ge=1)
    """G: samples (replies, dialogues or episodes) per task or env seed, one GRPO group."""
    seed: int = 0
    """Base seed; each sample's engine seed is derived from (seed, step, task id, sample index)."""
    transcripts: bool = True
    """Store each episode's readable transcript in ``Episode.metadata["transcript"]``."""
    single_turn: SingleTurnConfig = SingleTurnConfig()
    """Settings used when ``kind == "single_turn"``."""
    dialogue: DialogueConfig = DialogueConfig()
    """Settings used when ``kind == "dialogue"``."""
    env: EnvEpisodeConfig = EnvEpisodeConfig()
    """Settings used when ``kind == "env"``."""

    def roles(self) -> dict[str, RoleConfig]:
        """The roles the configured kind generates with, by role name."""
        if self.kind == "dialogue":
            return {"reasoner": self.dialogue.reasoner, "observer": self.dialogue.observer}
        return {"policy": self.single_turn.policy if self.kind == "single_turn" else self.env.policy}
