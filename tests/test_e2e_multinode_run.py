"""A whole run on the session's two-node Ray cluster keeps every file in its one run directory, and
``--resume`` continues from it.

``run_training`` of the ``smoke`` recipe joins the cluster (the driver is this process), with two
rollout workers spread over both nodes and two learner ranks. The storage check reads the run's
marker on each node hosting a bundle; then checkpoints (each rank writes its optimizer partition),
adapters (each node materializes its own copy under ``adapters/<node>/``), metrics and transcripts
all land under the one absolute directory. A second ``run_training(..., resume=True)`` on the same
directory continues from the checkpoint.

Hand-worked expectations: 4 tasks x group 2 = 8 episodes per step; run 1: 2 steps, versions 1-3,
16 episodes; run 2 (to step 4): versions 4-6, 32 episodes in all.
"""

import json

import pyarrow.parquet as pq
import pytest

from cluster.config import load_recipe
from cluster.recipes import recipe_path

pytestmark = pytest.mark.e2e


def smoke(run_dir, address, *extra):
    sets = ("cluster.rollout_workers=2", "cluster.strategy='SPREAD'", "cluster.learner_ranks=2",
            "cluster.learner_cpus=0.5", f"output.dir='{run_dir}'", f"cluster.address='{address}'", "output.report=false", *extra)
    return load_recipe(recipe_path("smoke"), sets)


@pytest.fixture(scope="module")
def runs(ray_session, ray_cluster, tmp_path_factory, models_dir):
    from cluster.run import run_training

    run_dir = tmp_path_factory.mktemp("multinode") / "run"
    first = run_training(smoke(run_dir, ray_cluster.address))
    second = run_training(smoke(run_dir, ray_cluster.address, "train.steps=4"), resume=True)
    return run_dir, first, second, [n["NodeID"] for n in ray_session.nodes() if n["Alive"]]


def test_both_runs_complete_with_exact_counts(runs):
    _, first, second, _ = runs
    assert first.completed and first.counters["produced"] == first.counters["trained"] == 16
    assert first.versions == {"policy": 3}
    assert second.completed and second.steps == 4 and second.counters["produced"] == second.counters["trained"] == 32
    assert second.versions == {"policy": 6} and second.served == {"rollout-0": {"policy": 6}, "rollout-1": {"policy": 6}}


def test_every_file_is_under_the_one_run_directory(runs):
    run_dir, _, second, nodes = runs
    assert second.run_dir == str(run_dir)
    # one adapter directory per node that hosts a rollout worker: both nodes (SPREAD)
    assert sorted(p.name for p in (run_dir / "adapters").iterdir()) == sorted(n[:12] for n in nodes)
    for node in (run_dir / "adapters").iterdir():
        assert max(p.name.split("-")[0] for p in (node / "policy").iterdir()) == "v6"
    ckpt = run_dir / "checkpoints" / "step_000004" / "policy"
    assert json.loads((ckpt / "learner_state.json").read_text())["step"] == 4
    partitions = sorted(p.name for p in ckpt.rglob("*optim_states.pt"))
    assert len(partitions) == 2, partitions  # one optimizer partition per learner rank
    assert sorted(p.name for p in ckpt.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert [r["step"] for r in metrics if r["scope"] == "rollout" and r["name"] == "episodes"] == [0, 1, 2, 3]
    proven = [r["value"] for r in metrics if r["scope"] == "sync/policy" and r["name"] == "proven_workers"]
    assert proven == [2.0] * 6  # every version on both workers
    assert (run_dir / "transcripts" / "step_00003.txt").is_file()
    assert (run_dir / ".duet" / "storage-check").is_file()
