"""Test helper (not a test module): the two ``duet train smoke`` CLI processes (each on its own local
Ray, real vLLM worker and DeepSpeed learner) that the observability end-to-end tests share, each
started once per pytest process, whichever test asks first:

* :func:`piped_run` -- stdout and stderr through pipes (a job log, CI) with every tracker selected and
  two transcripts a step: tests/test_e2e_report.py (the report drawn at its end, ``duet report`` on
  it) and tests/test_e2e_watching.py (the trackers' files; the step lines, no bar).
* :func:`terminal_run` -- on a real pseudo-terminal, the ``smoke`` recipe made to emit every metric
  (a KL term; async mode with ``train.max_staleness = 0``, so that episodes are dropped as stale)
  with the Ray dashboard on and a 3-step SFT warm start: tests/test_e2e_local_dashboard.py (its
  Prometheus endpoint, polled while the run goes on) and tests/test_e2e_watching.py (the SFT and
  RL-step bars).

Two processes, not one: a process has one stdout, and the piped test checks that no bar is drawn
where the terminal test checks that the bars are; and the dashboard's run trains only its first
step (the later batches are all stale), where the piped step lines are those of steps that trained.
"""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from prometheus_poll import Poller
from test_console import open_pty, plain, pty_chunks

ROOT = Path(__file__).resolve().parents[1]
TRACKERS = 'output.loggers=["console","tensorboard","wandb","mlflow"]'
PIPED_SETS = (TRACKERS, "output.transcripts_per_step=2")
TERMINAL_SETS = ("train.steps=3", "train.mode=async", "train.max_staleness=0",
                 "roles.policy.learner.algo.kl_coef=0.01", "cluster.dashboard=true", "output.transcripts_per_step=0",
                 "train.sft.steps=3", "train.sft.batch_size=4")
URL_LINE = "[duet] Ray dashboard: "
TIMEOUT_S = 900
T = TypeVar("T")
_RUNS: dict[str, Any] = {}


def train_argv(run_dir: Path, *sets: str) -> list[str]:
    """``duet train smoke --set output.dir=RUN_DIR --set ...`` as an argv for this interpreter."""
    args = [x for kv in (f"output.dir={run_dir}", *sets) for x in ("--set", kv)]
    return [sys.executable, "-m", "cluster.cli", "train", "smoke", *args]


def _once(key: str, make: Callable[[], T]) -> T:
    """``make()`` the first time ``key`` is asked for in this process; its result (or its error) after."""
    if key not in _RUNS:
        try:
            _RUNS[key] = make()
        except Exception as err:  # a run that raised raises again for each test that shares it
            _RUNS[key] = err
    if isinstance(_RUNS[key], Exception):
        raise _RUNS[key]
    return _RUNS[key]


def piped_run(tmp_path_factory, models_dir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """(run directory, the finished process with its stdout and stderr) of the piped run."""
    def make():
        run_dir = tmp_path_factory.mktemp("observed_piped") / "smoke"
        out = subprocess.run(train_argv(run_dir, *PIPED_SETS), cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "DUET_MODELS": str(models_dir)}, timeout=TIMEOUT_S)
        return run_dir, out
    return _once("piped", make)


@dataclass
class TerminalRun:
    """The finished terminal run: what it wrote and what was seen of its dashboard while it ran."""

    run_dir: Path
    """Its ``output.dir``."""
    rc: int = 0
    """Its exit status (-9: killed at the time limit)."""
    raw: str = ""
    """Everything it wrote on the terminal, escape codes kept."""
    lines: list[str] | None = None
    """Its complete lines with escape codes and carriage returns stripped, in order."""
    urls: tuple[str, str] | None = None
    """(dashboard URL, Prometheus metrics URL) from its dashboard line; None: no such line."""
    poller: Poller | None = None
    """The poller of the metrics URL, started at the dashboard line and stopped at the end."""
    dashboard_status: int = 0
    """The HTTP status the dashboard URL answered with when its line came (0: no answer)."""

    def see(self, line: str) -> None:
        """One complete line (escape codes stripped): at the dashboard line, poll its metrics URL."""
        self.lines.append(line)
        at = line.find(URL_LINE)
        if at >= 0 and self.poller is None:
            dash, _, metrics = line[at + len(URL_LINE):].strip().partition("  Prometheus metrics: ")
            self.urls = (dash, metrics)
            self.poller = Poller(metrics, period_s=0.5, token_file=Path.home() / ".ray" / "auth_token")
            self.poller.start()
            self.dashboard_status = http_status(dash)


def http_status(url: str) -> int:
    """The HTTP status ``url`` answers with (an error status included); 0 when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _read_terminal(master: int, proc: subprocess.Popen, run: TerminalRun, deadline: float) -> None:
    """Read the terminal until the process has closed it (or exited and gone quiet), line by line."""
    decoder, chunks, pending = codecs.getincrementaldecoder("utf-8")(errors="replace"), [], ""
    for data in pty_chunks(master, proc, deadline):
        text = decoder.decode(data)
        chunks.append(text)
        *done, pending = (pending + text).split("\n")
        for line in done:
            run.see(plain(line))
    if pending:
        run.see(plain(pending))
    run.raw = "".join(chunks)


def _run_on_terminal(run_dir: Path, models_dir: Path) -> TerminalRun:
    """The terminal run on a new pseudo-terminal of 160 columns (test_console.open_pty)."""
    master, proc = open_pty(train_argv(run_dir, *TERMINAL_SETS), {"DUET_MODELS": str(models_dir)})
    run = TerminalRun(run_dir, lines=[])
    try:
        _read_terminal(master, proc, run, time.monotonic() + TIMEOUT_S)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        run.rc = proc.wait()
        if run.poller is not None:
            run.poller.stop()
    return run


def terminal_run(tmp_path_factory, models_dir: Path) -> TerminalRun:
    """The finished terminal run (see the module docstring)."""
    return _once("terminal", lambda: _run_on_terminal(tmp_path_factory.mktemp("observed_tty") / "smoke", models_dir))
