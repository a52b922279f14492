"""GPU consistency checks (cluster.consistency) through the recipe loader and the CLI: each bad
combination is refused at load, naming its dotted fields; every shipped recipe passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster.config import RecipeError, _set_dotted, build_recipe
from cluster.consistency import gpu_problems, worker_engines

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "cluster" / "recipes").glob("*.toml"))

GPU_POLICY = {"roles.policy.engine.device": "cuda", "cluster.rollout_gpus": 1}


def tree(base: dict[str, Any] | None = None, **dotted: Any) -> dict[str, Any]:
    """A recipe tree from dotted keys (``roles__policy__engine__device`` -> roles.policy.engine.device)."""
    out: dict[str, Any] = {}
    for key, value in {**(base or {}), **{k.replace("__", "."): v for k, v in dotted.items()}}.items():
        _set_dotted(out, key, value)
    return out


def dialogue(**dotted: Any) -> dict[str, Any]:
    """Reasoner (text LM) and Observer (VLM): two base models, two engines per worker, both on cuda."""
    base = {"rollout.kind": "dialogue", "roles.reasoner.model": "builtin:tiny-text-lm",
            "roles.reasoner.learner.role": "reasoner", "roles.observer.learner.role": "observer",
            "roles.reasoner.engine.device": "cuda", "roles.observer.engine.device": "cuda",
            "cluster.rollout_gpus": 1, "cluster.learner_gpus": 1}
    return tree(base, **dotted)


def problems_of(t: dict[str, Any]) -> str:
    with pytest.raises(RecipeError) as err:
        build_recipe(t, "r.toml")
    assert "GPU settings disagree" in str(err.value)
    return str(err.value)


def test_cuda_engine_without_rollout_gpus() -> None:
    msg = problems_of(tree(roles__policy__engine__device="cuda"))
    assert "roles.policy.engine.device = 'cuda' but cluster.rollout_gpus = 0" in msg
    assert msg.count("\n    - ") == 1


def test_cpu_engine_with_rollout_gpus() -> None:
    msg = problems_of(tree(cluster__rollout_gpus=0.5))
    assert "roles.policy.engine.device = 'cpu' but cluster.rollout_gpus = 0.5" in msg


def test_gloo_learner_on_gpus_and_nccl_without() -> None:
    msg = problems_of(tree(GPU_POLICY, cluster__learner_gpus=1, roles__policy__learner__backend="gloo"))
    assert "roles.policy.learner.backend = 'gloo' but cluster.learner_gpus = 1" in msg
    msg = problems_of(tree(roles__policy__learner__backend="nccl"))
    assert "roles.policy.learner.backend = 'nccl' but cluster.learner_gpus = 0" in msg
    for backend in ("auto", "nccl"):
        build_recipe(tree(GPU_POLICY, cluster__learner_gpus=1, roles__policy__learner__backend=backend))


def test_two_engines_on_one_gpu_over_the_memory_bound() -> None:
    # Both engines default to gpu_memory_utilization = 0.5: 1.0 > 0.95, vLLM refuses the second.
    msg = problems_of(dialogue())
    assert ("engines sharing one GPU: roles.observer.engine.gpu_memory_utilization = 0.5, "
            "roles.reasoner.engine.gpu_memory_utilization = 0.5 sum to 1.00 > 0.95") in msg
    build_recipe(dialogue(roles__reasoner__engine__gpu_memory_utilization=0.55,
                          roles__observer__engine__gpu_memory_utilization=0.35))


def test_roles_on_one_engine_count_once() -> None:
    # Same base model, same engine config: one engine (told apart by adapters), 0.9 is fine.
    t = dialogue(roles__reasoner__model="builtin:tiny-qwen2-vl",
                 roles__reasoner__engine__gpu_memory_utilization=0.9,
                 roles__observer__engine__gpu_memory_utilization=0.9)
    recipe = build_recipe(t)
    assert list(worker_engines(recipe)) == ["observer"] and gpu_problems(recipe) == []


def test_fractional_workers_packed_on_one_gpu() -> None:
    msg = problems_of(tree(GPU_POLICY, cluster__rollout_gpus=0.5, cluster__rollout_workers=2))
    assert ("roles.policy.engine.gpu_memory_utilization = 0.5 x 2 workers per GPU (cluster.rollout_gpus = 0.5, "
            "cluster.rollout_workers = 2) sum to 1.00 > 0.95") in msg
    build_recipe(tree(GPU_POLICY, cluster__rollout_gpus=0.5, cluster__rollout_workers=2,
                      roles__policy__engine__gpu_memory_utilization=0.45))


def test_learner_colocated_with_an_engine_needs_room() -> None:
    t = tree(GPU_POLICY, cluster__rollout_gpus=0.5, cluster__learner_gpus=0.5,
             roles__policy__engine__gpu_memory_utilization=0.6)
    msg = problems_of(t)
    assert ("a learner rank (cluster.learner_gpus = 0.5) can share a GPU with a rollout worker "
            "(cluster.rollout_gpus = 0.5) whose engines take roles.policy.engine.gpu_memory_utilization = 0.6: "
            "0.6 + 0.5 > 0.95") in msg
    build_recipe(tree(GPU_POLICY, cluster__rollout_gpus=0.5, cluster__learner_gpus=0.5,
                      roles__policy__engine__gpu_memory_utilization=0.4))


def test_tensor_parallel_size_must_match_gpus_per_worker() -> None:
    msg = problems_of(tree(GPU_POLICY, roles__policy__engine__tensor_parallel_size=2))
    assert "roles.policy.engine.tensor_parallel_size = 2 but cluster.rollout_gpus = 1" in msg
    msg = problems_of(tree(GPU_POLICY, cluster__rollout_gpus=2))
    assert "roles.policy.engine.tensor_parallel_size = 1 but cluster.rollout_gpus = 2" in msg
    build_recipe(tree(GPU_POLICY, cluster__rollout_gpus=2, roles__policy__engine__tensor_parallel_size=2))


def test_tensor_parallel_on_cpu_is_refused_at_the_field() -> None:
    with pytest.raises(RecipeError, match="current platform cpu does not support ray"):
        build_recipe(tree(roles__policy__engine__tensor_parallel_size=2))


def test_all_problems_are_reported_together() -> None:
    t = tree(roles__policy__engine__device="cuda", roles__policy__learner__backend="nccl")
    msg = problems_of(t)
    assert msg.count("\n    - ") == 2 and "cluster.rollout_gpus = 0" in msg and "cluster.learner_gpus = 0" in msg


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_check_exits_2_naming_the_field() -> None:
    out = run_cli("check", "default", "--set", "roles.policy.engine.device=cuda")
    assert out.returncode == 2
    assert out.stderr.count("\n    - ") == 1  # one problem, and it names the field to set
    assert "roles.policy.engine.device = 'cuda' but cluster.rollout_gpus = 0" in out.stderr


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_recipes_pass(name: str) -> None:
    out = run_cli("check", name)
    assert out.returncode == 0, out.stderr
    assert f'"name": "{name}"' in out.stdout


def test_merged_serving_on_an_engine_shared_by_two_adapters_is_refused_at_load() -> None:
    # Reasoner and Observer on one base model with equal engine configs share one engine: two adapters.
    shared = {"rollout.kind": "dialogue", "roles.reasoner.learner.role": "reasoner",
              "roles.observer.learner.role": "observer", "roles.reasoner.model": "builtin:tiny-qwen2-vl"}
    with pytest.raises(RecipeError) as err:
        build_recipe(tree(shared, roles__reasoner__engine__serve="merged", roles__observer__engine__serve="merged"))
    assert ("roles.reasoner.engine.serve, roles.observer.engine.serve: engine.serve = 'merged' serves one adapter, "
            "but the roles sharing this "
            "engine use ['observer', 'reasoner']") in str(err.value)
    build_recipe(tree(shared))  # "auto": LoRA on the shared engine, accepted
    # two base models, two engines, one adapter each: merged fits
    build_recipe(tree(shared, roles__reasoner__model="builtin:tiny-text-lm",
                      roles__reasoner__engine__serve="merged", roles__observer__engine__serve="merged"))
