"""Nothing left behind (issue 14, item 6): a local run's Ray processes are gone after its driver
exits, however it exits. A real ``duet train smoke`` (local Ray, a vLLM rollout worker, a DeepSpeed
learner) is stopped once every actor of it is up and has worked (its first held-out evaluation, after
the first weight sync), by SIGKILL or by SIGTERM of the driver alone; every
process the run had started (Ray's services, DashboardAgent, RuntimeEnvAgent, the actors' workers,
the watchdog) is gone within 15 s, and no process names its Ray session any more. The test session's
own Ray cluster, running all along in this process, is untouched and still answers."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
TINY = ("train.steps=50", "data.eval_size=2", "train.checkpoint_every=0", "output.transcripts_per_step=0")
SESSION = re.compile(r"/\S*?/session_\d{4}-\d\d-\d\d_[\d-]+_\d+_\d+")
GRACE_S = 15.0


def start_run(tmp_path: Path, models_dir: Path) -> subprocess.Popen:
    sets = [x for kv in (*TINY, f"output.dir={tmp_path / 'run'}") for x in ("--set", kv)]
    env = {**os.environ, "DUET_MODELS": str(models_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", "smoke", *sets], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_evaluation(proc: subprocess.Popen, timeout_s: float = 300.0) -> list[str]:
    """Read the driver's stdout until its first evaluation line: by then every actor the run starts
    is up and has worked (the learner rank exported the first adapter, the weight-sync service
    proved it on the rollout worker, the worker generated the base evaluation)."""
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "the run ended before its first evaluation:\n" + "".join(lines) + proc.stderr.read()[-3000:]
        lines.append(line)
        if line.startswith("[eval] base"):
            return lines
    pytest.fail("no evaluation line in time:\n" + "".join(lines))


def tree(pid: int) -> dict[int, float]:
    """pid -> start time of ``pid``'s descendants (all the processes the run started)."""
    return {p.pid: p.create_time() for p in psutil.Process(pid).children(recursive=True)}


def session_of(processes: dict[int, float]) -> str:
    for pid in processes:
        match = SESSION.search(" ".join(psutil.Process(pid).cmdline()))
        if match:
            return match.group(0)
    pytest.fail("no Ray session directory on any command line of the run")


def still_running(processes: dict[int, float]) -> list[str]:
    left = []
    for pid, started in processes.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {p.name()}")
        except psutil.NoSuchProcess:
            continue
    return left


def naming(session_dir: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        if p.info["cmdline"] and session_dir in " ".join(p.info["cmdline"]):
            found.append(f"{p.pid} {p.info['name']}")
    return found


def gone_within(processes: dict[int, float], session_dir: str, grace_s: float) -> tuple[float, list[str]]:
    """Seconds until none of ``processes`` runs and no process names ``session_dir`` (or what is left)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < grace_s:
        left = still_running(processes) + naming(session_dir)
        if not left:
            return time.monotonic() - t0, []
        time.sleep(0.25)
    return grace_s, still_running(processes) + naming(session_dir)


SERVICES = ("raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent")
"""Processes of a Ray session that live as long as it does (its workers come and go: Ray stops idle
ones by itself, so they are not the measure of a session left alone)."""


@pytest.fixture
def session_cluster(ray_session):
    """The service processes of the test session's own Ray (children of this process), before the run."""
    mine = {pid: t for pid, t in tree(os.getpid()).items() if psutil.Process(pid).name() in SERVICES}
    assert {psutil.Process(pid).name() for pid in mine} >= {"raylet", "gcs_server"}, mine
    return ray_session, mine


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_the_run_leaves_no_process_behind(sig, tmp_path, models_dir, session_cluster):
    before_run = {pid for pid in session_cluster[1] if psutil.pid_exists(pid)}
    proc = start_run(tmp_path, models_dir)
    try:
        wait_for_first_evaluation(proc)
        started = tree(proc.pid)
        session_dir = session_of(started)
        names = {psutil.Process(pid).name() for pid in started}
        assert {"raylet", "gcs_server", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
        os.kill(proc.pid, sig)
        code = proc.wait(timeout=120)
        elapsed, left = gone_within(started, session_dir, GRACE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert left == [], f"still running {GRACE_S:.0f} s after the driver exited: {left}"
    print(f"{sig.name}: {len(started)} processes of the run, all gone {elapsed:.1f} s after the driver exited")
    if sig == signal.SIGTERM:  # a clean unwind: one line, 128 + 15
        assert code == 143, proc.stderr.read()[-3000:]
        assert proc.stderr.read().strip().splitlines()[-1] == f"duet: stopped by SIGTERM (run directory {tmp_path / 'run'})"
    else:
        assert code == -signal.SIGKILL
    assert {pid for pid in before_run if psutil.pid_exists(pid)} == before_run  # the session's Ray services: all alive
    assert session_cluster[0].get(session_cluster[0].remote(lambda: 41 + 1).remote()) == 42
