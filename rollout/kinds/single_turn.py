"""The ``single_turn`` kind: one reply per sample (r1_vlm cryptograms, easy-VQA, Visual Genome).

Runtime: :func:`rollout.single_turn.sample_groups`; items: tasks; one role, ``policy``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pydantic import field_validator

from rollout.engine.base import Engine
from rollout.episode_arrow import EpisodeBatch
from rollout.kinds.base import (
    TASK_FIELDS,
    AnswerFormat,
    Reference,
    RoleConfig,
    RolloutKind,
    as_tasks,
    check_template,
    register_kind,
)
from rollout.single_turn import prompt_messages, sample_groups
from rollout.types import Reward, Task


@register_kind
class SingleTurnConfig(RolloutKind):
    """One reply per sample (r1_vlm cryptograms, easy-VQA, Visual Genome)."""

    name = "single_turn"

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

    def run(self, engines: Mapping[str, Engine], items: Sequence[Any], group_size: int, *,
            reward: Reward | None, step: int, seed: int) -> EpisodeBatch:
        """G replies per task from one batched call of the policy's engine."""
        tasks = as_tasks(items, self.name)
        return sample_groups(engines["policy"], tasks, self, group_size, reward=reward, step=step, seed=seed)

    def sft_examples(self, tasks: Sequence[Task]) -> dict[str, list[Reference]]:
        """The policy's rollout prompt of each task (:func:`rollout.single_turn.prompt_messages`),
        then the reference reply in the answer format."""
        reply = self.answer.reference_reply
        return {"policy": [Reference(prompt_messages(t, self) + (("assistant", reply(t.answer)),), t.image)
                           for t in tasks]}
