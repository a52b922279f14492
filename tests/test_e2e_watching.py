"""Watching a run, end to end: ``duet train smoke`` as a CLI process on its own local Ray (the two
runs of :mod:`observed_run`, shared with tests/test_e2e_report.py and tests/test_e2e_local_dashboard.py).

1. Through a pipe (a job log, CI) with every tracker selected
   (``--set output.loggers=["console","tensorboard","wandb","mlflow"]``): each tracker's files,
   read back with that library's own reader, equal ``metrics.parquet``; stdout has the step lines
   as before and no progress bar.
2. Under a real pseudo-terminal, with a 3-step SFT warm start (the dashboard's run: 3 async RL
   steps, only the first trained, the later batches all stale): the SFT and RL-step bars are drawn
   (step count / total, an ETA) and the same lines are printed above them.

Tracker steps of the smoke run's syncs and evaluations, hand-worked from the rule in
``cluster.loggers`` (2 RL steps): start-up sync v1, "base" and "before_rl" at 0; step 0's sync v2
at 0, step 1's v3 at 1; "after_rl" at 2.
"""

from __future__ import annotations

import re

import pytest

from observed_run import piped_run, terminal_run
from test_console import plain
from test_loggers import check_round_trips, expected_points

pytestmark = pytest.mark.e2e

BLOCKS = [("sync/policy", 0), ("eval/base", 0), ("eval/before_rl", 0), ("sync/policy", 0),
          ("sync/policy", 1), ("eval/after_rl", 2)]
STEP_LINE = re.compile(r"^step +(\d+) \| reward [+-]\d\.\d{3} \| success \d\.\d\d \| policy: loss [+-]\d\.\d{4} "
                       r"ent \d\.\d{3} kl \d\.\d{4} \| sync policy v(\d+) \d+\.\d\ds 1 proven \| \d+\.\ds$")


@pytest.fixture(scope="module")
def piped(tmp_path_factory, models_dir):
    run_dir, out = piped_run(tmp_path_factory, models_dir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run_dir, out


def test_every_tracker_round_trips_a_cli_run(piped):
    run_dir, _ = piped
    expected = expected_points(run_dir, BLOCKS)
    assert [s for s, _ in expected["rollout/reward"]] == [0, 1]
    assert [v for _, v in expected["sync/policy/version"]] == [1.0, 2.0, 3.0]
    check_round_trips(run_dir, expected, "smoke")


def test_piped_output_keeps_the_step_lines_and_draws_no_bar(piped):
    _, out = piped
    steps = [STEP_LINE.match(ln) for ln in out.stdout.splitlines() if ln.startswith("step ")]
    assert [(m.group(1), m.group(2)) for m in steps] == [("1", "2"), ("2", "3")]  # every step line matches
    assert [ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("[eval] ")] == [
        "base", "before_rl", "after_rl"]
    assert "\x1b[" not in out.stdout and "RL steps" not in out.stdout and "ETA" not in out.stdout


def test_terminal_run_draws_sft_and_rl_bars_with_eta(tmp_path_factory, models_dir):
    run = terminal_run(tmp_path_factory, models_dir)
    text = plain(run.raw)
    assert run.rc == 0, text[-4000:]
    lines = text.splitlines()
    # a line printed under a live bar follows the bar's last frame once escape codes are stripped;
    # step 1 trained (v1 at start, v2 after SFT, v3 after step 1): its line has every figure
    assert "[sft] policy step    3/3 loss " in text, text[-4000:]
    under_bar = [STEP_LINE.match(ln[ln.find("step "):]) for ln in lines if "step    1 | reward" in ln]
    assert any(m and m.group(2) == "3" for m in under_bar), text[-4000:]
    assert re.search(r"SFT policy .*\b3/3\b", text) and re.search(r"RL steps .*\b3/3\b", text)
    # after RL step 1 of 3 the pace is known: an ETA in H:MM:SS
    assert re.search(r"RL steps .*\b1/3 \d:\d\d:\d\d ETA \d:\d\d:\d\d", text), text[-4000:]
    assert (run.run_dir / "summary.json").is_file()
