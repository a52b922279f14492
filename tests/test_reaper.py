"""The watchdog of a local run's Ray (:mod:`cluster.reaper`) on stand-in processes, without Ray: once
the driver is SIGKILLed it stops exactly the session's processes -- a root naming the session
directory, that root's child (whose command line does not), a "raylet" root and a process whose
``RAY_RAYLET_PID`` names it (a worker whose raylet died first) -- and leaves alone a process of a
sibling session whose directory name merely starts with this one's."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster import reaper

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SLEEP = "import time; time.sleep(120)"

DRIVER = """
import os, subprocess, sys, time
from cluster import reaper
session, other, raylet_exe = sys.argv[1:4]
py = sys.executable
root = subprocess.Popen(["bash", "-c", "sleep 120 & wait", f"--session-dir={session}"])
raylet = subprocess.Popen([raylet_exe, "-c", "import time; time.sleep(120)", f"--store={session}/sockets/x"])
worker = subprocess.Popen([py, "-c", "import time; time.sleep(120)"], env={**os.environ, "RAY_RAYLET_PID": str(raylet.pid)})
sibling = subprocess.Popen([py, "-c", "import time; time.sleep(120)", f"--session-dir={other}"])
time.sleep(0.5)
watchdog = reaper.watch(os.getpid(), session)
time.sleep(2.5)  # one record at least
print(root.pid, raylet.pid, worker.pid, sibling.pid, watchdog.pid, flush=True)
time.sleep(120)
"""


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_watchdog_stops_the_session_and_only_it(tmp_path):
    session = tmp_path / "ray" / "session_2026-12-01_10-00-00_000001_42"
    other = Path(f"{session}7")  # a sibling whose name starts with this session's
    session.mkdir(parents=True)
    raylet_exe = tmp_path / "raylet"
    raylet_exe.symlink_to(sys.executable)  # a process named "raylet"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(session), str(other), str(raylet_exe)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in driver.stdout.readline().split()]
    root, raylet, worker, sibling, watchdog = pids
    (child,) = psutil.Process(root).children()  # bash's sleep: no session on its command line
    try:
        assert all(running(p) for p in (*pids, child.pid))
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(running(p) for p in (root, child.pid, raylet, worker, watchdog)):
            time.sleep(0.2)
        assert [p for p in (root, child.pid, raylet, worker, watchdog) if running(p)] == []
        assert running(sibling)  # another session: untouched
        log = (session / "logs" / "duet_reaper.log").read_text()
        assert f"stopped 4 processes of {session} (4 by SIGTERM, 0 by SIGKILL)" in log
    finally:
        for p in (*pids, child.pid):
            if running(p):
                os.kill(p, signal.SIGKILL)


def test_a_reused_raylet_pid_does_not_claim_another_sessions_workers():
    # a "raylet" P and a worker naming it in RAY_RAYLET_PID, started after P: recorded with P's own
    # start time the worker is the session's; recorded with an earlier start time (the session's
    # raylet died and P took its pid later) the worker belongs to P's session, not this one
    raylet = subprocess.Popen([sys.executable, "-c", SLEEP])
    time.sleep(0.05)
    worker = subprocess.Popen([sys.executable, "-c", SLEEP], env={**os.environ, "RAY_RAYLET_PID": str(raylet.pid)})
    try:
        time.sleep(0.3)
        started = psutil.Process(raylet.pid).create_time()
        assert worker.pid in reaper.served_by({raylet.pid: started})
        assert worker.pid not in reaper.served_by({raylet.pid: started - 100.0})
    finally:
        for p in (worker, raylet):
            p.kill()
            p.wait()
