"""The harness of the fault e2e tests (not collected: no ``test_`` prefix): ``duet train`` run as a
process group of its own beside a thread that kills processes of *this* run only (descendants of
the CLI process; other Ray instances on the machine are never touched), and readers of what the
run left (its metrics file, its log).

Ray titles an actor process by the method it executes (``ray::RolloutWorkerHost.rollout`` /
``.sync_adapter`` / ``.evaluate``, ``ray::RankActor.run``), which is how a killer times its kills.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
WORKER = "ray::RolloutWorkerHost"
RANK = "ray::RankActor"
RESTART = re.compile(r"\[duet\] learner restart 1: back at step (\d+), running the (\d+) step\(s\)")


def logged_steps(run_dir: Path) -> list[int]:
    """Steps with a rollout row in the metrics file (it is rewritten while we read: retry)."""
    try:
        rows = pq.read_table(run_dir / "metrics.parquet", columns=["step", "scope"]).to_pylist()
    except Exception:  # noqa: BLE001 - absent or half-written
        return []
    return sorted({r["step"] for r in rows if r["scope"] == "rollout"})


def titles(root_pid: int) -> dict[int, str]:
    """pid -> process title of every descendant of the run's CLI process (its Ray and actors)."""
    out = {}
    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:  # the run just ended
        return out
    for p in children:
        try:
            out[p.pid] = " ".join(p.cmdline())
        except psutil.Error:
            continue
    return out


def run_under(make_killer, run_dir: Path, recipe: tuple[str, ...], models_dir: Path, timeout_s: float = 600):
    """``duet train`` of ``recipe`` into ``run_dir`` as a process group of its own, with the thread
    ``make_killer(proc, log_path)`` started beside it (it kills processes of the run); returns
    (exit status, the run's stdout and stderr, that thread). A run still going at ``timeout_s`` is
    killed, its group only (the CLI, its Ray and actors)."""
    sets = [x for kv in (*recipe, f"output.dir={run_dir}") for x in ("--set", kv)]
    log_path = run_dir.parent / "stdout.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", *sets], cwd=ROOT,
                                env={**os.environ, "DUET_MODELS": str(models_dir)}, stdout=log,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        killer = make_killer(proc, log_path)
        killer.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        killer.join(timeout=5)
    return rc, log_path.read_text(), killer


def events(out: str, what: str) -> list[str]:
    """The run's rollout-worker event lines that contain ``what``."""
    return [ln for ln in out.splitlines() if ln.startswith("[duet] rollout worker") and what in ln]


def replay_of(out: str) -> tuple[int, int]:
    """(checkpoint step rewound to, steps replayed) of the run's one learner restart."""
    [(back, replayed)] = [tuple(map(int, m)) for m in RESTART.findall(out)]
    return back, replayed


def sync_rows(rows):
    """(version, proven workers) of each sync report, in log order."""
    pairs = [r for r in rows if r["scope"] == "sync/policy" and r["name"] in ("version", "proven_workers")]
    return [(a["value"], b["value"]) for a, b in zip(pairs[::2], pairs[1::2])]
