"""One run per run directory (issue 14, item 6): ``duet train`` takes an exclusive ``flock`` on
``output.dir/.lock`` before it writes anything there. A second run given the same directory fails at
once, before Ray starts: exit 2, one line naming the directory and the holder's pid, every file of
the first run unchanged. The lock dies with its holder, so a stale ``.lock`` never blocks."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.run import RunDirBusy, run_dir_lock

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from pathlib import Path; from cluster.run import run_dir_lock\n" \
       "with run_dir_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)"


def test_a_held_directory_is_refused_naming_the_holder(tmp_path):
    with run_dir_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(RunDirBusy) as err:
            with run_dir_lock(tmp_path):
                pass
    assert str(err.value).startswith(f"output.dir {tmp_path} is in use by another run (pid {os.getpid()})")
    with run_dir_lock(tmp_path):  # released at the block's end
        pass


def test_a_stale_lock_file_does_not_block(tmp_path):
    (tmp_path / ".lock").write_text("999999\n")  # left by a run that died: no process holds the lock
    with run_dir_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    return {p.relative_to(run_dir).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_second_duet_train_on_a_held_directory_fails_at_once(tmp_path, models_dir):
    """The first run is stood in for by a process holding the lock (as ``duet train`` does for the
    whole run); the second ``duet train`` exits 2 in seconds, before Ray, touching nothing."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "recipe.json").write_text('{"name": "first"}')
    (run_dir / "metrics.parquet").write_bytes(b"first run's rows")
    (run_dir / "checkpoints" / "LATEST").write_text("step_000002")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(run_dir)
        t0 = time.monotonic()
        env = {**os.environ, "DUET_MODELS": str(models_dir)}
        result = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "smoke", "--set", f"output.dir={run_dir}"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"duet: output.dir {run_dir} is in use by another run (pid {holder.pid}); "
                                          "give this run another output.dir or wait for that one to end"]
    assert "Ray" not in result.stdout + result.stderr and elapsed < 60
    assert snapshot(run_dir) == before  # nothing of the first run written over, not even the lock's pid
