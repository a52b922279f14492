"""The Ray backend of a learner group: one Ray actor per data-parallel rank.

:class:`RankActor` is the Ray body of one rank: it joins the world (:meth:`RankActor.setup`) and
then runs whatever capability function the group sends (:meth:`RankActor.run`, ``fn(rank, *args)``);
:class:`RayRanks` is the :class:`learner.group.Ranks` over those actors and :class:`LearnerGroup`
the facade (:class:`learner.group.LearnerGroup`) on them. Arguments go into the object store once
for all ranks; a result kept on its rank (:meth:`RayRanks.keep`, the adapter artifact) is put there
by rank 0's actor and only its reference travels.
Rendezvous: rank 0's actor reports its node IP and a free port there, then every rank joins the
world at that address concurrently.

A rank whose process dies fails the group's call with :class:`cluster.fleet.LearnerDied` (Ray's
``RayActorError``, or the error of a rank whose peer died under it in a collective, translated
here); the ranks are waited for one by one, so a rank left blocked in a collective with a dead
peer does not hang the call. The actors are not restarted by Ray (a world cannot take a new
member): the driver replaces the whole group (:class:`cluster.assemble.RayLearners`).

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
from ray.exceptions import RayActorError
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.fleet import LearnerDied
from learner import group
from learner.config import LearnerConfig
from learner.device import RankDevice, gpus_shared, noset_visible_devices, rank_device

__all__ = ["RankActor", "RayRanks", "LearnerGroup", "actor_device"]

PING_TIMEOUT_S = 10.0
"""How long :meth:`RayRanks.dead` waits for each rank to answer after a rank's call failed."""


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

    def ping(self) -> int:
        """This actor's process id (answers when the actor is alive and idle)."""
        return os.getpid()


def _put(fn: Callable[..., Any], rank: Any, *args: Any) -> list[ray.ObjectRef] | None:
    """``fn(rank, *args)`` put into the object store by this actor: [its reference], or None."""
    out = fn(rank, *args)
    return None if out is None else [ray.put(out)]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].rstrip(".") if text else type(e).__name__


def _placement(pg: PlacementGroup | None, bundle: int) -> dict[str, Any]:
    if pg is None:
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)}


class RayRanks:
    """The ranks of one learner group as Ray actors (a :class:`learner.group.Ranks`): ``ranks``
    actors of ``num_cpus``/``num_gpus`` each, in bundles ``first_bundle ..`` of ``placement_group``;
    ``role`` names the group in :class:`cluster.fleet.LearnerDied`."""

    def __init__(self, config: LearnerConfig, model_dir: str | Path, ranks: int, num_cpus: float, num_gpus: float,
                 placement_group: PlacementGroup | None = None, first_bundle: int = 0, role: str = "learner") -> None:
        self.role = role
        cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(RankActor)
        self.actors = [cls.options(**_placement(placement_group, first_bundle + i)).remote() for i in range(ranks)]
        try:
            addr, port = self.gather([self.actors[0].address.remote()])[0]
            shared = gpus_shared(self.gather([a.gpu_placement.remote() for a in self.actors]))
            self.init_seconds = max(self.gather([
                a.setup.remote(config, i, ranks, addr, port, str(model_dir), shared) for i, a in enumerate(self.actors)
            ]))
        except BaseException:
            self.close()  # a half-started world frees its bundles
            raise

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(rank, *args)`` on every actor; every rank is waited for (see :meth:`gather`)."""
        refs = [ray.put(a) for a in args]  # one copy in the object store for all ranks
        return self.gather([actor.run.remote(fn, *refs) for actor in self.actors])

    def gather(self, futures: list[ray.ObjectRef]) -> list[Any]:
        """The ranks' results in rank order. The first failure is raised as soon as it is seen: a
        dead rank (or a rank failing while a peer is dead) as :class:`cluster.fleet.LearnerDied`,
        any other error as it is."""
        waiting = list(futures)
        try:
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1)
                ray.get(done)
            return ray.get(futures)
        except RayActorError as e:
            raise LearnerDied(self.role, _first_line(e)) from e
        except Exception as e:
            if self.dead():
                raise LearnerDied(self.role, f"a rank died; another one failed: {_first_line(e)}") from e
            raise

    def dead(self) -> bool:
        """Whether a rank's actor is dead (each is pinged; one that does not answer in
        :data:`PING_TIMEOUT_S` is busy, not dead)."""
        pings = [a.ping.remote() for a in self.actors]
        done, _ = ray.wait(pings, num_returns=len(pings), timeout=PING_TIMEOUT_S)
        for ref in done:
            try:
                ray.get(ref)
            except RayActorError:
                return True
        return False

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
        super().__init__(RayRanks(config, model_dir, ranks, num_cpus, num_gpus, placement_group, first_bundle, role))
