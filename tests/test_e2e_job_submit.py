"""The README's cluster commands, run verbatim: the fenced block after the ``cluster-commands``
marker in README.md is executed as it stands by ``bash -e`` in the repository root (activate the
venv, generate a token, ``ray start --head``, two ``ray job submit`` of ``duet train``, the second
with ``--resume``). Then the jobs' status and logs are read back through the Jobs API, the run's
files are checked in its one directory, and the dashboard must refuse requests without the token.

Isolation without changing a command: the block runs with ``HOME`` (so ``~/.ray/auth_token`` is
this test's own token), ``RAY_TMPDIR`` (the head's session files) and ``DUET_RUNS`` (the run
directory the block exports) pointed into a private temp dir; ``TORCH_EXTENSIONS_DIR`` keeps the
DeepSpeed op built by set-up. The head uses Ray's default ports, as the README does (6379, 8265):
the test fails at once, saying so, when they are taken. Teardown signals only the processes of this
head (those whose command line or environment names the private dir); never ``ray stop``.

Hand-worked expectations (recipe ``smoke``: 4 tasks x group 2 = 8 episodes per step):
  job 1: steps 1-2, 16 episodes produced and trained, adapter v1 (untrained) + v2 + v3, a
         checkpoint at step 2;
  job 2: resumes at step 2, publishes the checkpoint's adapter as v4, steps 3-4 (v5, v6),
         16 + 16 = 32 episodes in the counters; no "base" evaluation or SFT redone; the learner's
         step goes on 3, 4; both jobs' rows in the one metrics.parquet. (This is the suite's resume
         test: one ``duet train`` then ``--resume`` in the same run directory.)

Metrics: the block's ``ray start`` exports Prometheus metrics on port 8080; a poller reads
http://127.0.0.1:8080/metrics every second while the block runs (each job's driver holds one report
interval before it stops, ``output.metrics_flush_s``, so its last values are exported). Every metric
of ``cluster.metrics.SPECS`` must show except the two the smoke recipe cannot emit (``duet_kl_ref``:
no KL term; ``duet_episodes_dropped``: nothing is stale in sync mode; both are checked by
tests/test_e2e_local_dashboard.py), and each per-step gauge's last value equals the last value of its
row in metrics.parquet (job 2's step 4 and its syncs).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from cluster.metrics import SPECS, exported_names
from prometheus_poll import Poller, gauge_mismatches, last_values, names_seen, parquet_last

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- cluster-commands"
DASHBOARD = "http://127.0.0.1:8265"
PORTS = (6379, 8265, 8080)
METRICS = "http://127.0.0.1:8080/metrics"  # the block's --metrics-export-port
NOT_IN_SMOKE = {"duet_kl_ref", "duet_episodes_dropped"}  # no KL term; nothing stale in sync mode


def readme_block() -> str:
    """The bash block after the ``cluster-commands`` marker in README.md, as written."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARKER):]
    match = re.search(r"```bash\n(.*?)```", after, re.S)
    assert match, "README: no ```bash block after the cluster-commands marker"
    return match.group(1)


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def names_dir(p: psutil.Process, private: str) -> bool:
    try:
        return private in " ".join(p.cmdline()) or any(private in v for v in p.environ().values())
    except psutil.Error:
        return False


def listeners(since: float) -> set[int]:
    """Processes started after ``since`` that listen on the head's ports (the ports were free then, so
    this head's: Ray's dashboard agent retitles itself and may hide its environment from psutil)."""
    pids = set()
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in PORTS and c.pid:
            try:
                if psutil.Process(c.pid).create_time() >= since:
                    pids.add(c.pid)
            except psutil.Error:
                pass
    return pids


