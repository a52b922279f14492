"""``duet train`` as a Ray job: ``ray job submit`` against a real head node (dashboard included)
started by this test, then the job's status and logs read back through the Jobs REST API.

The head is its own cluster (not the session's ``ray_cluster``): ``ray start --head --block`` in a
new process group, on free ports and a private temp dir (so it does not write the machine-wide
``/tmp/ray/ray_current_cluster``), torn down by signalling that process and its group (never
``ray stop``, which would stop every Ray instance of the user on the machine).

Auth: Ray 2.60 turns token authentication on for ``ray start`` when a token is available. The test
keeps it on with a token of its own: a fresh random token in ``<temp dir>/auth_token`` (mode 0600),
handed to the head, the ``ray job submit`` CLI and, through them, the job's driver and actors by
``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH`` (the user's ``~/.ray/auth_token`` is neither read
nor written). HTTP clients send ``Authorization: Bearer <token>``: the dashboard answers 401 without
it (checked below). Only the subprocesses get these variables, never this pytest process.

Hand-worked expectation: 2 steps x 4 tasks x group 2 = 16 episodes produced and trained.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
STEPS, TASKS, GROUP, EVAL = 2, 4, 2, 4
EXCLUDES = [".venv", ".cache", "runs", ".git", "*.egg-info", "__pycache__"]


@dataclass(frozen=True)
class Head:
    dashboard: str
    """http://127.0.0.1:PORT (Jobs API)."""
    token: str
    env: dict
    """Environment for Ray CLI subprocesses talking to this head (token auth on)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports (all bound at once, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """Stop only what this test started. SIGTERM to ``ray start`` alone: it drains the node and
    stops its processes (~4 s; signalling the whole group at once kills the GCS first and the drain
    then waits 30 s for it). Then SIGKILL to whatever is left in the head's process group, and to
    any process still naming its private temp dir."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    for p in psutil.process_iter(["pid", "cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or []):
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="duet-ray-", dir="/tmp")  # short: unix socket paths < 108 bytes
    token_file = Path(temp_dir) / "auth_token"
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` writes: 256 random bits
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_USAGE_STATS_ENABLED": "0"}
    gcs, dash, client, agent_http, agent_grpc, metrics, env_agent = free_ports(7)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={env_agent}", "--object-store-memory=500000000", f"--temp-dir={temp_dir}"]
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(f"http://127.0.0.1:{dash}", token, env)
    try:
        deadline = time.monotonic() + 180
        while http_status(f"{head.dashboard}/api/jobs/", head.headers) != 200:
            assert proc.poll() is None, (Path(temp_dir) / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dashboard not up in 180 s"
            time.sleep(1)
        yield head
    finally:
        stop_head(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_dashboard_refuses_requests_without_the_token(ray_head):
    assert http_status(f"{ray_head.dashboard}/api/jobs/", {}) == 401
    assert http_status(f"{ray_head.dashboard}/api/jobs/", {"Authorization": "Bearer wrong"}) in (401, 403)
    assert http_status(f"{ray_head.dashboard}/api/jobs/", ray_head.headers) == 200


@pytest.fixture(scope="module")
def finished_job(ray_head, models_dir, tmp_path_factory):
    from ray.job_submission import JobStatus, JobSubmissionClient

    run_dir = tmp_path_factory.mktemp("job") / "run"
    runtime_env = {"excludes": EXCLUDES,
                   "env_vars": {"DUET_MODELS": str(models_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}
    sets = [f"train.steps={STEPS}", f"data.tasks_per_step={TASKS}", f"rollout.group_size={GROUP}",
            f"data.eval_size={EVAL}", "train.sft.steps=0", "name=job", f"output.dir={run_dir}",
            "cluster.address=auto", "output.transcripts_per_step=1", "train.mode=sync"]
    entrypoint = [str(VENV_BIN / "python"), "-m", "cluster.cli", "train", *(x for s in sets for x in ("--set", s))]
    job_id = f"duet-e2e-{secrets.token_hex(4)}"
    submit = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head.dashboard, "--submission-id", job_id,
         "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime_env), "--no-wait", "--", *entrypoint],
        env=ray_head.env, capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    client = JobSubmissionClient(ray_head.dashboard, headers=ray_head.headers)
    deadline = time.monotonic() + 540
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job still {status} after 540 s:\n{client.get_job_logs(job_id)[-3000:]}")
        time.sleep(2)
    return client, job_id, status, client.get_job_logs(job_id), run_dir


def test_job_succeeds_and_its_logs_show_evaluation_and_summary(finished_job):
    from ray.job_submission import JobStatus

    client, job_id, status, logs, run_dir = finished_job
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    info = client.get_job_info(job_id)
    assert info.runtime_env["working_dir"].startswith("gcs://")  # the repo was uploaded, venv excluded
    lines = logs.splitlines()
    for label in ("before_rl", "after_rl"):
        evals = [ln for ln in lines if ln.startswith(f"[eval] {label}")]
        assert len(evals) == 1 and evals[0].endswith(f"({EVAL} held-out episodes)"), evals
    assert sum(ln.startswith("step ") for ln in lines) == STEPS
    summary = json.loads(next(ln for ln in lines if ln.startswith("[duet] summary: "))[len("[duet] summary: "):])
    assert summary["completed"] is True and summary["steps"] == STEPS
    assert summary["counters"]["produced"] == summary["counters"]["trained"] == STEPS * TASKS * GROUP == 16
    assert summary["eval"]["after_rl"]["episodes"] == EVAL
    assert summary["versions"] == {"policy": 1 + STEPS}
    # the job wrote the same summary into the run directory it was given
    assert json.loads((run_dir / "summary.json").read_text())["counters"] == summary["counters"]
