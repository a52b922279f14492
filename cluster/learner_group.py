"""A learner group on Ray: the DeepSpeed data-parallel ranks of one trained role, one actor each.

The plain :class:`learner.rank.LearnerRank` does the work; :class:`LearnerActor` is its Ray body
and :class:`LearnerGroup` calls every rank with the same arguments (DeepSpeed collectives need all
ranks) and returns rank 0's answer: the other ranks answer None (every rank's answer is the same
global result), so only rank 0's result -- the adapter's bytes above all -- travels to the caller.
Rendezvous: rank 0's actor reports its node IP and a free port there, then every rank joins the
world at that address concurrently.

The actor is where Ray meets the learner: it reads its GPU ids (``ray.get_gpu_ids()``) and
``CUDA_VISIBLE_DEVICES`` once and hands the rank its device and backend (:mod:`learner.device`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.util.placement_group import PlacementGroup
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.weight_sync import Probe
from learner.config import LearnerConfig
from learner.device import RankDevice, gpus_shared, noset_visible_devices, rank_device
from learner.sft import SFTExample
from rollout.episode_arrow import EpisodeBatch
from rollout.types import Episode, Turn


def probe_batch(probe: Probe, role: str) -> EpisodeBatch:
    """The probe as a one-turn episode of ``role``, so the learner scores exactly its target ids."""
    turn = Turn(role=role, prompt_ids=probe.prompt_ids, output_ids=probe.target_ids,
                output_logprobs=(0.0,) * len(probe.target_ids), adapter_version=0)
    return EpisodeBatch((Episode("probe", "probe", "probe", (turn,)),))


def actor_device(backend: str, rank: int, shares_gpu: bool) -> RankDevice:
    """This Ray actor's device: from its GPU ids, its ``CUDA_VISIBLE_DEVICES`` and Ray's
    ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` (read here, at the edge)."""
    return rank_device(backend, rank, ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                       noset_visible_devices(os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES")),
                       shares_gpu=shares_gpu)


class LearnerActor:
    """Ray body of one rank. Construction is cheap; :meth:`setup` joins the world and loads the model.
    Every method answers None on ranks other than 0 (see the module doc)."""

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

    def _rank0(self, value: Any) -> Any:
        return value if self.rank.rank == 0 else None

    def train_step(self, batch: EpisodeBatch) -> dict[str, float] | None:
        return self._rank0(self.rank.train_step(batch))

    def sft_step(self, examples: Sequence[SFTExample]) -> dict[str, float] | None:
        return self._rank0(self.rank.sft_step(examples))

    def adapter_files(self, version: int) -> dict[str, bytes] | None:
        return self.rank.adapter_files(version)  # None on ranks > 0 (they only join the gather)

    def probe_logprobs(self, probe: Probe) -> list[float] | None:
        return self._rank0(self.rank.logprobs(probe_batch(probe, self.rank.config.role))[0])

    def save_checkpoint(self, directory: str) -> str | None:
        return self._rank0(self.rank.save_checkpoint(directory))

    def load_checkpoint(self, directory: str) -> None:
        self.rank.load_checkpoint(directory)


def rank0_result(refs: Sequence[ray.ObjectRef]) -> Any:
    """Rank 0's result of one collective call. Every rank is waited for; ranks > 0 answer None, so
    nothing of theirs is moved (Ray inlines such small replies with the task's completion), and
    getting them still raises a rank's error instead of hiding it."""
    results = ray.get(list(refs))
    if any(r is not None for r in results[1:]):
        raise RuntimeError("learner ranks > 0 returned results; only rank 0's are expected")
    return results[0]


class LearnerGroup:
    """All ranks of one role's learner. Every method runs on every rank and returns rank 0's result."""

    def __init__(self, role: str, config: LearnerConfig, model_dir: str | Path, ranks: int,
                 num_cpus: float, num_gpus: float, placement_group: PlacementGroup | None = None,
                 first_bundle: int = 0) -> None:
        self.role = role
        cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(LearnerActor)
        self.actors = [cls.options(**self._placement(placement_group, first_bundle + i)).remote()
                       for i in range(ranks)]
        addr, port = ray.get(self.actors[0].address.remote())
        shared = gpus_shared(ray.get([a.gpu_placement.remote() for a in self.actors]))
        self.init_seconds = max(ray.get([
            a.setup.remote(config, i, ranks, addr, port, str(model_dir), shared) for i, a in enumerate(self.actors)
        ]))

    @staticmethod
    def _placement(pg: PlacementGroup | None, bundle: int) -> dict[str, Any]:
        if pg is None:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle)}

    def train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        ref = ray.put(batch)  # one copy in the object store for all ranks
        return rank0_result([a.train_step.remote(ref) for a in self.actors])

    def sft_step(self, examples: Sequence[SFTExample]) -> dict[str, float]:
        ref = ray.put(list(examples))
        return rank0_result([a.sft_step.remote(ref) for a in self.actors])

    def adapter_files(self, version: int) -> dict[str, bytes]:
        """Rank 0's adapter files (every rank joins the gather; only rank 0's bytes are fetched)."""
        return rank0_result([a.adapter_files.remote(version) for a in self.actors])

    def probe_logprobs(self, probe: Probe) -> list[float]:
        return rank0_result([a.probe_logprobs.remote(probe) for a in self.actors])

    def save_checkpoint(self, directory: str | Path) -> str:
        return rank0_result([a.save_checkpoint.remote(str(directory)) for a in self.actors])

    def load_checkpoint(self, directory: str | Path) -> None:
        ray.get([a.load_checkpoint.remote(str(directory)) for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
