"""The driver loop: sample -> score -> update -> sync, one short function per phase.

Scoring happens inside the rollout workers (each episode leaves its worker with its reward and
every reward component); advantages are computed by the learner from the episodes (its estimator
may need critic values), so the loop itself is::

    for step in steps:
        batch  = sample(step)                      # G episodes per task, stamped with versions
        for role in roles trained this step:       # "joint" or IMMO's "alternating"
            metrics[role] = learner[role].train_step(batch)
            sync(role)                             # publish, push to every worker, prove
        log, checkpoint

In async mode the rollouts of step t+1 are launched before the update of step t, so generation
overlaps training; their episodes were generated one version behind and are dropped (and counted)
when they lag the learner by more than ``train.max_staleness`` versions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import ray
from ray.exceptions import RayActorError

from cluster.adapter_store import AdapterPayload
from cluster.config import Recipe
from cluster.metrics import mean_staleness
from cluster.schedule import Counters, greedy_roles_at, roles_at, shard, stale_episodes, summarize
from rollout.episode_arrow import EpisodeBatch


@dataclass
class Driver:
    """Holds the run's actors and drives them. ``workers`` are rollout-worker actor handles,
    ``learners`` :class:`cluster.learner_group.LearnerGroup` by role, ``sync`` the weight-sync
    service actor, ``log`` a :class:`cluster.progress.RunLog`."""

    recipe: Recipe
    workers: dict[str, Any]
    learners: dict[str, Any]
    sync: Any
    log: Any
    train_items: Sequence[Any]
    versions: dict[str, int] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    pids: dict[str, int] = field(default_factory=dict)
    """Process id of each rollout worker when last seen (a new one means Ray restarted it)."""

    # ---- phases ------------------------------------------------------------------------------

    def items_for(self, step: int) -> list[Any]:
        """The step's tasks (or env seeds): the next ``tasks_per_step`` of the training set, cyclic."""
        k, n = self.recipe.data.tasks_per_step, len(self.train_items)
        return [self.train_items[(step * k + i) % n] for i in range(k)]

    def launch(self, step: int) -> list[tuple[str, list[Any], Any]]:
        """Start the step's rollouts: one shard of items per worker."""
        shards = shard(self.items_for(step), len(self.workers))
        kwargs = self.call_kwargs("rollout", step)
        return [(wid, part, self.workers[wid].rollout.remote(part, dict(self.versions), **kwargs))
                for wid, part in zip(sorted(self.workers), shards) if part]

    def call_kwargs(self, method: str, step: int) -> dict[str, Any]:
        """Keyword arguments of a worker's ``rollout`` / ``evaluate`` call at ``step``."""
        if method != "rollout":
            return {"step": step}
        r = self.recipe
        return {"step": step, "greedy_roles": greedy_roles_at(r.train, tuple(r.rollout.roles()), r.trainable_roles, step)}

    def collect(self, step: int, futures: list[tuple[str, list[Any], Any]]) -> tuple[EpisodeBatch, list]:
        """Gather every shard of the step's rollouts (see :meth:`gather`)."""
        results = self.gather(futures, "rollout", step)
        batch = EpisodeBatch.concat([b for b, _ in results])
        self.counters.produced += len(batch)
        return batch, [st for _, st in results]

    def gather(self, futures: list[tuple[str, list[Any], Any]], method: str, step: int) -> list:
        """``ray.get`` each shard's call; a shard whose worker died is re-run (``method`` again) on the
        restarted worker once it has caught up with the current adapters (no episode lost, none
        counted twice)."""
        results = []
        for wid, part, future in futures:
            try:
                results.append(ray.get(future))
            except RayActorError:
                results.append(self.retry(wid, part, method, step))
        return results

    def retry(self, wid: str, part: list[Any], method: str, step: int):
        self.counters.retried_shards += 1
        self.log.event(f"rollout worker {wid} died during {method}; waiting for its restart and "
                       f"re-running its shard")
        self.revive(wid)
        for report in ray.get(self.sync.catch_up.remote(wid)):
            self.log.sync(report)
        call = getattr(self.workers[wid], method)
        return ray.get(call.remote(part, dict(self.versions), **self.call_kwargs(method, step)))

    def revive(self, wid: str) -> None:
        """Wait until Ray has restarted worker ``wid``; count the restart once, by its new process id
        (in async mode one death can fail both a sync and the rollout call it overlapped)."""
        # a call to a restarting actor fails at once (ActorUnavailableError) unless it may be retried:
        # ``pid`` (idempotent) is, so it waits for the restart instead of failing the run
        pid = ray.get(self.workers[wid].pid.options(max_task_retries=-1).remote(), timeout=300)
        if self.pids.get(wid) != pid:
            self.counters.worker_restarts += 1
            self.pids[wid] = pid

    def drop_stale(self, batch: EpisodeBatch) -> EpisodeBatch:
        adapters = {r: (c.adapter or "") for r, c in self.recipe.rollout.roles().items()}
        stale = stale_episodes(batch.episodes, self.versions, adapters, self.recipe.train.max_staleness)
        kept = tuple(e for e, s in zip(batch.episodes, stale) if not s)
        self.counters.dropped_stale += len(batch) - len(kept)
        self.counters.trained += len(kept)
        return EpisodeBatch(kept, batch.images)

    def staleness(self, batch: EpisodeBatch) -> dict[str, float]:
        """Role -> mean lag (current adapter version minus generating version) of ``batch``'s episodes,
        for the roles that serve an adapter; taken before the step's update (0 in sync mode)."""
        adapters = {r: c.adapter for r, c in self.recipe.rollout.roles().items() if c.adapter}
        return mean_staleness(batch.episodes, self.versions, adapters)

    def episodes_in(self, futures: list[tuple[str, list[Any], Any]]) -> int:
        """Episodes the launched rollout calls ``futures`` will return (items x group size)."""
        return sum(len(part) for _, part, _ in futures) * self.recipe.rollout.group_size

    def publish(self, role: str) -> Any:
        """Export ``role``'s adapter as the next version, push it to every worker, prove arrival.
        Workers that died during the sync are waited for (Ray restarts them) and synced again."""
        version = self.versions.get(self.adapter_of(role), 0) + 1
        learner = self.learners[role]
        payload = AdapterPayload.from_files(learner.adapter_files(version))
        expected = learner.probe_logprobs(ray.get(self.sync.get_probe.remote()))
        tolerance = self.recipe.proof_tolerance(role)
        report = ray.get(self.sync.publish.remote(payload, expected, tolerance))
        self.log.sync(report)
        dead = [f.worker_id for f in report.failures if f.kind == "unreachable"]
        for wid in dead:
            self.log.event(f"rollout worker {wid} died during the sync of {role} v{version}; waiting for "
                           f"its restart and syncing it again")
            self.revive(wid)
        if dead:  # the same version again: workers that already serve it only re-prove it
            report = ray.get(self.sync.publish.remote(payload, expected, tolerance))
            self.log.sync(report)
        if not report.all_proven:
            raise RuntimeError(f"sync of {role} v{version} not proven on every worker: {report.failures}")
        self.versions[self.adapter_of(role)] = version
        return report

    def adapter_of(self, role: str) -> str:
        return self.recipe.rollout.roles()[role].adapter or role

    def evaluate(self, items: Sequence[Any], label: str, step: int) -> dict[str, float]:
        """Greedy, one sample per held-out item, sharded over the workers."""
        if not items:
            return {}
        parts = shard(list(items), len(self.workers))
        futures = [(w, p, self.workers[w].evaluate.remote(p, dict(self.versions), step=step))
                   for w, p in zip(sorted(self.workers), parts) if p]
        batch = EpisodeBatch.concat([b for b, _ in self.gather(futures, "evaluate", step)])
        result = summarize(batch.episodes)
        self.log.evaluation(label, result, batch)
        return result

    # ---- the loop ----------------------------------------------------------------------------

    def train(self, start: int, end: int, checkpoint) -> None:
        """RL steps ``start .. end-1``; ``checkpoint(step)`` is called when one is due."""
        train, trainable = self.recipe.train, self.recipe.trainable_roles
        pending = self.launch(start) if start < end else None
        for step in range(start, end):
            t0 = time.perf_counter()
            batch, stats = self.collect(step, pending)
            produced, in_flight = len(batch), 0
            if train.mode == "async" and step + 1 < end:
                pending = self.launch(step + 1)  # generation of t+1 overlaps the update of t
                in_flight = self.episodes_in(pending)
            batch = self.drop_stale(batch)
            self.log.loop(step, produced, produced - len(batch), self.staleness(batch), in_flight)
            t_sample = time.perf_counter() - t0
            updates, syncs = {}, {}
            for role in roles_at(train, trainable, step):
                updates[role] = self.learners[role].train_step(batch)
                syncs[role] = self.publish(role)
            if train.mode == "sync" and step + 1 < end:
                pending = self.launch(step + 1)
            self.log.step(step, batch, stats, updates, syncs, dict(self.versions),
                          {"time/sample": t_sample, "time/step": time.perf_counter() - t0})
            if train.checkpoint_every and (step + 1) % train.checkpoint_every == 0:
                checkpoint(step + 1)
