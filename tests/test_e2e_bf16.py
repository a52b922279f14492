"""A bf16 run end to end on CPU: the vLLM engine in bfloat16 and the DeepSpeed learner in bf16, and
every adapter version is still proven on the rollout worker (before the per-dtype bound, the fp32
tolerance 1e-4 refused the first publish of every bf16 run).

``duet train smoke`` (2 steps) as a real CLI process on its own local Ray. Hand-worked
expectations: versions 1 (untrained), 2, 3; each sync proven on the one worker; the recorded probe
gap is above fp32's agreement (the two sides do round differently in bf16) and within bf16's bound.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.weight_sync import PROOF_TOLERANCE

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory, models_dir):
    run_dir = tmp_path_factory.mktemp("bf16") / "run"
    sets = ["roles.policy.engine.dtype=bfloat16", "roles.policy.learner.dtype=bf16", f"output.dir={run_dir}", "output.report=false"]
    env = {**os.environ, "DUET_MODELS": str(models_dir)}
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "train", "smoke", *(x for s in sets for x in ("--set", s))],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run_dir, out


def sync_rows(run_dir: Path, name: str) -> list[float]:
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return [r["value"] for r in rows if r["scope"] == "sync/policy" and r["name"] == name]


def test_every_bf16_version_is_proven(bf16_run):
    run_dir, _ = bf16_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is True and summary["versions"] == {"policy": 3}
    assert summary["served"] == {"rollout-0": {"policy": 3}}
    assert sync_rows(run_dir, "version") == [1.0, 2.0, 3.0]
    assert sync_rows(run_dir, "proven_workers") == [1.0, 1.0, 1.0]
    recipe = json.loads((run_dir / "recipe.json").read_text())
    assert recipe["roles"]["policy"]["engine"]["dtype"] == "bfloat16"
    assert recipe["roles"]["policy"]["learner"]["dtype"] == "bf16"


def test_bf16_probe_gap_is_real_and_within_its_bound(bf16_run):
    run_dir, out = bf16_run
    gaps = sync_rows(run_dir, "probe_gap")
    print("bf16 probe gaps per sync:", gaps)
    assert len(gaps) == 3
    assert all(PROOF_TOLERANCE["float32"] < g <= PROOF_TOLERANCE["bfloat16"] for g in gaps), gaps
