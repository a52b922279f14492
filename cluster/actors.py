"""Ray at the edge: actor wrappers around the plain rollout worker and weight-sync service.

Nothing here holds logic the plain classes could hold: :class:`RolloutWorkerHost` builds a worker
from a factory and forwards to it (and to :class:`cluster.weight_sync.AdapterHost` for syncs);
:class:`RayTransport` is the Ray implementation of :class:`cluster.weight_sync.SyncTransport`
(``ray.put`` once unless the artifact is in the object store already, one ``sync_adapter`` call per
worker actor, ``ray.wait`` with a timeout).

Restarts: rollout-worker actors are created with ``max_restarts`` (default: unlimited), so Ray
re-runs the constructor on the same handle after the process dies; the rebuilt worker serves the
base model only until :meth:`cluster.weight_sync.WeightSyncService.catch_up` loads the current
adapters. Calls in flight when it died fail (``max_task_retries=0``: a rollout is not idempotent)
and the sync report lists the worker as unreachable. An artifact object is owned by the process
that put it (the learner's rank 0, or the service for a record passed by value) and lives while
that process does and someone holds its reference: the service keeps the latest one of each role
for :meth:`~cluster.weight_sync.WeightSyncService.catch_up`. The service actor is not restarted;
the driver recreates it and republishes.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayError

from cluster.metrics import DuetMetrics, RaySink
from cluster.weight_sync import AdapterHost, Probe, SyncAck, SyncFailure, SyncSite, WeightSyncService
from rollout.adapter_artifact import AdapterArtifact

SYNC_GROUP = "sync"
"""The rollout-worker actor's concurrency group of syncs: a sync is taken while a rollout runs (the
default group) and its load and probe join the rollout's batch (:mod:`rollout.engine.engine_loop`)
instead of waiting for it; one sync at a time, and rollouts one at a time, as before."""

NODE_PLACEHOLDER = "{node}"
"""Replaced in ``adapter_root`` by the first 12 hex digits of the node id (one directory per node
when the root is on a file system shared by several nodes)."""


class RolloutWorkerHost:
    """Body of the rollout-worker actor. ``factory()`` builds the plain worker (engines included) in
    the actor process, again after every restart: a :class:`rollout.worker.RolloutWorker` or
    anything with ``rollout`` and the :class:`cluster.weight_sync.Servable` methods."""

    def __init__(self, factory: Callable[[], Any], worker_id: str, adapter_root: str,
                 keep_versions: int = 3) -> None:
        self.worker = factory()
        node_id = ray.get_runtime_context().get_node_id()
        root = adapter_root.replace(NODE_PLACEHOLDER, node_id[:12])
        self.adapters = AdapterHost(self.worker, SyncSite(worker_id, node_id, root, keep_versions))

    def rollout(self, *args: Any, **kwargs: Any) -> Any:
        return self.worker.rollout(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        """Held-out evaluation (workers built by :mod:`cluster.rollout_factory` have it)."""
        return self.worker.evaluate(*args, **kwargs)

    @ray.method(concurrency_group=SYNC_GROUP)
    def sync_adapter(self, artifact: AdapterArtifact, probe: Probe) -> SyncAck:
        """Ray resolves ``artifact`` from the node's object store (fetched once per node)."""
        return self.adapters.sync_adapter(artifact, probe)

    @ray.method(concurrency_group=SYNC_GROUP)
    def adapter_versions(self) -> dict[str, int]:
        return dict(self.worker.adapter_versions())

    def node_id(self) -> str:
        return self.adapters.site.node_id

    def ping(self) -> str:
        return self.adapters.site.worker_id

    def pid(self) -> int:
        """Process id: changes when Ray restarts the actor."""
        return os.getpid()


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300]


class RayTransport:
    """:class:`cluster.weight_sync.SyncTransport` over rollout-worker actor handles."""

    def put(self, artifact: AdapterArtifact) -> ray.ObjectRef:
        return ray.put(artifact)

    def fanout(self, workers: Mapping[str, Any], handle: Any, probe: Probe,
               timeout_s: float) -> dict[str, SyncAck | SyncFailure]:
        """``handle``: an ObjectRef, or one in a one-element list or tuple (how the learner group
        returns it); passed bare, as a top-level argument, so Ray resolves it in each worker."""
        ref = handle[0] if isinstance(handle, (list, tuple)) else handle
        futures = {wid: w.sync_adapter.remote(ref, probe) for wid, w in workers.items()}
        if futures:
            ray.wait(list(futures.values()), num_returns=len(futures), timeout=timeout_s)
        return {wid: self._answer(wid, f) for wid, f in futures.items()}

    @staticmethod
    def _answer(worker_id: str, future: ray.ObjectRef) -> SyncAck | SyncFailure:
        try:
            return ray.get(future, timeout=0)
        except GetTimeoutError:
            try:
                ray.cancel(future)
            except RayError:
                pass
            return SyncFailure(worker_id, "timeout: no answer before the sync deadline", "timeout")
        except RayError as e:
            return SyncFailure(worker_id, f"unreachable: {_first_line(e)}", "unreachable")


def rollout_worker_actor(num_cpus: float = 1.0, num_gpus: float = 0.0, max_restarts: int = -1):
    """The rollout-worker actor class (``.options(scheduling_strategy=...).remote(factory, id, root)``)."""
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=0,
                      concurrency_groups={SYNC_GROUP: 1})(RolloutWorkerHost)


def start_sync_service(probe: Probe, tolerance: float = 1e-4, timeout_s: float = 120.0,
                       num_cpus: float = 0.0, **options: Any):
    """Start the weight-sync service actor (Ray transport, metrics exported through Ray).

    The driver calls ``service.publish.remote(StoredArtifact(role, version, group.adapter_ref(version)),
    expected_logprobs, tolerance)``: the reference rank 0 left in the object store reaches the
    service inside the :class:`~cluster.weight_sync.StoredArtifact`, and the service hands the same
    reference to every worker.
    """
    cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(WeightSyncService)
    return cls.options(**options).remote(RayTransport(), probe, tolerance, timeout_s, DuetMetrics(RaySink()))


def register_workers(service: Any, workers: Mapping[str, Any]) -> None:
    """Register worker actors with the service actor (blocks until done)."""
    ray.get([service.register.remote(wid, w) for wid, w in workers.items()])


def wait_alive(handles: Sequence[Any], timeout_s: float = 60.0) -> list[str]:
    """Ping every actor; returns their ids (raises if one is not up in ``timeout_s``)."""
    return ray.get([h.ping.remote() for h in handles], timeout=timeout_s)
