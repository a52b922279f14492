"""The README's learning-benchmark command, run as documented (``bash deploy/learn.sh RECIPE --seeds
... --out DIR --runs DIR``) on the smallest recipe: one real ``duet train`` run, its figures read
back into latest.json / latest.md and a PNG, equal to the run's own summary."""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


def test_learn_sh_on_the_smoke_recipe(tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    proc = subprocess.run(["bash", "deploy/learn.sh", "smoke", "--seeds", "0", "--out", str(out), "--runs", str(runs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]  # smoke has no target: nothing judged, exit 0
    doc = json.loads((out / "latest.json").read_text())
    summary = json.loads((runs / "smoke_s0" / "summary.json").read_text())
    (row,) = doc["rows"]
    (seed,) = row["seeds"]
    assert row["label"] == "smoke" and row["met"] is None and seed["exit_code"] == 0
    assert seed["start"] == summary["eval"]["before_rl"]["success"]
    assert seed["after"] == summary["eval"]["after_rl"]["success"]
    assert seed["base"] == summary["eval"]["base"]["success"]
    (run,) = doc["runs"]
    assert [p[0] for p in run["curve"]["train/reward"]] == list(range(summary["steps"]))
    assert "| smoke |" in (out / "latest.md").read_text()
    assert (out / "smoke.png").read_bytes()[:4] == b"\x89PNG"
