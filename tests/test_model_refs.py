"""Model references (cluster.models): builtin names, local directories and Hugging Face hub ids
(offline here), resolved on the driver before Ray starts and never built there."""

import json

import pytest

from cluster.config import load_recipe
from cluster.models import ModelNotFound, is_hub_id, resolve_model, resolve_models
from cluster.recipes import recipe_path

pytestmark = pytest.mark.unit


def built(models_dir, name):
    """A directory the offline builder finished (its manifest is written last)."""
    (models_dir / name).mkdir(parents=True)
    (models_dir / name / "manifest.json").write_text(json.dumps({"name": name}))
    return models_dir / name


def test_hub_ids_are_told_from_paths():
    assert is_hub_id("Qwen/Qwen2.5-VL-3B-Instruct") and is_hub_id("HuggingFaceTB/SmolLM2-135M@main")
    assert not any(is_hub_id(r) for r in ("./models/x", "/abs/dir", "~/m/x", "justaname", "a/b/c"))


def test_an_uncached_hub_id_offline_fails_naming_the_model(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=r"model 'Qwen/Qwen2.5-VL-3B-Instruct': not in the local Hugging Face "
                                                r"cache and the hub is offline"):
        resolve_model("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path / "models")


def test_a_cached_hub_id_resolves_to_its_snapshot_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-3B-Instruct"  # the hub cache layout
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path / "models") == snapshot


def test_a_reference_that_is_nothing_fails_plainly(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local path that exists, a Hugging Face hub id"):
        resolve_model("no_such_dir", tmp_path)
    assert resolve_model(str(tmp_path), tmp_path / "models") == tmp_path


def test_a_builtin_model_resolves_only_once_built_and_is_never_built_here(tmp_path):
    models = tmp_path / "models"
    (models / "tiny-qwen2-vl").mkdir(parents=True)  # half a build: no manifest yet
    with pytest.raises(ModelNotFound) as err:
        resolve_model("builtin:tiny-qwen2-vl", models)
    assert str(err.value) == (
        f"built-in model 'tiny-qwen2-vl' is not built in {models} (built there: none); build it with "
        f"`python -m deploy.offline_models build --out {models} --only tiny-qwen2-vl` (or `bash deploy/setup.sh`)")
    assert sorted(p.name for p in (models / "tiny-qwen2-vl").iterdir()) == []  # nothing was written
    built(models, "tiny-text-lm")
    assert "(built there: tiny-text-lm)" in str(pytest.raises(ModelNotFound, resolve_model, "builtin:x", models).value)
    assert resolve_model("builtin:tiny-text-lm", models) == models / "tiny-text-lm"


def test_resolve_models_gives_every_role_a_directory_or_names_the_recipe_field(tmp_path):
    recipe = load_recipe(recipe_path("immo_dialogue"))  # two roles, two base models
    models = tmp_path / "models"
    vlm = built(models, "tiny-qwen2-vl")
    with pytest.raises(ModelNotFound) as err:
        resolve_models(recipe, models)
    message = str(err.value)
    assert "\n" not in message and message.startswith("roles.reasoner.model: built-in model 'tiny-text-lm' is not built")
    assert f"python -m deploy.offline_models build --out {models} --only tiny-text-lm" in message
    lm = built(models, "tiny-text-lm")
    assert resolve_models(recipe, models) == {"observer": vlm, "reasoner": lm}


def test_duet_train_with_an_unbuilt_model_exits_2_in_one_line_before_ray(tmp_path, monkeypatch, capsys):
    import cluster.run
    from cluster.cli import main

    monkeypatch.setattr(cluster.run, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(cluster.run, "init_ray", lambda recipe: pytest.fail("duet train started Ray"))
    run_dir = tmp_path / "run"
    assert main(["train", "smoke", "--set", f"output.dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("duet: roles.policy.model: built-in model 'tiny-qwen2-vl' is not built")
    assert "python -m deploy.offline_models build" in err and not run_dir.exists()
