"""Recipes (load, overrides, errors naming the field), the driver's pure helpers, SFT examples."""

import pytest

from cluster.config import RecipeError, build_recipe, load_recipe, parse_override
from cluster.schedule import greedy_roles_at, roles_at, shard, stale_episodes, summarize
from cluster.recipes import RECIPES_DIR, recipe_path
from cluster.rollout_factory import eval_config
from rollout.types import Episode, Task, Turn

pytestmark = pytest.mark.unit


def test_every_shipped_recipe_validates():
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
    assert "default" in names
    for name in names:
        recipe = load_recipe(recipe_path(name))
        assert recipe.trainable_roles


def test_override_is_parsed_as_toml_and_validated():
    assert parse_override("train.steps=5") == ("train.steps", 5)
    assert parse_override("name=abc") == ("name", "abc")
    assert parse_override('data.train={split="test"}') == ("data.train", {"split": "test"})
    recipe = load_recipe(None, ("train.steps=7", "roles.policy.learner.optim.lr=0.01"))
    assert recipe.train.steps == 7
    assert recipe.roles["policy"].learner.optim.lr == 0.01


def test_bad_recipe_names_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"train\.steps: Input should be greater than or equal to 0"):
        load_recipe(None, ("train.steps=-1",))
    with pytest.raises(RecipeError, match=r"train\.stpes: Extra inputs are not permitted"):
        load_recipe(None, ("train.stpes=3",))
    with pytest.raises(RecipeError, match="roles: rollout kind 'dialogue' uses roles"):
        load_recipe(None, ("rollout.kind=dialogue",))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(RecipeError, match="bad.toml: cannot parse recipe"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="learner.role: must be 'policy'"):
        build_recipe({"roles": {"policy": {"learner": {"role": "reasoner"}}}})
    with pytest.raises(FileNotFoundError, match="not a shipped recipe"):
        recipe_path("no_such_recipe")
    with pytest.raises(RecipeError, match=r"data: .*min_pixels \(20000\) is above max_pixels \(10000\)"):
        load_recipe(None, ("data.min_pixels=20000", "data.max_pixels=10000"))
    with pytest.raises(RecipeError, match=r"data\.min_pixels: Input should be greater than or equal to 1"):
        load_recipe(None, ("data.min_pixels=0",))


def test_alternating_schedule_switches_role_every_phase():
    recipe = build_recipe({
        "rollout": {"kind": "dialogue"},
        "roles": {"reasoner": {"learner": {"role": "reasoner"}}, "observer": {"learner": {"role": "observer"}}},
        "train": {"schedule": "alternating", "phase_steps": 2, "role_order": ["observer", "reasoner"]},
    })
    got = [roles_at(recipe.train, recipe.trainable_roles, s) for s in range(6)]
    assert got == [("observer",), ("observer",), ("reasoner",), ("reasoner",), ("observer",), ("observer",)]
    joint = build_recipe({"rollout": {"kind": "dialogue"},
                          "roles": {"reasoner": {"learner": {"role": "reasoner"}},
                                    "observer": {"learner": {"role": "observer"}}}})
    assert roles_at(joint.train, joint.trainable_roles, 3) == ("observer", "reasoner")


def test_frozen_roles_act_greedily_only_when_asked():
    spec = {"rollout": {"kind": "dialogue"},
            "roles": {"reasoner": {"learner": {"role": "reasoner"}}, "observer": {"learner": None}},  # never trained
            "train": {"schedule": "alternating", "frozen_roles": "greedy"}}
    recipe = build_recipe(spec)
    roles = tuple(recipe.rollout.roles())
    assert [greedy_roles_at(recipe.train, roles, recipe.trainable_roles, s) for s in range(2)] == [("observer",)] * 2
    two = build_recipe({**spec, "roles": {"reasoner": {"learner": {"role": "reasoner"}},
                                          "observer": {"learner": {"role": "observer"}}},
                        "train": {"schedule": "alternating", "frozen_roles": "greedy", "phase_steps": 2}})
    got = [greedy_roles_at(two.train, roles, two.trainable_roles, s) for s in range(4)]
    assert got == [("reasoner",), ("reasoner",), ("observer",), ("observer",)]  # trained: observer first (sorted)
    sample = two.model_copy(update={"train": two.train.model_copy(update={"frozen_roles": "sample"})})
    assert greedy_roles_at(sample.train, roles, sample.trainable_roles, 0) == ()
    with pytest.raises(RecipeError, match="train.frozen_roles: 'greedy' needs schedule = 'alternating'"):
        build_recipe({**spec, "train": {"frozen_roles": "greedy"}})


