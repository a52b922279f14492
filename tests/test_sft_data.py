"""Warm-start transcripts: the SFT token rows are exactly what the rollout's sampler continues."""

import pytest

from cluster.config import load_recipe
from cluster.recipes import recipe_path
from cluster.sft_data import sft_examples_for
from learner.sft import tokenize_examples
from rewards import ExactMatch
from rollout.dialogue import run_dialogues
from rollout.engine import AdapterRef
from rollout.engine.fake import FakeEngine
from rollout.types import Task

pytestmark = pytest.mark.unit

TASK = Task("t1", "what color is the shape?", "red", image=b"png-1",
            metadata={"caption": "a red circle"})


def reference_dialogue(prompt, adapter, version, k):
    """The dialogue the warm start teaches: the caption, then the answer at once."""
    return "a red circle" if adapter == "observer" else "<answer>red</answer>"


@pytest.mark.parametrize("questions", [0, 2])
def test_dialogue_sft_rows_equal_the_dialogue_tokens(questions):
    recipe = load_recipe(recipe_path("immo_dialogue"), (f"rollout.dialogue.max_questions={questions}",
                                                        'rollout.dialogue.observer.system_prompt="You see."'))
    eng = FakeEngine(reference_dialogue, image_tokens=4)
    for name in ("observer", "reasoner"):
        eng.load_adapter(AdapterRef(name, 1, "/x"))
    [episode] = run_dialogues(eng, eng, [TASK], recipe.rollout.dialogue, 1, reward=ExactMatch()).episodes
    assert [t.role for t in episode.turns] == ["observer", "reasoner"] and episode.reward == 1.0
    examples = sft_examples_for(recipe, [TASK, Task("t2", "q", "a")])  # t2: no caption, left out
    assert {r: len(v) for r, v in examples.items()} == {"observer": 1, "reasoner": 1}
    for turn in episode.turns:
        batch = tokenize_examples(examples[turn.role], eng.tokenizer, 0, 512, image_tokens=lambda b: 4)
        row = batch.input_ids[0][batch.attention_mask[0]].tolist()
        sampled = list(turn.prompt_ids + turn.output_ids)  # the reply ends with <|im_end|> (eos)
        assert row[: len(sampled)] == sampled and row[len(sampled):] == eng.tokenizer.encode("\n")
        loss = batch.loss_mask[0][batch.attention_mask[0]].tolist()
        assert loss == [False] * len(turn.prompt_ids) + [True] * len(turn.output_ids) + [False]


def test_dialogue_warm_start_needs_captions():
    recipe = load_recipe(recipe_path("immo_dialogue"))
    with pytest.raises(ValueError, match=r"no task has metadata\['caption'\]"):
        sft_examples_for(recipe, [Task("t2", "q", "a")])


def test_single_turn_sft_rows_equal_the_rollout_tokens():
    from rollout.single_turn import sample_groups

    recipe = load_recipe(None, ('rollout.single_turn.policy.system_prompt="Be brief."',
                                'rollout.single_turn.policy.sampling.max_tokens=64'))
    reply = recipe.rollout.single_turn.answer.reference_reply("red")  # what the SFT teaches
    eng = FakeEngine(lambda prompt, adapter, version, k: reply, image_tokens=4)
    eng.load_adapter(AdapterRef("policy", 1, "/x"))
    [episode] = sample_groups(eng, [TASK], recipe.rollout.single_turn, 1, reward=ExactMatch()).episodes
    assert episode.reward == 1.0 and episode.answer == "red"
    [turn] = episode.turns
    [example] = sft_examples_for(recipe, [TASK])["policy"]
    batch = tokenize_examples([example], eng.tokenizer, 0, 512, image_tokens=lambda b: 4)
    row = batch.input_ids[0][batch.attention_mask[0]].tolist()
    assert row == list(turn.prompt_ids + turn.output_ids) + eng.tokenizer.encode("\n")


def test_environment_recipes_have_no_built_in_warm_start():
    recipe = load_recipe(recipe_path("numberline_ppo"))
    with pytest.raises(ValueError, match="covers single_turn and dialogue recipes"):
        sft_examples_for(recipe, [])
