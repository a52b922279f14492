"""Shared fixtures. Heavy modules (ray, vllm, deepspeed) are imported inside fixtures only, so the
unit tier never loads them."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Directory of the offline models built by deploy/setup.sh (built here if missing)."""
    from deploy.offline_models import build_all

    out = Path(os.environ.get("DUET_MODELS", ROOT / ".cache" / "models"))
    build_all(out)
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session; shut down only if this fixture started it."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()
