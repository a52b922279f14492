"""The ``dialogue`` kind: IMMO's Reasoner/Observer inner monologue (arXiv 2308.09970).

Runtime: :func:`rollout.dialogue.run_dialogues`; items: tasks; roles ``reasoner`` and ``observer``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from pydantic import Field, model_validator

from rollout.dialogue import observer_opening, reasoner_opening, run_dialogues
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
from rollout.types import Reward, Task


@register_kind
class DialogueConfig(RolloutKind):
    """IMMO inner monologue: Observer captions, Reasoner asks up to K questions, then answers."""

    name = "dialogue"

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

    @model_validator(mode="after")
    def _templates(self) -> DialogueConfig:
        check_template(self.reasoner_template, TASK_FIELDS | {"caption"}, "reasoner_template")
        check_template(self.question_template, {"question"}, "question_template")
        check_template(self.reply_template, {"answer"}, "reply_template")
        return self

    def run(self, engines: Mapping[str, Engine], items: Sequence[Any], group_size: int, *,
            reward: Reward | None, step: int, seed: int) -> EpisodeBatch:
        """G whole dialogues per task, batched by phase."""
        tasks = as_tasks(items, self.name)
        return run_dialogues(engines["reasoner"], engines["observer"], tasks, self, group_size,
                             reward=reward, step=step, seed=seed)

    def sft_examples(self, tasks: Sequence[Task]) -> dict[str, list[Reference]]:
        """IMMO's first stage on written dialogues: the Observer captions the image with the task's
        reference caption (``metadata["caption"]``, e.g. easy-VQA's "a blue rectangle"), the Reasoner
        answers at once from the question and that caption; both prompts are the rollout's own
        (:func:`rollout.dialogue.observer_opening`, :func:`rollout.dialogue.reasoner_opening`), so SFT
        trains the token layout the sampler later continues. Tasks without a caption are left out;
        ValueError if none has one."""
        captioned = [t for t in tasks if t.metadata.get("caption")]
        if not captioned:
            raise ValueError("train.sft: no task has metadata['caption'] to warm-start a dialogue from "
                             "(the easy_vqa source provides one)")
        observer = [Reference(observer_opening(self) + (("assistant", t.metadata["caption"]),), t.image)
                    for t in captioned]
        reasoner = [Reference(reasoner_opening(t, self, t.metadata["caption"])
                              + (("assistant", self.answer.reference_reply(t.answer)),)) for t in captioned]
        return {"observer": observer, "reasoner": reasoner}
