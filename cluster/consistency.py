"""GPU settings that must agree across a recipe, checked at load (``duet check``/``duet train``
exit 2 before Ray starts).

Each field is valid on its own; these combinations are not, and each would only fail on a GPU
cluster, minutes in, deep inside vLLM, DeepSpeed or Ray (or silently put every worker on cuda:0).
:func:`gpu_problems` is pure arithmetic over the recipe; every message names its dotted fields.

The memory model is vLLM's: ``gpu_memory_utilization`` is a fraction of the WHOLE device that one
engine takes at start, and an engine refuses to start when less than that is free. So the engines
on one device must sum to at most :data:`MAX_GPU_MEMORY` (the rest is CUDA contexts and
fragmentation). Every engine of a rollout worker runs on the worker's first GPU (one process;
vLLM's tensor-parallel shards take the worker's first ``tensor_parallel_size`` bundles), and with
a fractional ``cluster.rollout_gpus`` Ray may pack ``1 // rollout_gpus`` workers onto one device.
A learner rank colocated with rollout workers (both fractional, summing to <= 1) is assumed to
need its Ray share of the memory (``cluster.learner_gpus``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rollout.engine.config import EngineConfig, serve_mode

if TYPE_CHECKING:
    from cluster.config import Recipe

MAX_GPU_MEMORY = 0.95
"""Largest sum of ``gpu_memory_utilization`` (plus colocated learner shares) on one device."""
_EPS = 1e-9


def worker_engines(recipe: Recipe) -> dict[str, EngineConfig]:
    """The distinct engines of one rollout worker, each named by the first role (sorted) using it.

    Roles on the same base model with equal engine configs share one engine (as
    :class:`cluster.rollout_factory.RolloutWorkerFactory` builds them).
    """
    engines: dict[str, EngineConfig] = {}
    seen: dict[tuple[str, str], str] = {}
    for role, rt in sorted(recipe.roles.items()):
        key = (rt.model, rt.engine.model_dump_json())
        if key not in seen:
            seen[key] = role
            engines[role] = rt.engine
    return engines


def gpu_problems(recipe: Recipe) -> list[str]:
    """Every GPU inconsistency of ``recipe``, one message each; empty when the settings agree."""
    engines = worker_engines(recipe)
    return [*_device_problems(recipe, engines), *_parallel_problems(recipe, engines),
            *_memory_problems(recipe, engines), *_learner_problems(recipe)]


def _device_problems(recipe: Recipe, engines: dict[str, EngineConfig]) -> list[str]:
    """cuda engines need GPUs reserved for the workers; GPUs reserved for cpu-only engines idle."""
    gpus = recipe.cluster.rollout_gpus
    cuda = [r for r, e in engines.items() if e.device == "cuda"]
    problems = [f"roles.{r}.engine.device = 'cuda' but cluster.rollout_gpus = 0: no GPU is reserved for the "
                "rollout workers, so every worker's engine would land on cuda:0 of its node, unaccounted by Ray; "
                "set cluster.rollout_gpus (e.g. 1)" for r in cuda if gpus == 0]
    if gpus > 0 and not cuda:
        problems += [f"roles.{r}.engine.device = 'cpu' but cluster.rollout_gpus = {gpus:g}: GPUs would be reserved "
                     "that no engine uses; set cluster.rollout_gpus = 0 or the engine's device to 'cuda'"
                     for r in engines]
    return problems


def _parallel_problems(recipe: Recipe, engines: dict[str, EngineConfig]) -> list[str]:
    """A worker's GPUs are its engines' tensor-parallel shards: tensor_parallel_size must match."""
    gpus = recipe.cluster.rollout_gpus
    problems = []
    for r, e in engines.items():
        if e.device != "cuda" or gpus == 0:
            continue
        tp = e.tensor_parallel_size
        if tp == 1 and gpus > 1 + _EPS:
            problems.append(f"roles.{r}.engine.tensor_parallel_size = 1 but cluster.rollout_gpus = {gpus:g}: an "
                            f"engine without tensor parallelism uses one GPU; set tensor_parallel_size = {gpus:g} "
                            "or cluster.rollout_gpus <= 1")
        elif tp > 1 and gpus != tp:
            problems.append(f"roles.{r}.engine.tensor_parallel_size = {tp} but cluster.rollout_gpus = {gpus:g}: a "
                            f"tensor-parallel engine needs exactly {tp} whole GPUs per worker (one bundle per shard)")
    return problems


def _workers_per_gpu(recipe: Recipe) -> int:
    """Rollout workers Ray may pack onto one device (fractional shares), at least 1."""
    gpus = recipe.cluster.rollout_gpus
    if gpus >= 1:
        return 1
    return max(1, min(recipe.cluster.rollout_workers, int(1 / gpus + _EPS)))


def _memory_problems(recipe: Recipe, engines: dict[str, EngineConfig]) -> list[str]:
    """Engines (and a colocated learner) whose memory fractions overfill one device."""
    c = recipe.cluster
    cuda = {r: e.gpu_memory_utilization for r, e in engines.items() if e.device == "cuda"}
    if not cuda or c.rollout_gpus == 0:
        return []
    per_worker = sum(cuda.values())
    workers = _workers_per_gpu(recipe)
    each = ", ".join(f"roles.{r}.engine.gpu_memory_utilization = {u:g}" for r, u in cuda.items())
    problems = []
    if per_worker * workers > MAX_GPU_MEMORY + _EPS:
        packed = (f" x {workers} workers per GPU (cluster.rollout_gpus = {c.rollout_gpus:g}, "
                  f"cluster.rollout_workers = {c.rollout_workers})" if workers > 1 else "")
        problems.append(f"engines sharing one GPU: {each}{packed} sum to {per_worker * workers:.2f} > "
                        f"{MAX_GPU_MEMORY}; vLLM refuses to start an engine when less than its fraction is free")
    if _learner_shares_rollout_gpu(recipe) and per_worker + c.learner_gpus > MAX_GPU_MEMORY + _EPS:
        problems.append(f"a learner rank (cluster.learner_gpus = {c.learner_gpus:g}) can share a GPU with a rollout "
                        f"worker (cluster.rollout_gpus = {c.rollout_gpus:g}) whose engines take {each}: "
                        f"{per_worker:g} + {c.learner_gpus:g} > {MAX_GPU_MEMORY} leaves the learner no room; "
                        "lower gpu_memory_utilization or give the learner its own GPU")
    return problems


def _learner_shares_rollout_gpu(recipe: Recipe) -> bool:
    """Fractional learner and rollout shares that Ray can place on one device."""
    c = recipe.cluster
    return (bool(recipe.trainable_roles) and 0 < c.learner_gpus < 1 and 0 < c.rollout_gpus < 1
            and c.learner_gpus + c.rollout_gpus <= 1 + _EPS)


def _learner_problems(recipe: Recipe) -> list[str]:
    """NCCL needs GPUs; GPUs need NCCL ("gloo" on GPUs moves every gradient through host memory
    and DeepSpeed's GPU path expects NCCL)."""
    gpus = recipe.cluster.learner_gpus
    problems = []
    for role in recipe.trainable_roles:
        backend = recipe.roles[role].learner.backend
        if gpus > 0 and backend == "gloo":
            problems.append(f"roles.{role}.learner.backend = 'gloo' but cluster.learner_gpus = {gpus:g}: GPU ranks "
                            "need 'nccl' (or 'auto', which picks nccl on a GPU rank)")
        elif gpus == 0 and backend == "nccl":
            problems.append(f"roles.{role}.learner.backend = 'nccl' but cluster.learner_gpus = 0: NCCL needs a GPU "
                            "per rank; use 'gloo' or 'auto', or set cluster.learner_gpus")
    return problems


def serve_problems(recipe: Recipe) -> list[str]:
    """``roles.<r>.engine.serve = "merged"`` on an engine that its roles share between adapters (or
    with the base model): merged weights serve one adapter (:func:`rollout.engine.config.serve_mode`).
    Roles share an engine as :class:`cluster.rollout_factory.RolloutWorkerFactory` builds them."""
    try:
        roles = recipe.resolve().roles
    except KeyError:  # a rollout role without a runtime: reported by the recipe's own check
        return []
    groups: dict[tuple[str, str], list] = {}
    for role in roles:
        groups.setdefault((role.model, role.engine.model_dump_json()), []).append(role)
    problems = []
    for shared in groups.values():
        try:
            serve_mode(shared[0].engine, [r.adapter for r in shared])
        except ValueError as e:
            problems.append(", ".join(f"roles.{r.name}.engine.serve" for r in shared) + f": {e}")
    return problems
