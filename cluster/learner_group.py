"""The Ray backend of a learner group: one Ray actor per data-parallel rank.

:class:`RankActor` is the Ray body of one rank: it joins the world (:meth:`RankActor.setup`) and
then runs whatever capability function the group sends (:meth:`RankActor.run`, ``fn(rank, *args)``);
:class:`RayRanks` is the :class:`learner.group.Ranks` over those actors and :class:`LearnerGroup`
the facade (:class:`learner.group.LearnerGroup`) on them. Arguments go into the object store once
for all ranks; a result kept on its rank (:meth:`RayRanks.keep`, the adapter artifact) is put there
by rank 0's actor and only its reference travels.
Rendezvous: rank 0's actor reports its node IP and a free port there, then every rank joins the
world at that address concurrently.

The actor is where Ray meets the learner: it reads its GPU ids (``ray.get_gpu_ids()``) and
``CUDA_VISIBLE_DEVICES`` once and hands the rank its device and backend (:mod:`learner.device`).
"""

from __future__ import annotations

import os
import socket
from functools import partial
from pathlib import Path
from typing import Any, Callable

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from learner import group
from learner.config import LearnerConfig
from learner.device import RankDevice, gpus_shared, noset_visible_devices, rank_device

__all__ = ["RankActor", "RayRanks", "LearnerGroup", "actor_device"]


def actor_device(backend: str, rank: int, shares_gpu: bool) -> RankDevice:
    """This Ray actor's device: from its GPU ids, its ``CUDA_VISIBLE_DEVICES`` and Ray's
    ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` (read here, at the edge)."""
    return rank_device(backend, rank, ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                       noset_visible_devices(os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES")),
                       shares_gpu=shares_gpu)


class RankActor:
    """Ray body of one rank. Construction is cheap; :meth:`setup` joins the world and loads the model."""

    def __init__(self) -> None:
        self.rank = None

    def address(self) -> tuple[str, int]:
        """(node IP, a free TCP port on this node) for the world's rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def gpu_placement(self) -> tuple[str, list[str]]:
        """(node id, GPU ids) of this actor: the group checks whether two ranks share a GPU."""
        return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]

    def setup(self, config: LearnerConfig, rank: int, world_size: int, addr: str, port: int,
              model_dir: str, shares_gpu: bool = False) -> float:
        from learner.rank import LearnerRank

        device = actor_device(config.backend, rank, shares_gpu)
        self.rank = LearnerRank(config, rank, world_size, addr, port, model_dir, device)
        return self.rank.init_seconds

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(rank, *args)`` on this actor's rank."""
        return fn(self.rank, *args)


def _put(fn: Callable[..., Any], rank: Any, *args: Any) -> list[ray.ObjectRef] | None:
    """``fn(rank, *args)`` put into the object store by this actor: [its reference], or None."""
    out = fn(rank, *args)
    return None if out is None else [ray.put(out)]


def _placement(pg: PlacementGroup | None, bundle: int) -> dict[str, Any]:
    if pg is None:
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)}


class RayRanks:
    """The ranks of one learner group as Ray actors (a :class:`learner.group.Ranks`): ``ranks``
    actors of ``num_cpus``/``num_gpus`` each, in bundles ``first_bundle ..`` of ``placement_group``."""

    def __init__(self, config: LearnerConfig, model_dir: str | Path, ranks: int, num_cpus: float, num_gpus: float,
                 placement_group: PlacementGroup | None = None, first_bundle: int = 0) -> None:
        cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(RankActor)
        self.actors = [cls.options(**_placement(placement_group, first_bundle + i)).remote() for i in range(ranks)]
        addr, port = ray.get(self.actors[0].address.remote())
        shared = gpus_shared(ray.get([a.gpu_placement.remote() for a in self.actors]))
        self.init_seconds = max(ray.get([
            a.setup.remote(config, i, ranks, addr, port, str(model_dir), shared) for i, a in enumerate(self.actors)
        ]))

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(rank, *args)`` on every actor; every rank is waited for (ray.get raises a rank's error)."""
        refs = [ray.put(a) for a in args]  # one copy in the object store for all ranks
        return ray.get([actor.run.remote(fn, *refs) for actor in self.actors])

    def keep(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """:meth:`run` whose non-None results each actor puts into the object store: [ObjectRef] or None."""
        return self.run(partial(_put, fn), *args)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)


class LearnerGroup(group.LearnerGroup):
    """A :class:`learner.group.LearnerGroup` on :class:`RayRanks` (``role`` names it in logs)."""

    def __init__(self, role: str, config: LearnerConfig, model_dir: str | Path, ranks: int,
                 num_cpus: float, num_gpus: float, placement_group: PlacementGroup | None = None,
                 first_bundle: int = 0) -> None:
        self.role = role
        super().__init__(RayRanks(config, model_dir, ranks, num_cpus, num_gpus, placement_group, first_bundle))
