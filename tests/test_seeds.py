"""Recipe.seed seeds what its docstring says: the data, and (as their default) sampling
(``rollout.seed``) and learner initialisation (``roles.<r>.learner.seed``); seed 0 is unchanged."""

import pytest

from cluster.config import Recipe, load_recipe
from cluster.recipes import recipe_path
from cluster.seeds import with_seed_defaults
from rewards import ExactMatch
from rollout.engine import AdapterRef
from rollout.engine.fake import FakeEngine
from rollout.types import Task
from rollout.worker import RolloutWorker

pytestmark = pytest.mark.unit


def seeds(recipe: Recipe) -> tuple[int, int, dict[str, int]]:
    return recipe.seed, recipe.rollout.seed, {r: rt.learner.seed for r, rt in recipe.roles.items() if rt.learner}


@pytest.mark.parametrize("name", ["default", "smoke", "immo_dialogue", "numberline_ppo", "cryptogram_grpo"])
def test_every_shipped_recipe_still_samples_and_initialises_with_seed_0(name):
    recipe = load_recipe(recipe_path(name) if name != "default" else None)
    assert seeds(recipe) == (0, 0, {r: 0 for r in recipe.trainable_roles})


def test_recipe_seed_is_the_default_of_the_sampling_and_learner_seeds():
    recipe = load_recipe(recipe_path("immo_dialogue"), ("seed=7",))
    assert seeds(recipe) == (7, 7, {"observer": 7, "reasoner": 7})
    explicit = load_recipe(recipe_path("immo_dialogue"), ("seed=7", "rollout.seed=3", "roles.observer.learner.seed=5"))
    assert seeds(explicit) == (7, 3, {"observer": 5, "reasoner": 7})
    assert seeds(Recipe(seed=4)) == (4, 4, {"policy": 4})  # no rollout / roles given: the defaults get it too


def test_the_default_is_applied_once_a_dumped_recipe_revalidates_to_itself():
    recipe = load_recipe(recipe_path("immo_dialogue"), ("seed=7", "rollout.seed=3"))
    assert Recipe.model_validate_json(recipe.model_dump_json()) == recipe
    again = Recipe(**{**dict(recipe), "seed": 9})  # validated sections: an explicit seed is kept
    assert seeds(again) == (9, 3, {"observer": 7, "reasoner": 7})


def test_a_frozen_role_and_inputs_without_an_integer_seed_pass_through():
    assert with_seed_defaults({"roles": {"policy": {"learner": None}}, "seed": 2})["roles"] == {"policy": {"learner": None}}
    for data in ({"name": "x"}, {"seed": "1"}, {"seed": True}, "not a mapping"):
        assert with_seed_defaults(data) == data


class SeedRecorder(FakeEngine):
    """The fake engine, keeping the sampling seed of every request."""

    def __init__(self):
        super().__init__(lambda prompt, adapter, version, k: "<answer>blue</answer>")
        self.seeds = []

    def generate(self, requests):
        self.seeds += [r.sampling.seed for r in requests]
        return super().generate(requests)


def sampling_seeds(*overrides: str) -> list[int]:
    recipe = load_recipe(None, overrides)
    engine = SeedRecorder()
    engine.load_adapter(AdapterRef("policy", 1, "/x"))
    RolloutWorker(recipe.rollout, {"policy": engine}, ExactMatch()).rollout(
        [Task("t1", "What colour?", "blue"), Task("t2", "Shape?", "circle")], {"policy": 1}, step=3)
    return engine.seeds


def test_recipe_seed_changes_the_rollout_sampling_seeds_and_seed_0_keeps_them():
    base = sampling_seeds()
    assert len(base) == 2 and base == sampling_seeds("seed=0") == sampling_seeds("rollout.seed=0")
    assert sampling_seeds("seed=1") == sampling_seeds("rollout.seed=1") != base
