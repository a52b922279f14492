"""Reference replies as SFT transcripts for the built-in warm start (no Ray)."""

from __future__ import annotations

from typing import Sequence

from cluster.config import Recipe
from learner.sft import SFTExample
from rollout.single_turn import format_choices
from rollout.types import Task


def reference_reply(task: Task, answer_pattern: str | None) -> str:
    """The reply the answer extractor reads ``task.answer`` back from."""
    if answer_pattern and "<answer>" in answer_pattern:
        return f"<answer>{task.answer}</answer>"
    return task.answer


def sft_examples(recipe: Recipe, tasks: Sequence[Task]) -> list[SFTExample]:
    """Single-turn tasks as (system?, user prompt, reference reply) transcripts, written with the
    exact prompt template the rollout uses, so SFT and RL see the same context."""
    st = recipe.rollout.single_turn
    out = []
    for t in tasks:
        user = st.prompt_template.format(question=t.question, choices=format_choices(t.choices))
        msgs = ((("system", st.policy.system_prompt),) if st.policy.system_prompt else ()) + (
            ("user", user), ("assistant", reference_reply(t, st.answer.pattern)))
        out.append(SFTExample(msgs, t.image))
    return out
