"""Shared fixtures. Heavy modules (ray, vllm, deepspeed) are imported inside fixtures only, so the
unit tier never loads them."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# vLLM reads these once, before its first engine in a process: one value for the whole session.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Directory of the offline models built by deploy/setup.sh (built here if missing)."""
    from deploy.offline_models import build_all

    out = Path(os.environ.get("DUET_MODELS", ROOT / ".cache" / "models"))
    build_all(out)
    return out


@pytest.fixture(autouse=True)
def _models_built_for_runs(request):
    """A run resolves its models before Ray starts and never builds them (:mod:`cluster.models`),
    so every end-to-end test gets the built-in models built (or reused) first."""
    if request.node.get_closest_marker("e2e"):
        request.getfixturevalue("models_dir")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: two raylets),
    shared by every Ray test of the session and shut down at its end. Each node offers 2 logical
    CPUs; tests that need cross-node placement use the node ids in ``cluster.list_all_nodes()``.
    Only this cluster is shut down; no other Ray instance of the user is touched."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        pytest.fail("a Ray instance is already initialised in this process; tests must use ray_cluster")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    """The Ray module, connected to the session's cluster."""
    import ray

    return ray
