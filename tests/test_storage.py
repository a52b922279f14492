"""One storage location per run: absolute run directories, the job rule, and the per-node check."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import build_recipe
from cluster.run import settle
from cluster.storage import (JOB_ENV_VAR, MARKER, MARKER_DIR, StorageError, read_marker, resolve_run_dir,
                             storage_problems, under_ray_job, write_marker)

ROOT = Path(__file__).resolve().parents[1]
JOB_ENV = {JOB_ENV_VAR: '{"runtime_env": {}}'}


@pytest.mark.unit
def test_relative_dir_is_taken_against_the_working_directory_outside_a_job(tmp_path):
    assert resolve_run_dir("runs/x", in_job=False, cwd=tmp_path) == tmp_path / "runs" / "x"
    assert resolve_run_dir("/abs/runs/x", in_job=False, cwd=tmp_path) == Path("/abs/runs/x")
    assert resolve_run_dir("/abs/runs/x", in_job=True) == Path("/abs/runs/x")


@pytest.mark.unit
def test_relative_dir_under_a_job_is_refused_with_the_reason():
    with pytest.raises(StorageError) as err:
        resolve_run_dir("runs/x", in_job=True)
    msg = str(err.value)
    assert msg.startswith("output.dir: 'runs/x' is relative") and "ray job submit" in msg
    assert "--set output.dir=/mnt/shared/runs/{name}" in msg


@pytest.mark.unit
def test_job_detection_reads_the_variable_rays_job_supervisor_sets():
    assert under_ray_job(JOB_ENV) and not under_ray_job({"RAY_ADDRESS": "auto"})


@pytest.mark.unit
def test_settle_makes_the_dir_absolute_and_joins_the_cluster_inside_a_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = build_recipe({"name": "r", "output": {"dir": "runs/{name}"}})
    local = settle(recipe, environ={})
    assert local.run_dir() == tmp_path / "runs" / "r" and local.cluster.address is None
    assert settle(local, environ={}) == local  # idempotent
    job = settle(build_recipe({"name": "r", "output": {"dir": str(tmp_path / "shared" / "{name}")}}), JOB_ENV)
    assert job.run_dir() == tmp_path / "shared" / "r" and job.cluster.address == "auto"
    explicit = build_recipe({"output": {"dir": "/x/{name}"}, "cluster": {"address": "10.0.0.1:6379"}})
    assert settle(explicit, JOB_ENV).cluster.address == "10.0.0.1:6379"


@pytest.mark.unit
def test_marker_round_trip_and_judgement(tmp_path):
    marker, token = write_marker(tmp_path)
    assert marker == tmp_path / MARKER_DIR / MARKER and len(token) == 32
    assert read_marker(str(marker)) == token and read_marker(str(tmp_path / "nope")) is None
    seen = {"aaaaaaaaaaaaaaaa": token, "bbbbbbbbbbbbbbbb": None, "cccccccccccccccc": "other"}
    assert storage_problems(str(marker), token, seen) == [
        f"node bbbbbbbbbbbb does not see {marker}",
        f"node cccccccccccc sees a different {marker} (another file system mounted there)",
    ]
    assert storage_problems(str(marker), token, {"a": token}) == []


@pytest.mark.unit
def test_cli_refuses_a_relative_dir_under_a_job_before_ray_starts():
    env = {**os.environ, **JOB_ENV}
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "default"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("duet: output.dir: 'runs/default' is relative"), out.stderr


@pytest.mark.ray
def test_every_node_of_the_session_cluster_sees_a_local_dir(ray_session, ray_cluster, tmp_path):
    from cluster.storage import check_shared

    nodes = [n["NodeID"] for n in ray_session.nodes() if n["Alive"]]
    assert len(nodes) >= 2
    check_shared(tmp_path, nodes)  # one machine: every raylet sees the same file system
    assert len(read_marker(str(tmp_path / MARKER_DIR / MARKER))) == 32
