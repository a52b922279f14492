"""The watchdog of a local run's Ray: once the driver process is gone, however it went (a normal
end, an exception, SIGTERM, SIGINT, SIGKILL), every process of the Ray session it started is stopped:
SIGTERM, then SIGKILL after a grace period.

``ray.init(address="local")`` starts the session's services as children of the driver (gcs_server,
raylet, the dashboard, the monitors), each naming the session directory on its command line; the
raylet starts the agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) and the workers, whose
command lines Ray rewrites. When the driver is killed, Ray's own fate sharing ends its direct
children but not the raylet's, which are reparented to init (issue 14).

Which processes are the session's: the *roots* (a command line naming the session directory as a
whole path component), every descendant of a root, every process recorded as one while the driver
lived (polled every 2 s, by pid and start time, so a reused pid never matches), and every process
whose environment names one of the session's raylets as its own (``RAY_RAYLET_PID``: a worker
started after the last poll, whose raylet died with the driver; one started after a newer process
took that raylet's pid is not). Nothing else: another Ray on the
machine has its own session directory, raylets and process tree.

Started by :func:`watch` as ``python -m cluster.reaper DRIVER_PID SESSION_DIR`` in a session of its
own (a Ctrl-C or a process-group kill of the run does not reach it), with a pipe on stdin that only
the driver holds: end of file, or a new parent pid, means the driver is gone. :func:`release` closes
the pipe on purpose after ``ray.shutdown()``: the watchdog then sweeps any straggler and exits.
Imports nothing of the project (psutil ships with Ray). What it stopped goes to
``SESSION_DIR/logs/duet_reaper.log``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

__all__ = ["watch", "release", "scan", "sweep"]

GRACE_S = 5.0
"""Seconds between SIGTERM and SIGKILL."""
POLL_S = 2.0
"""Seconds between two records of the session's processes while the driver lives."""


def watch(driver_pid: int, session_dir: str) -> subprocess.Popen:
    """Start the watchdog of Ray session ``session_dir`` for the driver ``driver_pid`` (this
    process); keep the returned handle until :func:`release`."""
    log = Path(session_dir, "logs")
    log.mkdir(parents=True, exist_ok=True)
    with open(log / "duet_reaper.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "cluster.reaper", str(driver_pid), session_dir],
                                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[1], start_new_session=True)


def release(watchdog: subprocess.Popen) -> None:
    """Tell the watchdog the driver is done with its Ray (it sweeps what is left and exits)."""
    if watchdog.stdin is not None and not watchdog.stdin.closed:
        watchdog.stdin.close()


def session_pattern(session_dir: str) -> re.Pattern:
    """Matches ``session_dir`` itself in a command-line argument (not a longer sibling's name)."""
    return re.compile(re.escape(session_dir.rstrip("/")) + r"(?=$|[/\s'\",;:])")


def scan(session_dir: str, driver_pid: int) -> tuple[dict[int, float], dict[int, float]]:
    """(pid -> start time of every live process of the session: its roots and their descendants,
    pid -> start time of its raylets). The driver is never a root, whatever its command line says."""
    pattern, found, raylets = session_pattern(session_dir), {}, {}
    for p in psutil.process_iter(["cmdline", "create_time", "name"]):
        if p.pid != driver_pid and p.info["cmdline"] and any(pattern.search(arg) for arg in p.info["cmdline"]):
            found[p.pid] = p.info["create_time"]
            raylets |= {p.pid: p.info["create_time"]} if p.info["name"] == "raylet" else {}
            for child in safe_children(p):
                found[child.pid] = create_time(child)
    found.pop(os.getpid(), None)
    return {pid: t for pid, t in found.items() if t is not None}, raylets


def served_by(raylets: dict[int, float]) -> dict[int, float]:
    """pid -> start time of every process whose ``RAY_RAYLET_PID`` is one of ``raylets`` (pid ->
    start time) and that started before any newer process took that raylet's pid (a reused pid:
    another session's raylet, whose workers are not this session's)."""
    reused = {pid: t for pid in raylets if (t := create_time_of(pid)) is not None and t != raylets[pid]}
    found = {}
    for p in psutil.process_iter(["environ", "create_time"]) if raylets else ():
        served = (p.info["environ"] or {}).get("RAY_RAYLET_PID", "")
        if not served.isdigit() or int(served) not in raylets or p.pid == os.getpid():
            continue
        if p.info["create_time"] < reused.get(int(served), float("inf")):
            found[p.pid] = p.info["create_time"]
    return found


def create_time_of(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def safe_children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def create_time(p: psutil.Process) -> float | None:
    try:
        return p.create_time()
    except psutil.Error:
        return None


def alive(recorded: dict[int, float]) -> list[psutil.Process]:
    """The recorded processes still running (same pid and start time), but this one."""
    procs = []
    for pid, started in recorded.items():
        try:
            p = psutil.Process(pid)
            if pid != os.getpid() and p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except psutil.Error:
            continue
    return procs


def stop(procs: list[psutil.Process], grace_s: float) -> tuple[int, int]:
    """SIGTERM ``procs``, SIGKILL those still alive after ``grace_s``; (terminated, killed) counts."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(procs, timeout=grace_s)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=2.0)
    return len(procs) - len(left), len(left)


def sweep(session_dir: str, driver_pid: int, recorded: dict[int, float], raylets: dict[int, float],
          grace_s: float = GRACE_S) -> int:
    """Stop every process of the session (recorded, or found now), in rounds until none is left
    (a raylet may start a worker while its siblings stop); returns how many were stopped."""
    total = 0
    for _ in range(5):
        found, more = scan(session_dir, driver_pid)
        raylets |= more
        procs = alive({**recorded, **found, **served_by(raylets)})
        if not procs:
            break
        terminated, killed = stop(procs, grace_s)
        total += terminated + killed
        say(f"stopped {len(procs)} processes of {session_dir} ({terminated} by SIGTERM, {killed} by SIGKILL): "
            f"{sorted(p.pid for p in procs)}")
    return total


def driver_gone(driver_pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` on the driver's pipe; True at its end of file or when this process
    was reparented (the driver died)."""
    readable, _, _ = select.select([sys.stdin.buffer], [], [], timeout_s)
    if readable and not os.read(sys.stdin.buffer.fileno(), 4096):
        return True
    return os.getppid() != driver_pid


def say(text: str) -> None:
    print(f"[duet reaper {time.strftime('%H:%M:%S')}] {text}", flush=True)


def main(argv: list[str]) -> int:
    driver_pid, session_dir = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    recorded, raylets = {}, {}
    say(f"watching driver {driver_pid}, Ray session {session_dir}")
    while not driver_gone(driver_pid, POLL_S):
        found, more = scan(session_dir, driver_pid)
        recorded.update(found)
        raylets |= more
    say(f"driver {driver_pid} is done; {len(recorded)} session processes recorded, raylets {sorted(raylets)}")
    sweep(session_dir, driver_pid, recorded, raylets)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
