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

The driver runs on two small interfaces (:mod:`cluster.fleet`): a rollout fleet and a sync client,
plus the learners; it imports no Ray (the Ray implementations are in :mod:`cluster.ray_fleet`), so
its fault handling is unit-tested on fakes (``tests/test_driver.py``). A worker that dies during a
call fails it with :class:`cluster.fleet.WorkerDied`: the driver waits for its restart, catches it
up and re-runs its shard; one that dies during a sync is waited for and the same version published
again. Warm start, checkpoint and restore are driver steps too; a checkpoint keeps the rollouts in
flight and restore trains them first (:mod:`cluster.inflight`). A learner rank that dies fails its
call with :class:`cluster.fleet.LearnerDied`: the driver starts that group again, rewinds every
learner and the counts to the last checkpoint, republishes its adapters as new versions and runs
the steps since then again (:meth:`Driver.recover`, ``tests/test_driver_learner_restart.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cluster.config import Recipe
from cluster.divergence import DivergenceMonitor
from cluster.fleet import (CallKind, Learner, LearnerDied, LearnerFactory, LearnerRestartsSpent, Pending,
                           RolloutFleet, SyncClient, WorkerDied)
from cluster.metrics import mean_staleness
from cluster.plugin_faults import PluginFailed, tally
from cluster.schedule import Counters, greedy_roles_at, roles_at, shard, stale_episodes, summarize
from cluster import checkpoints, inflight
from cluster.inflight import Collected
from rollout.episode_arrow import EpisodeBatch
from rollout.guard import fault_rows

Shard = tuple[str, list[Any], Pending]
"""(worker id, the shard's items, its started call)."""


@dataclass
class Driver:
    """Drives the run's rollout ``fleet``, ``learners`` (by trained role) and ``sync`` client;
    ``log`` is a :class:`cluster.progress.RunLog`."""

    recipe: Recipe
    fleet: RolloutFleet
    learners: Mapping[str, Learner]
    sync: SyncClient
    log: Any
    train_items: Sequence[Any]
    adapters: Mapping[str, str | None]
    """Rollout role -> the adapter it serves (None: the base model), in the rollout's role order."""
    versions: dict[str, int] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    pids: dict[str, int] = field(default_factory=dict)
    """Process id of each rollout worker when last seen (a new one means its process was restarted)."""
    plugin_errors: dict[str, int] = field(default_factory=dict)
    """Plugin -> training episodes it raised on (scored 0, :mod:`cluster.plugin_faults`), over the run
    (kept in ``driver.json``; events, like the worker restarts: a learner restart does not rewind them)."""
    pending: list[Shard] | Collected | None = None
    """The next step's rollouts: calls in flight, or their batch already gathered (by a checkpoint,
    or restored from one: :mod:`cluster.inflight`)."""
    lag_base: dict[str, int] | None = None
    """Adapter versions the current batch's lag is measured against when not ``versions``: a restored
    batch's checkpoint versions (restore republishes the same weights as new numbers); until a publish."""
    relauncher: LearnerFactory | None = None
    """Starts a learner group again after one of its ranks died (None: a learner's death ends the run)."""
    at_step: int = 0
    """The next RL step to run (every step before it completed: logged, and published)."""
    warm_started: bool = False
    """The base model's evaluation and the warm start are done (kept in ``driver.json``: a run
    resumed from any checkpoint written after them, step 0's included, does not repeat them)."""
    eval_items: Sequence[Any] = ()
    """Held-out items of the evaluations every ``train.eval_every`` steps (labelled ``step_NNNNNN``)."""

    @cached_property
    def divergence(self) -> DivergenceMonitor:
        """Watches every update: skipped steps, the divergence stop and warnings (:mod:`cluster.divergence`)."""
        return DivergenceMonitor(self.recipe.train.max_skipped_steps, self.recipe.run_dir(), self.log, self.counters)

    # ---- phases ------------------------------------------------------------------------------

    def items_for(self, step: int) -> list[Any]:
        """The step's tasks (or env seeds): the next ``tasks_per_step`` of the training set, cyclic."""
        k, n = self.recipe.data.tasks_per_step, len(self.train_items)
        return [self.train_items[(step * k + i) % n] for i in range(k)]

    def launch(self, step: int) -> list[Shard]:
        """Start the step's rollouts: one shard of items per worker."""
        return self.start(CallKind.ROLLOUT, self.items_for(step), step)

    def start(self, kind: CallKind, items: Sequence[Any], step: int) -> list[Shard]:
        """Shard ``items`` over the workers (sorted by id) and start ``kind`` on each non-empty shard."""
        ids = list(self.fleet.worker_ids())
        return [(wid, part, self.call(kind, wid, part, step)) for wid, part in zip(ids, shard(list(items), len(ids)))
                if part]

    def call(self, kind: CallKind, wid: str, part: list[Any], step: int) -> Pending:
        """Start ``kind`` on worker ``wid`` with the current versions (rollouts: the step's greedy roles)."""
        r, greedy = self.recipe, ()
        if kind is CallKind.ROLLOUT:
            greedy = greedy_roles_at(r.train, tuple(self.adapters), r.trainable_roles, step)
        return self.fleet.start(kind, wid, part, dict(self.versions), step, greedy)

    def collect(self, step: int, futures: list[Shard] | Collected) -> tuple[EpisodeBatch, list]:
        """Gather every shard of the step's rollouts (see :meth:`gather`), or take the batch a
        checkpoint gathered already (:meth:`hold`); its episodes are counted produced here."""
        held = futures if isinstance(futures, Collected) else self.hold(step, futures)
        if held.step != step:
            raise RuntimeError(f"the rollouts held are step {held.step}'s, not step {step}'s")
        self.lag_base = dict(held.versions) if held is futures else None
        self.contain_faults(step, held.batch)
        self.counters.produced += len(held.batch)
        return held.batch, list(held.stats)

    def contain_faults(self, step: int, batch: EpisodeBatch) -> None:
        """Count the plugin faults of step ``step``'s ``batch``; over ``train.max_plugin_error_fraction``
        it is dropped (neither produced nor held: a checkpoint taken now leaves it out, so ``--resume``
        generates the step again) and :class:`cluster.plugin_faults.PluginFailed` raised."""
        try:
            limit = self.recipe.train.max_plugin_error_fraction
            tally(batch.episodes, self.plugin_errors, limit, f"step {step}", step)
        except PluginFailed:
            self.pending = None
            raise

    def hold(self, step: int, futures: list[Shard] | Collected) -> Collected:
        """Step ``step``'s launched rollouts, gathered (see :meth:`gather`) but not yet trained or
        counted, with the versions their lag is measured against (the current ones)."""
        if isinstance(futures, Collected):
            return futures
        results = self.gather(futures, CallKind.ROLLOUT, step)
        batch = EpisodeBatch.concat([b for b, _ in results])
        return Collected(step, batch, tuple(st for _, st in results), dict(self.versions))

    def gather(self, futures: list[Shard], kind: CallKind, step: int) -> list:
        """Each shard's result; a shard whose worker died is re-run (``kind`` again) on the restarted
        worker once it has caught up with the current adapters (no episode lost, none counted twice)."""
        results = []
        for wid, part, future in futures:
            try:
                results.append(future.result())
            except WorkerDied:
                results.append(self.retry(wid, part, kind, step))
        return results

    def retry(self, wid: str, part: list[Any], kind: CallKind, step: int):
        self.counters.retried_shards += 1
        self.log.event(f"rollout worker {wid} died during {kind.value}; waiting for its restart and "
                       f"re-running its shard")
        self.revive(wid)
        for report in self.sync.catch_up(wid):
            self.log.sync(report)
        return self.call(kind, wid, part, step).result()

    def revive(self, wid: str) -> None:
        """Wait until worker ``wid`` is restarted; count the restart once, by its new process id
        (in async mode one death can fail both a sync and the rollout call it overlapped)."""
        pid = self.fleet.wait_restart(wid)
        if self.pids.get(wid) != pid:
            self.counters.worker_restarts += 1
            self.pids[wid] = pid

    def drop_stale(self, batch: EpisodeBatch) -> EpisodeBatch:
        adapters = {r: (a or "") for r, a in self.adapters.items()}
        versions = self.lag_base or self.versions
        stale = stale_episodes(batch.episodes, versions, adapters, self.recipe.train.max_staleness)
        kept = tuple(e for e, s in zip(batch.episodes, stale) if not s)
        self.counters.dropped_stale += len(batch) - len(kept)
        self.counters.trained += len(kept)
        return EpisodeBatch(kept, batch.images)

    def staleness(self, batch: EpisodeBatch) -> dict[str, float]:
        """Role -> mean lag (current adapter version, or :attr:`lag_base`, minus generating version) of
        ``batch``'s episodes, for the roles that serve an adapter; taken before the step's update."""
        adapters = {r: a for r, a in self.adapters.items() if a}
        return mean_staleness(batch.episodes, self.lag_base or self.versions, adapters)

    def episodes_in(self, futures: list[Shard]) -> int:
        """Episodes the launched rollout calls ``futures`` will return (items x group size)."""
        return sum(len(part) for _, part, _ in futures) * self.recipe.rollout.group_size

    def publish(self, role: str) -> Any:
        """Export ``role``'s adapter as the next version, push it to every worker, prove arrival.
        Workers that died during the sync are waited for (restarted) and synced again."""
        version = self.versions.get(self.adapter_of(role), 0) + 1
        report = self.sync.publish(role, version)
        self.log.sync(report)
        dead = [f.worker_id for f in report.failures if f.kind == "unreachable"]
        for wid in dead:
            self.log.event(f"rollout worker {wid} died during the sync of {role} v{version}; waiting for "
                           f"its restart and syncing it again")
            self.revive(wid)
        if dead:  # the same version again: workers that already serve it only re-prove it
            report = self.sync.publish(role, version)
            self.log.sync(report)
        if not report.all_proven:
            raise RuntimeError(f"sync of {role} v{version} not proven on every worker: {report.failures}")
        self.versions[self.adapter_of(role)] = version
        self.lag_base = None  # a real update: lags count from the current versions again
        return report

    def adapter_of(self, role: str) -> str:
        return self.adapters[role] or role

    def evaluate(self, items: Sequence[Any], label: str, step: int) -> dict[str, float]:
        """Greedy, one sample per held-out item, sharded over the workers."""
        if not items:
            return {}
        futures = self.start(CallKind.EVALUATE, items, step)
        batch = EpisodeBatch.concat([b for b, _ in self.gather(futures, CallKind.EVALUATE, step)])
        result = summarize(batch.episodes)
        limit = self.recipe.train.max_plugin_error_fraction
        result |= fault_rows(tally(batch.episodes, None, limit, f"evaluation {label}", step))
        self.log.evaluation(label, result, batch)
        return result

    # ---- the loop ----------------------------------------------------------------------------

    def train(self, start: int, end: int, checkpoint: Callable[[int], None]) -> None:
        """RL steps ``start .. end-1``; ``checkpoint(step)`` is called when one is due. With learner
        restarts (:meth:`restartable`) a run starting at step 0 checkpoints there first, and a
        learner's death rewinds the run to its last checkpoint (:meth:`recover`) and goes on from it."""
        if self.restartable() and start == 0 < end:
            checkpoint(0)
        step = start
        while step < end:
            try:
                return self.steps(step, end, checkpoint)
            except LearnerDied as died:
                step = self.recover(died)

    def steps(self, start: int, end: int, checkpoint: Callable[[int], None]) -> None:
        """The loop proper: RL steps ``start .. end-1`` (``at_step`` follows it)."""
        train, trainable = self.recipe.train, self.recipe.trainable_roles
        self.at_step = start
        if start < end and self.pending is None:  # (restore may hold the step's batch already)
            self.pending = self.launch(start)
        for step in range(start, end):
            t0 = time.perf_counter()
            batch, stats = self.collect(step, self.pending)
            produced, in_flight, self.pending = len(batch), 0, None
            if train.mode == "async" and step + 1 < end:
                self.pending = self.launch(step + 1)  # generation of t+1 overlaps the update of t
                in_flight = self.episodes_in(self.pending)
            batch = self.drop_stale(batch)
            self.log.loop(step, produced, produced - len(batch), self.staleness(batch), in_flight)
            t_sample = time.perf_counter() - t0
            updates, syncs = {}, {}
            for role in roles_at(train, trainable, step):
                updates[role] = self.learners[role].train_step(batch)
                if self.divergence.update(role, step, updates[role]):  # all skipped: nothing new to publish
                    syncs[role] = self.publish(role)
            if train.mode == "sync" and step + 1 < end:
                self.pending = self.launch(step + 1)
            self.log.step(step, batch, stats, updates, syncs, dict(self.versions),
                          {"time/sample": t_sample, "time/step": time.perf_counter() - t0})
            self.at_step = step + 1
            self.divergence.stop_if_diverged()  # train.max_skipped_steps skipped updates in a row
            if train.checkpoint_every and (step + 1) % train.checkpoint_every == 0:
                checkpoint(step + 1)
            if train.eval_every and (step + 1) % train.eval_every == 0 and step + 1 < end:
                self.evaluate(self.eval_items, f"step_{step + 1:06d}", step + 1)  # the last: after_rl

    # ---- a learner's death -------------------------------------------------------------------

    def restartable(self) -> bool:
        """Whether a learner's death is survived: a relauncher and ``train.max_learner_restarts`` > 0."""
        return self.relauncher is not None and self.recipe.train.max_learner_restarts > 0

    def recover(self, died: LearnerDied) -> int:
        """After ``died``: the rollouts in flight discarded, the dead group started again, every learner
        and the counts rewound to the last checkpoint (:meth:`restart`), the run log's step rows from
        there dropped (they are run again); returns the checkpoint's step, where the loop goes on.
        A death during the recovery itself is one more restart."""
        reached, produced = self.at_step, self.counters.produced
        self.discard_in_flight()
        while True:
            try:
                start = self.restart(died)
                break
            except LearnerDied as again:
                died = again
        c = self.counters
        c.steps_replayed += reached - start
        self.divergence.rewind()  # skips before the restart do not add to the replay's
        c.episodes_discarded += produced - c.produced
        if isinstance(self.pending, Collected):  # the checkpoint's held batch: trained again, not discarded
            c.episodes_discarded -= len(self.pending.batch)
        self.log.rewind(start, {"learner_restarts": c.learner_restarts, "steps_replayed": c.steps_replayed})
        self.log.event(f"learner restart {c.learner_restarts}: back at step {start}, running the "
                       f"{reached - start} step(s) since the checkpoint again")
        return start

    def restart(self, died: LearnerDied) -> int:
        """Start ``died.role``'s group again (within ``train.max_learner_restarts``) and :meth:`restore`
        the last checkpoint into every learner: adapter, optimizer, scheduler, RNG, reward normaliser,
        the adapters republished as new versions (proven on every worker), the counts of the
        checkpoint except the faults (:data:`Counters.FAULTS`); returns the checkpoint's step."""
        budget, c = self.recipe.train.max_learner_restarts, self.counters
        if not self.restartable() or c.learner_restarts >= budget:
            raise LearnerRestartsSpent(f"{died}; learner restarts spent ({c.learner_restarts} of "
                                       f"train.max_learner_restarts = {budget}); the last checkpoint is in "
                                       f"{self.recipe.run_dir() / 'checkpoints'} (--resume continues)") from died
        c.learner_restarts += 1
        self.log.event(f"{died}; starting it again ({c.learner_restarts} of {budget}) from the last checkpoint")
        self.learners = {**self.learners, died.role: self.relauncher.relaunch(died.role)}
        faults = c.faults()
        try:
            return self.restore(self.recipe.run_dir())
        finally:
            c.restore(faults)

    def discard_in_flight(self) -> None:
        """Collect the rollouts launched before a learner's death and throw them away (generated for a
        history that is discarded; counted as ``episodes_discarded``); a worker that died meanwhile
        is waited for (its restart counted). A batch a checkpoint already gathered is thrown away too."""
        if isinstance(self.pending, Collected):
            self.counters.episodes_discarded += len(self.pending.batch)
        for wid, _, future in () if isinstance(self.pending, Collected) else self.pending or ():
            try:
                self.counters.episodes_discarded += len(future.result()[0])
            except WorkerDied:
                self.revive(wid)
        self.pending = None

    # ---- warm start, checkpoint, restore -----------------------------------------------------

    def warm_start(self, examples: Mapping[str, Sequence[Any]]) -> None:
        """Supervised steps on ``examples`` (trained role -> reference examples, from
        :func:`cluster.sft_data.sft_examples_for`) for each trained role, then publish the results."""
        for role in self.recipe.trainable_roles:
            self.sft_role(role, list(examples[role]))
            self.publish(role)

    def sft_role(self, role: str, examples: list[Any]) -> None:
        """``train.sft.steps`` steps of ``train.sft.batch_size`` examples each, cycling through them."""
        sft = self.recipe.train.sft
        self.log.sft_begin(role, sft.steps)
        for step in range(sft.steps):
            k = (step * sft.batch_size) % len(examples)
            m = self.learners[role].sft_step((examples + examples)[k: k + sft.batch_size])
            self.log.sft_step(role, step, sft.steps, m.loss)
            self.divergence.sft_step(role, step, m)  # a skipped (non-finite) step: one event

    def checkpoint(self, run_dir: Path, step: int) -> None:
        """Save every learner under ``checkpoints/step_NNNNNN/<role>``, the driver's state as its
        ``driver.json`` (step, versions, counters), and point ``checkpoints/LATEST`` at it. Rollouts
        launched for step ``step`` but not yet trained are gathered first (the step would wait for
        them anyway), held as its batch and saved too (``in_flight``, :mod:`cluster.inflight`)."""
        directory = run_dir / "checkpoints" / f"step_{step:06d}"
        if self.pending is not None:
            self.pending = self.hold(step, self.pending)
        for role, group in self.learners.items():
            group.save_checkpoint(directory / role)
        state = {"step": step, "versions": self.versions, "counters": vars(self.counters),
                 "warm_started": self.warm_started, "plugin_errors": self.plugin_errors}
        if self.pending is not None:  # absent: nothing in flight (and older checkpoints)
            state["in_flight"] = inflight.save(directory, self.pending)
        (directory / "driver.json").write_text(json.dumps(state))
        checkpoints.commit(run_dir, directory)  # its manifest (sha256 of every file), then LATEST
        self.log.event(f"checkpoint {directory}")

    def restore(self, run_dir: Path) -> int:
        """Load the latest checkpoint into the learners and the driver's state, republish the
        learners' adapters (each as its next version); returns the checkpoint's step."""
        directory = checkpoints.usable_checkpoint(run_dir, self.log.event)  # newest whole one
        state = json.loads((directory / "driver.json").read_text())
        for role, group in self.learners.items():
            group.load_checkpoint(directory / role)
        self.counters.restore(state["counters"])
        self.warm_started = state.get("warm_started", True)  # older versions checkpointed after it only
        for plugin, n in state.get("plugin_errors", {}).items():  # events: kept, never rewound (a replay adds)
            self.plugin_errors[plugin] = max(self.plugin_errors.get(plugin, 0), n)
        for role in self.learners:
            adapter = self.adapter_of(role)
            self.versions[adapter] = max(self.versions.get(adapter, 0), state["versions"].get(adapter, 0))
            self.publish(role)
        self.pending = inflight.load(directory, state.get("in_flight"))
        held = f", training first the {len(self.pending.batch)} episodes in flight at it" if self.pending else ""
        self.log.event(f"resumed from {directory} at step {state['step']}{held}")
        return int(state["step"])
