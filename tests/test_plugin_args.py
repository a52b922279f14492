"""Task source and reward arguments checked at recipe load (``cluster.plugin_args``): a misspelt
name fails in ``build_recipe`` / ``duet check`` with the dotted field, before anything starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cluster.config import RecipeError, build_recipe, load_recipe
from cluster.plugin_args import accepted, plugin_problems
from cluster.recipes import DEFAULT_RECIPE

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "cluster" / "recipes").glob("*.toml"))


def error_lines(tree: dict) -> list[str]:
    with pytest.raises(RecipeError) as err:
        build_recipe(tree)
    return str(err.value).splitlines()[1:]


def test_misspelt_source_argument_names_the_field():
    tree = {"data": {"source": "easy_vqa", "train": {"split": "train", "limt": 3}}}
    assert error_lines(tree) == [
        "  data.train.limt: not an argument of task source 'easy_vqa' (known: answers, check_images, limit, split)"
    ]


def test_unknown_source_name():
    lines = error_lines({"data": {"source": "easy_vq"}})
    assert lines == ["  data.source: unknown task source 'easy_vq' (known: cryptogram, easy_vqa, hf, parquet, "
                     "scienceqa, snli_ve, visual_genome)"]


def test_cryptogram_takes_its_config_fields_as_keywords():
    ok = {"data": {"source": "cryptogram", "train": {"n": 4, "max_words": 1}, "eval": {"n": 2, "start": 9}}}
    assert build_recipe(ok).data.train == {"n": 4, "max_words": 1}
    lines = error_lines({"data": {"source": "cryptogram", "train": {"n": 4, "max_wrods": 1}}})
    assert len(lines) == 1 and lines[0].startswith("  data.train.max_wrods: not an argument of task source 'cryptogram' (known: ")
    assert "max_words" in lines[0] and "image_size" in lines[0] and " n," in lines[0]


def test_required_source_argument_of_a_written_table():
    # data.eval is written without n; data.train is left at its default and not required here
    assert error_lines({"data": {"source": "cryptogram", "eval": {"seed": 2}}}) == [
        "  data.eval.n: required argument of task source 'cryptogram' is missing"
    ]


def test_hf_arguments_checked_by_their_model():
    tree = {"data": {"source": "hf",
                     "train": {"path": "d.jsonl", "limt": 2, "columns": {"questoin": "problem"}},
                     "eval": {"path": "e.jsonl", "limit": -1, "format": "xml"}}}
    assert error_lines(tree) == [
        "  data.train.limt: not an argument of task source 'hf' (known: path, format, split, columns, limit, "
        "images_dir, name, cache_dir)",
        "  data.train.columns.questoin: Extra inputs are not permitted",
        "  data.eval.format: Input should be 'parquet', 'json', 'csv', 'imagefolder' or 'arrow'",
        "  data.eval.limit: Input should be greater than or equal to 0",
    ]
    assert error_lines({"data": {"source": "hf", "train": {"columns": {"question": "q"}}}}) == [
        "  data.train.path: required argument of task source 'hf' is missing"
    ]


def test_reward_name_and_kwargs():
    tree = {"rewards": [{"name": "exact_mach"}, {"name": "format", "kwargs": {"pattern": "x", "wieght": 1}}]}
    lines = error_lines(tree)
    assert lines[0].startswith("  rewards.0.name: unknown reward 'exact_mach' (known: cryptogram_correctness, ")
    assert "exact_match" in lines[0]
    assert lines[1] == ("  rewards.1.kwargs.wieght: not an argument of reward 'format' "
                        "(known: flags, full_match, max_chars, name, pattern)")
    assert len(lines) == 2


def test_dotted_path_reward_imported_and_its_signature_checked(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_for_check.py").write_text(textwrap.dedent("""
        from rewards.base import leaf

        class Scaled:
            name = "scaled"
            def __init__(self, scale: float, offset: float = 0.0):
                self.scale, self.offset = scale, offset
            def __call__(self, task, episode):
                return leaf(self.name, self.scale + self.offset)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    good = build_recipe({"rewards": [{"name": "my_rewards_for_check:Scaled", "kwargs": {"scale": 2.0}}]})
    assert good.rewards[0].kwargs == {"scale": 2.0}
    assert error_lines({"rewards": [{"name": "my_rewards_for_check:Scaled", "kwargs": {"scal": 2.0}}]}) == [
        "  rewards.0.kwargs.scal: not an argument of reward 'my_rewards_for_check:Scaled' (known: offset, scale)",
        "  rewards.0.kwargs.scale: required argument of reward 'my_rewards_for_check:Scaled' is missing",
    ]
    assert error_lines({"rewards": [{"name": "no_such_module_xyz:Reward"}]}) == [
        "  rewards.0.name: cannot load reward 'no_such_module_xyz:Reward': reward spec: cannot import module "
        "'no_such_module_xyz' (No module named 'no_such_module_xyz')"
    ]
    lines = error_lines({"rewards": [{"name": "my_rewards_for_check:Scald"}]})
    assert lines == ["  rewards.0.name: cannot load reward 'my_rewards_for_check:Scald': reward spec: module "
                     "'my_rewards_for_check' has no attribute 'Scald'"]


def test_var_keyword_factory_accepts_anything():
    def factory(a, **rest):
        return a

    takes = accepted(factory)
    assert takes.open and takes.names == frozenset({"a"}) and takes.required == frozenset({"a"})


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_have_no_plugin_problems(name):
    recipe = load_recipe(ROOT / "cluster" / "recipes" / f"{name}.toml")
    assert plugin_problems(recipe) == []


def test_duet_check_refuses_a_misspelt_source_argument():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "check", "default", "--set", "data.train.limt=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"duet: {DEFAULT_RECIPE}: invalid recipe",
        "  data.train.limt: not an argument of task source 'easy_vqa' (known: answers, check_images, limit, split)",
    ]
