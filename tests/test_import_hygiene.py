"""The light modules (types, math, rewards, configs, envs, tasks, pure driver pieces) import no Ray,
vLLM or DeepSpeed: checked in a fresh interpreter, so the unit tier stays fast and honest."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

LIGHT = [
    "rollout.types", "rollout.episode_arrow", "rollout.chat", "rollout.config", "rollout.engine",
    "rollout.engine.fake", "rollout.engine.config", "rollout.single_turn", "rollout.dialogue",
    "rollout.env_episode", "rollout.worker", "rollout.envs", "rollout.tasks", "learner.algos",
    "learner.config", "learner.batch", "rewards", "cluster.config", "cluster.schedule",
    "cluster.sft_data", "cluster.rollout_factory", "cluster.weight_sync", "cluster.adapter_store",
    "cluster.metrics", "cluster.placement", "cluster.cli", "cluster.models", "cluster.seeds",
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


# Layer directions (issue 11): the rollout side defines the types rewards grade (rollout.types.Reward,
# RewardResult), so it never imports rewards/; the cluster receives resolved model paths, so it never
# imports deploy/ (where models are built). Checked statically, every import statement, nested or not.
FORBIDDEN = [("rollout", "rewards"), ("rollout", "learner"), ("rollout", "cluster"), ("rollout", "deploy"),
             ("rewards", "learner"), ("rewards", "cluster"), ("rewards", "deploy"),
             ("learner", "cluster"), ("learner", "deploy"), ("cluster", "deploy")]
"""(package, what it must not import): the layers of ARCHITECTURE.md, lower ones never importing higher ones."""

HEAVY_HOME = {"vllm": "rollout/engine/vllm_engine.py", "deepspeed": "learner/deepspeed_engine.py"}
"""The one module of the project's packages that may import each heavy framework."""


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``import`` / ``from ... import`` in a file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _violations(package: str, forbidden: str) -> list[str]:
    root = Path(__file__).resolve().parents[1]
    return [
        f"{path.relative_to(root)}:{line} imports {mod}"
        for path in sorted((root / package).rglob("*.py"))
        for line, mod in _imported_modules(path)
        if mod == forbidden or mod.startswith(forbidden + ".")
    ]


@pytest.mark.parametrize(("package", "forbidden"), FORBIDDEN)
def test_no_import_runs_the_wrong_way(package, forbidden):
    assert _violations(package, forbidden) == []


def test_the_direction_check_sees_nested_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import os\ndef f():\n    from deploy.offline_models import resolve_model\n")
    assert _imported_modules(src) == [(1, "os"), (3, "deploy.offline_models")]


@pytest.mark.parametrize("framework", sorted(HEAVY_HOME))
def test_each_heavy_framework_is_imported_by_one_leaf_module(framework):
    root = Path(__file__).resolve().parents[1]
    importers = {str(p.relative_to(root)) for pkg in ("rollout", "learner", "rewards", "cluster")
                 for p in sorted((root / pkg).rglob("*.py"))
                 if any(m == framework or m.startswith(framework + ".") for _, m in _imported_modules(p))}
    assert importers == {HEAVY_HOME[framework]}
