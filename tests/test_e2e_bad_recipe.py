"""A bad recipe fails at load, through the real ``duet`` command line: exit status 2, a message on
stderr naming each bad field by its dotted path, and nothing started (no run directory, no Ray)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
DUET = [sys.executable, "-m", "cluster.cli"]


def duet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DUET, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["check", "train"])
def test_misspelt_field_exits_2_naming_it(command, tmp_path):
    out_dir = tmp_path / "run"
    t0 = time.monotonic()
    result = duet(command, "--set", "train.stpes=1", "--set", f"output.dir={out_dir}")
    elapsed = time.monotonic() - t0
    assert result.returncode == 2, result.stderr
    # pydantic's message for an unknown key of an extra="forbid" model, prefixed by its dotted path
    assert "  train.stpes: Extra inputs are not permitted" in result.stderr.splitlines()
    assert result.stderr.startswith("duet: ") and "default.toml: invalid recipe" in result.stderr
    assert result.stdout == ""
    assert not out_dir.exists()  # failed before the run directory was made
    assert elapsed < 60  # no Ray start, no model load (a real start takes > 10 s here)


def test_every_bad_field_is_named_at_once():
    result = duet("check", "--set", "data.tasks_per_step=0", "--set", "cluster.strategy=RANDOM",
                  "--set", "train.stpes=1")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    # three independent errors, one line each, in the recipe tree's field order
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == ["data.tasks_per_step", "train.stpes",
                                                               "cluster.strategy"]
    assert "  data.tasks_per_step: Input should be greater than or equal to 1" in lines
    assert "  cluster.strategy: Input should be 'PACK' or 'SPREAD'" in lines


def test_missing_recipe_file_exits_2(tmp_path):
    result = duet("train", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    # the message names the path and lists the shipped recipes (their set changes as recipes are added)
    assert result.stderr.startswith(f"duet: recipe '{tmp_path / 'nope.toml'}': no such file, and not a shipped recipe [")
    assert "'default'" in result.stderr


def test_good_override_is_applied_by_check():
    """The control: the same command with the right spelling succeeds and prints the value."""
    import json

    result = duet("check", "--set", "train.steps=1", "--set", "data.tasks_per_step=3")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["train"]["steps"] == 1 and resolved["data"]["tasks_per_step"] == 3
