"""Ray implementations of the driver's interfaces (:mod:`cluster.fleet`): the edge where Ray meets it.

:class:`RayFleet` wraps the rollout-worker actor handles (:func:`cluster.actors.rollout_worker_actor`,
restarted by Ray after a death) and turns Ray's ``RayActorError`` into :class:`cluster.fleet.WorkerDied`.
:class:`RaySyncClient` wraps the weight-sync service actor and the learner groups: it exports a
role's adapter, scores the run's fixed probe with the learner and publishes both to the service.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ray
from ray.exceptions import RayActorError

from cluster.fleet import CallKind, WorkerDied
from cluster.weight_sync import Probe, StoredArtifact, SyncReport
from rollout.episode_arrow import EpisodeBatch

RESTART_TIMEOUT_S = 300.0
"""How long :meth:`RayFleet.wait_restart` waits for Ray to bring a dead worker back."""


class RayPending:
    """One started actor call; :meth:`result` is its ``ray.get``."""

    def __init__(self, worker_id: str, future: ray.ObjectRef) -> None:
        self.worker_id, self.future = worker_id, future

    def result(self) -> tuple[EpisodeBatch, Any]:
        try:
            return ray.get(self.future)
        except RayActorError as e:
            raise WorkerDied(self.worker_id, str(e).splitlines()[0] if str(e) else type(e).__name__) from e


class RayFleet:
    """The rollout-worker actors by id (:class:`cluster.fleet.RolloutFleet`)."""

    def __init__(self, workers: Mapping[str, Any]) -> None:
        self.workers = dict(workers)

    def worker_ids(self) -> list[str]:
        return sorted(self.workers)

    def start(self, kind: CallKind, worker_id: str, items: Sequence[Any], versions: Mapping[str, int],
              step: int, greedy_roles: Sequence[str] = ()) -> RayPending:
        handle = self.workers[worker_id]
        if kind is CallKind.ROLLOUT:
            future = handle.rollout.remote(list(items), dict(versions), step=step, greedy_roles=tuple(greedy_roles))
        else:
            future = handle.evaluate.remote(list(items), dict(versions), step=step)
        return RayPending(worker_id, future)

    def wait_restart(self, worker_id: str) -> int:
        # a call to a restarting actor fails at once (ActorUnavailableError) unless it may be retried:
        # ``pid`` (idempotent) is, so it waits for the restart instead of failing the run
        call = self.workers[worker_id].pid.options(max_task_retries=-1)
        return ray.get(call.remote(), timeout=RESTART_TIMEOUT_S)

    def pids(self) -> dict[str, int]:
        """Worker id -> process id now (asked of every worker at once)."""
        ids = self.worker_ids()
        return dict(zip(ids, ray.get([self.workers[w].pid.remote() for w in ids])))

    def kill(self) -> None:
        """End every worker for good (no restart)."""
        for handle in self.workers.values():
            ray.kill(handle, no_restart=True)


class RaySyncClient:
    """Publishes through the weight-sync service actor (:class:`cluster.fleet.SyncClient`).

    ``learners`` are the trained roles' learner groups, ``probe`` the fixed probe the service was
    started with, ``tolerances`` each role's proof bound. A publish hands the service the adapter
    where the learner's rank 0 left it in the object store (``LearnerGroup.adapter_ref``: the bytes
    go from there to the workers, never through this process). The last export of each role is
    kept, so publishing the same version again (a worker died during its sync) sends the same one.
    ``learners`` is read at each export, not copied: a learner group started again after a death
    (:class:`cluster.assemble.RayLearners`) replaces its role's entry, and is exported from then on."""

    def __init__(self, service: Any, learners: Mapping[str, Any], probe: Probe,
                 tolerances: Mapping[str, float]) -> None:
        self.service, self.learners, self.probe = service, learners, probe
        self.tolerances = dict(tolerances)
        self._exported: dict[str, tuple[int, Any, Any, list[float]]] = {}

    def publish(self, role: str, version: int) -> SyncReport:
        handle, expected = self._export(role, version)
        stored = StoredArtifact(role, version, handle)  # the identity travels beside the reference
        return ray.get(self.service.publish.remote(stored, expected, self.tolerances[role]))

    def _export(self, role: str, version: int) -> tuple[Any, list[float]]:
        """(the adapter's object-store handle, the learner's probe log-probs) of ``role`` at
        ``version``, exported once by the role's current learner group."""
        kept, learner = self._exported.get(role), self.learners[role]
        if kept is None or kept[:2] != (version, learner):
            kept = (version, learner, learner.adapter_ref(version), learner.probe_logprobs(self.probe))
            self._exported[role] = kept
        return kept[2], kept[3]

    def catch_up(self, worker_id: str) -> list[SyncReport]:
        return ray.get(self.service.catch_up.remote(worker_id))

    def served_versions(self) -> dict[str, dict[str, int]]:
        return ray.get(self.service.served_versions.remote())

    def kill(self) -> None:
        """End the service actor."""
        ray.kill(self.service)
