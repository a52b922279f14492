"""Reference transcripts for the built-in SFT warm start (no Ray).

What a kind's warm start is (single replies: the task's prompt and its reference answer; IMMO
dialogues: the Observer's reference caption and the Reasoner's immediate answer) is the rollout
kind's own (``RolloutKind.sft_examples``, built from the same functions that build the rollout's
prompts, so SFT trains the token layout the sampler later continues); this module turns its
:class:`rollout.kinds.base.Reference` transcripts into the learner's :class:`SFTExample` records."""

from __future__ import annotations

from typing import Sequence

from cluster.config import Recipe
from learner.sft import SFTExample
from rollout.types import Task


def sft_examples_for(recipe: Recipe, tasks: Sequence[Task]) -> dict[str, list[SFTExample]]:
    """Role -> warm-start transcripts of ``tasks`` for ``recipe``'s rollout kind (the one entry
    point the run uses); ValueError for a kind without a built-in warm start (environments)."""
    references = recipe.rollout.spec.sft_examples(tasks)
    return {role: [SFTExample(r.messages, r.image) for r in refs] for role, refs in references.items()}
