"""deploy/setup_progress.sh's ``timed``: under a real pseudo-terminal an elapsed-time line for a long
set-up step; through a pipe the step's own output only (set-up's non-terminal output unchanged);
the step's exit status either way."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from test_console import plain, run_in_pty

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ('source deploy/setup_progress.sh; timed "a nap" bash -c "sleep 2.5; echo napped"; echo rc=$?; '
          'timed "a failure" false; echo rc=$?')


def test_pipe_output_is_the_commands_own():
    out = subprocess.run(["bash", "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout == "napped\nrc=0\nrc=1\n"
    assert out.stderr == ""


def test_terminal_shows_elapsed_seconds_then_done():
    rc, raw = run_in_pty(["bash", "-c", SCRIPT], timeout=60)
    text = plain(raw)
    assert rc == 0, text
    assert "[setup] a nap: 1s" in text and "[setup] a nap: 2s" in text  # ticking once a second
    assert re.search(r"\[setup\] a nap: done in [23]s\n", text.replace("\r\n", "\n")), text
    assert "napped" in text and "rc=0" in text
    assert re.search(r"\[setup\] a failure: failed \(exit 1\) in 0s", text) and "rc=1" in text


MODELS_BUILD = ["-m", "deploy.offline_models", "build", "--only", "tiny-text-lm", "--out"]
MODEL_LINE = re.compile(r"^tiny-text-lm +[0-9.]+M params  (built |reused) +[0-9.]+s  \S+$")


def test_models_build_through_a_pipe_prints_one_line_per_model(models_dir):
    import sys

    out = subprocess.run([sys.executable, *MODELS_BUILD, str(models_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 2, out.stdout + out.stderr
    assert MODEL_LINE.match(lines[0]) and lines[1].startswith(f"models ready in {models_dir} (")
    assert "building" not in out.stdout + out.stderr


def test_models_build_on_a_terminal_shows_the_model_being_built(models_dir):
    import sys

    rc, raw = run_in_pty([sys.executable, *MODELS_BUILD, str(models_dir)], timeout=300)
    lines = [ln for ln in plain(raw).splitlines() if ln.strip()]
    assert rc == 0, lines
    assert re.search(r"building tiny-text-lm \d:\d\d:\d\d", lines[0]), lines  # the spinner line
    assert any(MODEL_LINE.match(ln) for ln in lines) and lines[-1].startswith(f"models ready in {models_dir} (")
