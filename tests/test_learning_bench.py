"""The learning benchmark's pure parts (deploy/learning): targets, the figures read back from a run's
metrics file, the table and its verdicts. Hand-computed values in the comments."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deploy.learning.report import build, markdown, row_doc, write
from deploy.learning.runner import command, eval_curves, read_figures
from deploy.learning.targets import TARGETS, Target, meets, targets_for

pytestmark = pytest.mark.unit

NUMBERLINE = Target("numberline_ppo", "numberline_ppo", "RL4VLM", "PPO", at_least=0.85, over_start=0.20)
CRYPTO = Target("cryptogram_grpo", "cryptogram_grpo", "r1_vlm", "GRPO", metric="reward/cryptogram_correctness",
                at_least=0.60, start_at_most=0.10)


def test_meets_every_clause():
    assert meets(NUMBERLINE, 0.60, 0.90) is True       # 0.90 >= 0.85 and +30 >= +20
    assert meets(NUMBERLINE, 0.70, 0.86) is False      # +16 < +20
    assert meets(NUMBERLINE, 0.50, 0.80) is False      # 0.80 < 0.85 although +30
    assert meets(NUMBERLINE, 0.65, 0.85) is True       # both exactly at the bound
    assert meets(CRYPTO, 0.10, 0.61) is True
    assert meets(CRYPTO, 0.12, 0.90) is False          # the start was above 0.10
    assert meets(NUMBERLINE, None, 0.9) is None


def test_table_rows_follow_the_issue():
    labels = [t.label for t in TARGETS]
    assert labels[:5] == ["numberline_ppo", "blackjack_ppo", "ezpoints_ppo", "cryptogram_grpo", "immo_dialogue"]
    assert NUMBERLINE.describe() == "success >= 0.85 and >= start + 20 points"
    assert [t.label for t in targets_for(["smoke"])] == ["smoke"]            # any recipe, without a target
    assert targets_for(["smoke"])[0].describe() == "-"
    assert len(targets_for(["immo_dialogue"])) == 3                          # the recipe and its two ablations


def test_command_is_duet_train_with_seed_and_run_dir(tmp_path):
    t = Target("x", "immo_dialogue", "-", "-", overrides=('train.role_order=["observer"]',))
    assert command(t, 1, tmp_path / "r", "duet") == [
        "duet", "train", "immo_dialogue", "--set", 'train.role_order=["observer"]', "--set", "seed=1",
        "--set", f"output.dir={tmp_path / 'r'}"]


def _metrics(path: Path) -> None:
    rows = [  # (step, scope, name, value) as cluster.progress.RunLog writes them
        (-1, "eval/base", "success", 0.0), (-1, "eval/base", "episodes", 4.0),
        (-1, "eval/before_rl", "success", 0.25), (-1, "eval/before_rl", "reward/exact_match", 0.25),
        (0, "rollout", "reward", 0.1), (1, "rollout", "reward", 0.3),
        (-1, "eval/step_000002", "success", 0.5), (2, "rollout", "reward", 0.4), (3, "rollout", "reward", 0.6),
        (-1, "eval/after_rl", "success", 0.75), (-1, "eval/after_rl", "reward/exact_match", 0.75)]
    cols = list(zip(*rows))
    pq.write_table(pa.table({"step": list(cols[0]), "scope": list(cols[1]), "name": list(cols[2]),
                             "value": list(cols[3]), "time_s": [0.0] * len(rows)}), path)


def test_figures_read_back_from_the_metrics_file(tmp_path):
    _metrics(tmp_path / "metrics.parquet")
    evals, curve = read_figures(tmp_path)  # no summary.json: the last step is the last training row + 1 = 4
    assert evals["before_rl"] == {"success": 0.25, "reward/exact_match": 0.25}
    assert curve["train/reward"] == [[0, 0.1], [1, 0.3], [2, 0.4], [3, 0.6]]
    assert curve["eval/success"] == [[0, 0.25], [2, 0.5], [4, 0.75]]   # base left out; before_rl at 0
    assert curve["eval/reward/exact_match"] == [[0, 0.25], [4, 0.75]]
    assert eval_curves({"base": {"success": 0.0}}, 5) == {}


def _run(seed: int, start: float, after: float, code: int = 0) -> dict:
    return {"label": "numberline_ppo", "recipe": "numberline_ppo", "seed": seed, "exit_code": code, "wall_s": 100.0,
            "evals": {"base": {"success": 0.0}, "before_rl": {"success": start}, "after_rl": {"success": after}},
            "curve": {"eval/success": [[0, start], [10, after]], "train/reward": [[0, 0.1], [9, 0.5]]},
            "run_dir": "", "error": "" if code == 0 else "duet: boom"}


def test_a_row_is_met_only_when_every_seed_meets_it(tmp_path):
    both = row_doc(NUMBERLINE, [_run(0, 0.6, 0.9), _run(1, 0.62, 0.88)])
    assert both["met"] is True and [s["gain_points"] for s in both["seeds"]] == [30.0, 26.0]
    one = row_doc(NUMBERLINE, [_run(0, 0.6, 0.9), _run(1, 0.7, 0.86)])    # seed 1: +16 points
    assert one["met"] is False and [s["met"] for s in one["seeds"]] == [True, False]
    failed = row_doc(NUMBERLINE, [_run(0, 0.6, 0.9, code=1)])
    assert failed["met"] is False
    assert row_doc(NUMBERLINE, [])["met"] is False                        # not run is not met


def test_markdown_and_files(tmp_path):
    machine = {"cpu_model": "cpu", "cores": 2, "ram_gib": 24.0, "commit": "abc", "wall_s": 200.0,
               "load_average": {"start": [1.0, 1.0, 1.0], "end": [2.0, 2.0, 2.0]}}
    doc = build([NUMBERLINE], [_run(0, 0.6, 0.9), _run(1, 0.7, 0.86)], ["blackjack_ppo"], machine)
    md = markdown(doc)
    assert "s0: 0.000 / 0.600 -> 0.900 (+30.0)<br>s1: 0.000 / 0.700 -> 0.860 (+16.0)" in md
    assert "| numberline_ppo |" in md and "**not met**" in md and "no recipe `blackjack_ppo` yet" in md
    paths = write(doc, tmp_path)
    assert [p.name for p in paths] == ["latest.json", "latest.md", "numberline_ppo.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
