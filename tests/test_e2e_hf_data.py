"""A user's own local data set trains through ``duet train``: JSONL files with image paths (the form
TRL and verl users bring), read by the "hf" source with a column mapping given as TOML inline
tables on the command line, one RL step of the ``smoke`` recipe on its own local Ray.

Hand-worked expectations: train.jsonl has 9 rows, one naming an image file that does not exist
(skipped: 8 training tasks); eval.jsonl has 5 rows, one with a broken image (skipped: 4 held out =
the smoke recipe's eval_size). One step of tasks_per_step 4 x group_size 2 = 8 episodes produced
and trained; each evaluation (base, before_rl, after_rl) is one greedy episode per held-out task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "black", "gray", "yellow", "teal", "brown"]


def write_user_dataset(root: Path) -> None:
    """easy-VQA colour questions re-shaped as a user's files: PNGs in pics/, JSONL with paths."""
    from rollout.tasks.easy_vqa import load_easy_vqa

    (root / "pics").mkdir(parents=True)
    splits = {"train": load_easy_vqa("train", limit=200, answers=COLOURS).tasks[:8],
              "eval": load_easy_vqa("test", limit=200, answers=COLOURS).tasks[:4]}
    for split, tasks in splits.items():
        rows = []
        for k, task in enumerate(tasks):
            (root / "pics" / f"{split}{k}.png").write_bytes(task.image)
            rows.append({"uid": f"mine-{split}-{k}", "problem": task.question, "solution": task.answer,
                         "picture": f"pics/{split}{k}.png"})
        bad_image = "pics/absent.png" if split == "train" else "pics/broken.png"
        rows.insert(2, {"uid": f"mine-{split}-bad", "problem": "What colour?", "solution": "red", "picture": bad_image})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "pics" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")


def source_table(path: Path) -> str:
    return (f'{{path = "{path}", cache_dir = "{path.parent / "hf-cache"}", '
            'columns = {task_id = "uid", question = "problem", answer = "solution", image = "picture"}}')


@pytest.fixture(scope="module")
def run(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("hf_data")
    write_user_dataset(root / "data")
    run_dir = root / "run"
    sets = ['data.source="hf"', f"data.train={source_table(root / 'data' / 'train.jsonl')}",
            f"data.eval={source_table(root / 'data' / 'eval.jsonl')}", "train.steps=1", f"output.dir={run_dir}", "output.report=false"]
    env = {**os.environ, "DUET_MODELS": str(models_dir), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "smoke",
                             *[x for s in sets for x in ("--set", s)]],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result.stdout


def test_malformed_rows_reported_and_counts_loaded(run):
    _, out = run
    lines = out.splitlines()
    assert "[duet] data/train: skipped 1 malformed rows: {'image file not found': 1}" in lines
    assert "[duet] data/eval: skipped 1 malformed rows: {'unreadable image': 1}" in lines
    assert any(ln.startswith("[duet] run smoke: 8 training items, 4 held out;") for ln in lines)


def test_summary_episode_counts(run):
    run_dir, _ = run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True and summary["steps"] == 1
    assert summary["counters"]["produced"] == 8 and summary["counters"]["trained"] == 8
    assert {label: e["episodes"] for label, e in summary["eval"].items()} == {
        "base": 4.0, "before_rl": 4.0, "after_rl": 4.0}


def test_transcripts_show_the_users_tasks(run):
    run_dir, _ = run
    text = (run_dir / "transcripts" / "eval_after_rl.txt").read_text()
    assert "[task] mine-eval-0: " in text
    recipe = json.loads((run_dir / "recipe.json").read_text())
    assert recipe["data"]["source"] == "hf"
    assert recipe["data"]["train"]["columns"]["question"] == "problem"
