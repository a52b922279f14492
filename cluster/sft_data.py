"""Reference replies as SFT transcripts for the built-in warm start (no Ray).

Single-turn recipes: (system?, prompt, reference answer). Dialogue recipes (IMMO's first stage, on
written dialogues): the Observer learns to caption the image with the task's reference caption
(``metadata["caption"]``, e.g. easy-VQA's "a blue rectangle"), the Reasoner to answer at once
from the question and that caption. Both are written with the exact messages the dialogue rollout
builds, so SFT trains the token layout the sampler later continues."""

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


def dialogue_sft_examples(recipe: Recipe, tasks: Sequence[Task]) -> dict[str, list[SFTExample]]:
    """Role -> transcripts for the dialogue warm start (module docstring); tasks without a
    ``caption`` in their metadata are left out. Raises if none has one."""
    d = recipe.rollout.dialogue
    captioned = [t for t in tasks if t.metadata.get("caption")]
    if not captioned:
        raise ValueError("train.sft: no task has metadata['caption'] to warm-start a dialogue from "
                         "(the easy_vqa source provides one)")

    def system(prompt: str | None) -> tuple[tuple[str, str], ...]:
        return (("system", prompt),) if prompt else ()

    observer, reasoner = [], []
    for t in captioned:
        caption = t.metadata["caption"]
        observer.append(SFTExample(system(d.observer.system_prompt) + (
            ("user", d.caption_prompt), ("assistant", caption)), t.image))
        first = d.reasoner_template.format(question=t.question, choices=format_choices(t.choices), caption=caption)
        if d.max_questions == 0:
            first = f"{first}\n{d.final_prompt}"
        reasoner.append(SFTExample(system(d.reasoner.system_prompt) + (
            ("user", first), ("assistant", reference_reply(t, d.answer.pattern)))))
    return {"observer": observer, "reasoner": reasoner}


def sft_examples_for(recipe: Recipe, tasks: Sequence[Task]) -> dict[str, list[SFTExample]]:
    """Role -> warm-start transcripts for ``recipe``'s rollout kind (the one entry point the run uses)."""
    if recipe.rollout.kind == "single_turn":
        return {"policy": sft_examples(recipe, tasks)}
    if recipe.rollout.kind == "dialogue":
        return dialogue_sft_examples(recipe, tasks)
    raise ValueError("train.sft: the built-in warm start covers single_turn and dialogue recipes; "
                     "use learner.sft with your own transcripts for environments")