def test_shard_is_contiguous_and_complete():
    assert shard(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shard([1], 3) == [[1], [], []]


def _ep(i, version):
    turn = Turn("policy", (1,), (2,), (-0.5,), version)
    return Episode(f"e{i}", "g", "t", (turn,), reward=float(i), success=i % 2 == 0)


def test_stale_episodes_by_version_lag():
    eps = [_ep(0, 5), _ep(1, 4), _ep(2, 3)]
    # learner at v5: lags 0, 1, 2; bound 1 drops only the last
    assert stale_episodes(eps, {"policy": 5}, {"policy": "policy"}, 1) == [False, False, True]
    assert summarize(eps) == {"episodes": 3.0, "reward": 1.0, "success": 2 / 3}


def test_eval_config_is_greedy_single_sample():
    recipe = load_recipe(None)
    ev = eval_config(recipe.rollout)
    assert ev.group_size == 1
    assert ev.single_turn.policy.sampling.temperature == 0.0
    assert ev.single_turn.policy.sampling.max_tokens == recipe.rollout.single_turn.policy.sampling.max_tokens
    assert recipe.rollout.single_turn.policy.sampling.temperature == 1.0  # original untouched


def test_sft_examples_use_the_rollout_prompt_and_answer_format():
    from cluster.sft_data import sft_examples_for

    recipe = load_recipe(None, ('rollout.single_turn.prompt_template="Q: {question}"',
                                'rollout.single_turn.answer.pattern="<answer>(.*?)</answer>"'))
    [ex] = sft_examples_for(recipe, [Task("t", "what color?", "red", image=b"png")])["policy"]
    assert ex.messages == (("user", "Q: what color?"), ("assistant", "<answer>red</answer>"))
    assert ex.image == b"png"


def test_recipe_resolves_into_typed_roles_once():
    recipe = load_recipe(recipe_path("immo_dialogue"))
    resolved = recipe.resolve()
    assert [r.name for r in resolved.roles] == ["reasoner", "observer"]  # the kind's order
    observer = resolved.role("observer")
    assert observer.adapter == observer.rollout.adapter == "observer"
    assert observer.model == recipe.roles["observer"].model and observer.engine is recipe.roles["observer"].engine
    assert observer.learner is recipe.roles["observer"].learner and observer.trained
    assert observer.rollout is recipe.rollout.dialogue.observer
    assert resolved.adapters() == {"observer": "observer", "reasoner": "reasoner"}
    assert sorted(r.name for r in resolved.trained) == list(recipe.trainable_roles)
    frozen = build_recipe({"rollout": {"kind": "dialogue", "dialogue": {"observer": {"adapter": None}}},
                           "roles": {"reasoner": {"learner": {"role": "reasoner"}}, "observer": {"learner": None}}})
    assert frozen.resolve().adapters() == {"observer": None, "reasoner": "reasoner"}
    assert not frozen.resolve().role("observer").trained


def test_a_trained_role_without_an_adapter_fails_at_load_in_one_line():
    with pytest.raises(RecipeError) as err:
        build_recipe({"rollout": {"single_turn": {"policy": {"adapter": None}}}})
    [line] = [ln for ln in str(err.value).splitlines() if "adapter" in ln]
    assert line.strip() == ("(top level): Value error, rollout.single_turn.policy.adapter: role 'policy' has a "
                            "learner, so it needs an adapter name (e.g. adapter = 'policy')")


def test_rollout_sections_keep_the_recipe_shape():
    recipe = load_recipe(recipe_path("immo_dialogue"))
    dumped = recipe.model_dump(mode="json")["rollout"]
    assert dumped["kind"] == "dialogue" and "spec" not in dumped and dumped["dialogue"]["max_questions"] >= 0
    assert build_recipe(recipe.model_dump(mode="json")) == recipe
    # a section of another registered kind is validated, then dropped (the default recipe's
    # [rollout.single_turn] under --set rollout.kind=env); a bad one still fails at its path
    with pytest.raises(RecipeError, match=r"rollout\.single_turn\.max_tokens: Extra inputs"):
        load_recipe(None, ("rollout.kind=env", "rollout.single_turn.max_tokens=3"))
    with pytest.raises(AttributeError, match="rollout.single_turn: this rollout's kind is 'dialogue'"):
        recipe.rollout.single_turn


def test_rollout_errors_are_reported_together_at_their_recipe_paths():
    with pytest.raises(RecipeError) as err:
        load_recipe(None, ('rollout.single_turn.prompt_template="{x}"', "rollout.group_size=0", "rollout.foo=1"))
    lines = str(err.value).splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == ["rollout.group_size", "rollout.foo",
                                                         "rollout.single_turn.prompt_template"]
    assert "unknown placeholders ['x']" in lines[2]