def stop_head(private: str, since: float) -> None:
    """SIGTERM, then SIGKILL, every process of this test's head (found by its private dir or its ports)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        ports = listeners(since)
        procs = [p for p in psutil.process_iter()
                 if p.pid != os.getpid() and (names_dir(p, private) or p.pid in ports)]
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=wait)


def torch_extensions_dir() -> str:
    """Where torch's JIT keeps C++ ops in this environment (``torch.utils.cpp_extension``'s
    ``_get_build_directory`` root: ``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions/py311_cpu``),
    where set-up built DeepSpeed's CPU op: the jobs load it from there instead of compiling it
    again (a minute or two) under the private ``HOME``."""
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        return os.environ["TORCH_EXTENSIONS_DIR"]
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    device = "cpu" if torch.version.cuda is None else f"cu{torch.version.cuda.replace('.', '')}"
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return os.path.join(get_default_build_root(), f"{python}_{device}")


@pytest.fixture(scope="module")
def readme_session():
    taken = [p for p in PORTS if port_taken(p)]
    if taken:
        pytest.fail(f"ports {taken} are in use: the README's commands start a head on Ray's default ports "
                    f"and metrics port 8080")
    since = time.time()
    private = tempfile.mkdtemp(prefix="duet-job-", dir="/tmp")  # short: unix socket paths < 108 bytes
    home, runs = Path(private) / "home", Path(private) / "runs"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"HOME": str(home), "RAY_TMPDIR": private, "DUET_RUNS": str(runs), "RAY_USAGE_STATS_ENABLED": "0",
            "TORCH_EXTENSIONS_DIR": torch_extensions_dir()}
    poller = Poller(METRICS, period_s=1.0, token_file=home / ".ray" / "auth_token")
    try:
        poller.start()
        block = subprocess.run(["bash", "-e", "-c", readme_block()], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=1200)
        poller.stop()
        after = poller.scrape()  # once more after both jobs ended: what persists on the head
        token = (home / ".ray" / "auth_token").read_text().strip() if (home / ".ray" / "auth_token").is_file() else ""
        statuses = {
            "none": http_status(f"{DASHBOARD}/api/jobs/", {}),
            "wrong": http_status(f"{DASHBOARD}/api/jobs/", {"Authorization": "Bearer wrong"}),
            "token": http_status(f"{DASHBOARD}/api/jobs/", {"Authorization": f"Bearer {token}"}),
        }
        jobs = []
        if token:
            from ray.job_submission import JobSubmissionClient

            client = JobSubmissionClient(DASHBOARD, headers={"Authorization": f"Bearer {token}"})
            jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
            jobs = [(j, client.get_job_logs(j.submission_id)) for j in jobs]
        yield (block, statuses, jobs, runs / "smoke"), (poller.pages, after)
    finally:
        poller.stop()
        stop_head(private, since)
        shutil.rmtree(private, ignore_errors=True)


@pytest.fixture(scope="module")
def readme_run(readme_session):
    """(block's completed process, dashboard statuses, [(job, logs)], run directory)."""
    return readme_session[0]


@pytest.fixture(scope="module")
def scraped(readme_session):
    """(pages read while the block ran, the samples of one read after it ended)."""
    return readme_session[1]


def summary_of(logs: str) -> dict:
    line = next(ln for ln in logs.splitlines() if ln.startswith("[duet] summary: "))
    return json.loads(line[len("[duet] summary: "):])


def test_the_readme_block_runs_both_jobs_to_success(readme_run):
    block, _, jobs, run_dir = readme_run
    assert block.returncode == 0, block.stdout[-4000:] + block.stderr[-4000:]
    assert [j.status for j, _ in jobs] == ["SUCCEEDED", "SUCCEEDED"]
    runs = f"'output.dir={run_dir.parent}/{{name}}'"  # $DUET_RUNS/{name}, as the Jobs API quotes it
    assert [j.entrypoint for j, _ in jobs] == [f"duet train smoke --set {runs}",
                                               f"duet train smoke --set {runs} --set train.steps=4 --resume"]
    for job, _ in jobs:
        assert job.runtime_env["working_dir"].startswith("gcs://")  # the code was uploaded


def test_dashboard_refuses_requests_without_the_token(readme_run):
    _, statuses, _, _ = readme_run
    assert statuses["none"] == 401 and statuses["wrong"] in (401, 403) and statuses["token"] == 200


def test_first_job_trains_two_steps_and_checkpoints(readme_run):
    _, _, jobs, run_dir = readme_run
    (_, logs), _ = jobs
    lines = logs.splitlines()
    assert [ln.split("|")[0].split() for ln in lines if ln.startswith("step ")] == [["step", "1"], ["step", "2"]]
    for label in ("before_rl", "after_rl"):
        evals = [ln for ln in lines if ln.startswith(f"[eval] {label}")]
        assert len(evals) == 1 and evals[0].endswith("(4 held-out episodes)"), evals
    assert f"[duet] run directory {run_dir} is seen by every node of the run (1)" in lines
    summary = summary_of(logs)
    assert summary["completed"] is True and summary["steps"] == 2 and summary["run_dir"] == str(run_dir)
    assert summary["counters"]["produced"] == summary["counters"]["trained"] == 2 * 4 * 2 == 16
    assert summary["versions"] == {"policy": 3}


def test_second_job_resumes_from_the_first_jobs_checkpoint(readme_run):
    _, _, jobs, run_dir = readme_run
    _, (_, logs) = jobs
    lines = logs.splitlines()
    assert f"[duet] resumed from {run_dir / 'checkpoints' / 'step_000002'} at step 2" in lines
    assert [ln.split("|")[0].split() for ln in lines if ln.startswith("step ")] == [["step", "3"], ["step", "4"]]
    assert not any(ln.startswith(("[eval] base", "[sft]")) for ln in lines)  # neither redone on resume
    assert [ln.split()[1] for ln in lines if ln.startswith("[eval]")] == ["before_rl", "after_rl"]
    summary = summary_of(logs)
    assert summary["steps"] == 4 and summary["versions"] == {"policy": 6}
    assert summary["served"] == {"rollout-0": {"policy": 6}} and set(summary["eval"]) == {"before_rl", "after_rl"}
    # 4 steps x 4 tasks x 2 samples, the first 16 carried over from the checkpoint; no fault
    assert {k: v for k, v in summary["counters"].items() if v} == {"produced": 32, "trained": 32}


def test_every_file_of_the_run_is_in_its_one_directory(readme_run):
    _, _, jobs, run_dir = readme_run
    assert json.loads((run_dir / "summary.json").read_text()) == summary_of(jobs[1][1])
    assert json.loads((run_dir / "recipe.json").read_text())["output"]["dir"] == str(run_dir)
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["LATEST", "step_000000", "step_000002", "step_000004"]
    assert (ckpts / "LATEST").read_text().strip() == "step_000004"
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    steps = [r["step"] for r in metrics if r["scope"] == "rollout" and r["name"] == "episodes"]
    assert steps == [0, 1, 2, 3]  # both jobs' steps in one metrics file
    versions = [r["value"] for r in metrics if r["scope"] == "sync/policy" and r["name"] == "version"]
    assert versions == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # job 2 republished the checkpoint's adapter as v4
    proven = [r["value"] for r in metrics if r["scope"] == "sync/policy" and r["name"] == "proven_workers"]
    assert proven == [1.0] * 6
    learner_steps = [r["value"] for r in metrics if r["scope"] == "learner/policy" and r["name"] == "learner/step"]
    assert learner_steps == [1.0, 2.0, 3.0, 4.0]  # the learner's step continued from the checkpoint's
    first = json.loads((ckpts / "step_000002" / "driver.json").read_text())
    assert (first["step"], first["versions"]) == (2, {"policy": 3})
    assert {k: v for k, v in first["counters"].items() if v} == {"produced": 16, "trained": 16}
    assert json.loads((ckpts / "step_000004" / "driver.json").read_text())["versions"] == {"policy": 6}
    assert json.loads((ckpts / "step_000004" / "policy" / "learner_state.json").read_text())["step"] == 4
    (node_dir,) = (run_dir / "adapters").iterdir()  # one node on this head
    assert sorted(p.name.split("-")[0] for p in (node_dir / "policy").iterdir())[-1] == "v6"
    transcripts = sorted(p.name for p in (run_dir / "transcripts").iterdir())
    assert "step_00003.txt" in transcripts and "eval_after_rl.txt" in transcripts


def test_every_metric_the_run_emits_reaches_the_heads_prometheus(readme_run, scraped):
    pages, _ = scraped
    assert pages, "the head's metrics endpoint (--metrics-export-port=8080) never answered"
    wanted = {n for name, spec in SPECS.items() if name not in NOT_IN_SMOKE for n in exported_names(spec)}
    assert sorted(wanted - names_seen(pages)) == []


def test_per_step_gauges_end_at_the_values_of_metrics_parquet(readme_run, scraped):
    pages, _ = scraped
    _, _, _, run_dir = readme_run
    last, rows = last_values(pages), parquet_last(run_dir)
    assert gauge_mismatches(last, rows) == []
    # hand-worked: job 2 ends at adapter v6, sync mode (nothing in flight, no staleness), 4 tasks x 2
    assert last[("ray_duet_adapter_version", (("role", "policy"),))] == 6.0
    assert last[("ray_duet_queue_depth", (("queue", "in_flight"),))] == 0.0
    assert last[("ray_duet_staleness", (("role", "policy"),))] == 0.0
    assert last[("ray_duet_reward", ())] == rows[("rollout", "reward")]
    assert last[("ray_duet_entropy", (("role", "policy"),))] == rows[("learner/policy", "policy/entropy")] > 0


def test_counters_and_the_sync_histogram_add_up_over_both_jobs(readme_run, scraped):
    pages, after = scraped
    last = last_values(pages)
    # each job's driver counts the episodes it collected: 16 + 16, as the summary's counters
    assert last[("ray_duet_episodes_produced_total", ())] == 32.0
    # every sync of both jobs' weight-sync services is one observation: v1..v6
    assert last[("ray_duet_sync_latency_s_count", (("role", "policy"),))] == 6.0
    # after the jobs ended, counters and histograms stay on the head (cumulative); gauges age out
    persisted = last_values([(0.0, after or [])])
    assert persisted[("ray_duet_episodes_produced_total", ())] == 32.0
