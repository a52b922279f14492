"""The run's display (:mod:`cluster.console`): the ETA arithmetic by hand, and a real pseudo-terminal
(python's ``pty``): under one a progress bar with the step count and an ETA is drawn beneath the
lines; through a pipe the output is the lines and nothing else, byte for byte."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Iterator

import pytest

from cluster.console import Display, eta_seconds, format_seconds

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def open_pty(argv: list[str], env: dict | None = None) -> tuple[int, subprocess.Popen]:
    """``argv`` started with stdin, stdout and stderr on a new pseudo-terminal (160 columns,
    ``TERM=xterm-256color``, ``env`` added to the environment); returns (the terminal's master fd,
    the process)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env={**os.environ, "TERM": "xterm-256color", **(env or {})}, close_fds=True)
    os.close(slave)
    return master, proc


def pty_chunks(master: int, proc: subprocess.Popen, deadline: float) -> Iterator[bytes]:
    """What ``proc`` writes to the terminal, chunk by chunk, until it closes the terminal (or has
    exited and gone quiet) or ``deadline`` (``time.monotonic()``) passes."""
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 0.5)[0]:
            if proc.poll() is not None:
                return
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return
        if not data:
            return
        yield data


def run_in_pty(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Run ``argv`` on a new pseudo-terminal (:func:`open_pty`); returns (exit status, everything it
    wrote, decoded)."""
    master, proc = open_pty(argv, env)
    try:
        raw = b"".join(pty_chunks(master, proc, time.monotonic() + timeout))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), raw.decode(errors="replace")


def plain(text: str) -> str:
    """Terminal output without escape sequences and carriage returns."""
    return ANSI.sub("", text)


DEMO = """
import time
from cluster.console import Display
d = Display()
d.begin("RL steps", 3)
for i in range(3):
    time.sleep(0.4)
    d.line(f"step {i + 1:>4} | reward +0.500")
    d.advance(i + 1, "reward +0.500")
d.end()
"""


def test_format_seconds_and_eta_by_hand():
    assert format_seconds(3725.2) == "1:02:05"
    assert format_seconds(59.6) == "0:01:00"
    assert eta_seconds(10.0, 2, 3) == 15.0  # 5 s a step, 3 to go
    assert eta_seconds(4.0, 0, 3) is None


def test_not_a_terminal_prints_only_the_lines():
    out = subprocess.run([sys.executable, "-c", DEMO], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "".join(f"step {i:>4} | reward +0.500\n" for i in (1, 2, 3))
    assert out.stderr == ""


def test_terminal_draws_a_bar_with_step_count_and_eta():
    rc, raw = run_in_pty([sys.executable, "-c", DEMO], timeout=60)
    text = plain(raw)
    assert rc == 0, text
    for i in (1, 2, 3):
        assert f"step {i:>4} | reward +0.500" in text  # the lines, as without a terminal
    assert re.search(r"RL steps .*\b3/3\b", text), text
    # after step 1 of 3 at ~0.4 s a step: ETA 0:00:01 (0.8 s rounded); after step 2: 0:00:00
    etas = re.findall(r"\b([123])/3 .*?ETA (\d:\d\d:\d\d)", text)
    assert ("1", "0:00:01") in etas, etas
    assert "\x1b[" in raw  # it really drew on a terminal


def test_disabled_display_prints_nothing(capsys):
    d = Display(enabled=False)
    d.begin("RL steps", 3)
    d.line("step 1")
    d.advance(1)
    d.end()
    assert capsys.readouterr().out == ""
