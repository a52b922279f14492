"""Model references: builtin names, local directories and Hugging Face hub ids (offline here)."""

import pytest

from deploy.offline_models.builder import is_hub_id, resolve_model

pytestmark = pytest.mark.unit


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
