"""The light modules (types, math, rewards, configs, envs, tasks, pure driver pieces) import no Ray,
vLLM or DeepSpeed: checked in a fresh interpreter, so the unit tier stays fast and honest."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

LIGHT = [
    "rollout.types", "rollout.episode_arrow", "rollout.chat", "rollout.config", "rollout.engine",
    "rollout.engine.fake", "rollout.engine.config", "rollout.single_turn", "rollout.dialogue",
    "rollout.env_episode", "rollout.worker", "rollout.envs", "rollout.tasks", "learner.algos",
    "learner.config", "learner.batch", "rewards", "cluster.config", "cluster.schedule",
    "cluster.sft_data", "cluster.rollout_factory", "cluster.weight_sync", "cluster.adapter_store",
    "cluster.metrics", "cluster.placement", "cluster.cli",
]


def test_light_modules_do_not_import_heavy_frameworks():
    code = (
        "import sys\n"
        f"for m in {LIGHT!r}: __import__(m)\n"
        "heavy = sorted(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
