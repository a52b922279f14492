"""Assemble a run's actors from a recipe into a :class:`cluster.driver.Driver` on Ray adapters.

Order: placement groups (rollout bundles, then one group per trained role's learner ranks) -> the
run directory checked on every node that hosts a bundle ->
rollout workers created (vLLM engines; not waited for: they build while the learner ranks start) ->
learner groups (DeepSpeed worlds) -> rollout workers waited for -> weight-sync service ->
version 1 of every trained adapter published and proven on every worker (the untrained LoRA, equal
to the base model) so that no rollout ever runs on an adapter the learner did not publish. A resumed
run skips that first publish: :meth:`cluster.driver.Driver.restore` publishes the checkpoint's
adapters instead, before any rollout. The driver reaches the actors through the Ray adapters of
:mod:`cluster.ray_fleet`; a learner group one of whose ranks died is started again on its
placement group by :class:`RayLearners` (the driver's :class:`cluster.fleet.LearnerFactory`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cluster.actors import register_workers, rollout_worker_actor, start_sync_service, wait_alive
from cluster.config import Recipe
from cluster.driver import Driver
from cluster.ray_fleet import RayFleet, RaySyncClient
from cluster.learner_group import LearnerGroup
from cluster.consistency import worker_engines
from cluster.placement import (Plan, RoleSpec, bundle_nodes, bundle_strategy, create_placement_groups,
                               plan_resources, remove_placement_groups)
from cluster.storage import StorageError, check_shared
from cluster.rollout_factory import RolloutWorkerFactory
from cluster.tp_placement import rollout_groups, worker_actor_resources, worker_parallelism, worker_slot
from cluster.weight_sync import Probe

PROBE = Probe(prompt_ids=(1, 20, 30, 40, 50, 60), target_ids=(70, 80, 90, 100))
"""Fixed sync probe: small token ids, valid in every built-in tokenizer (all have > 1000 tokens)."""


def _rollout_layout(recipe: Recipe) -> tuple[int, str, str]:
    """(shards per engine, vLLM executor, device) of every rollout worker (:mod:`cluster.tp_placement`)."""
    engines = list(worker_engines(recipe).values())
    tp, backend = worker_parallelism(engines)
    return tp, backend, "cuda" if any(e.device == "cuda" for e in engines) else "cpu"


def _plan(recipe: Recipe) -> Plan:
    """Rollout groups (one shared group, or one per worker when its engines shard over Ray actors),
    then one group per trained role's learner ranks."""
    c = recipe.cluster
    tp, backend, device = _rollout_layout(recipe)
    rollout = rollout_groups(c.rollout_workers, tp, c.rollout_cpus, c.rollout_gpus, device, c.strategy, backend)
    learners = {r: RoleSpec(f"learner/{r}", c.learner_ranks, c.learner_cpus, c.learner_gpus, "PACK")
                for r in recipe.trainable_roles}
    return Plan(rollout + plan_resources(RoleSpec("rollout", 0, c.rollout_cpus), learners).groups)


class RayLearners:
    """The trained roles' learner groups of a run (``groups``: role -> group), each on its role's
    placement group (:class:`cluster.fleet.LearnerFactory`): :meth:`relaunch` replaces a group whose
    rank died, in ``groups`` itself (the sync client reads it at each export)."""

    def __init__(self, recipe: Recipe, models: Mapping[str, Path], placement: Mapping[str, Any], log) -> None:
        self.recipe, self.models, self.placement, self.log = recipe, models, placement, log
        self.groups: dict[str, LearnerGroup] = {role: self.start(role) for role in recipe.trainable_roles}

    def start(self, role: str) -> LearnerGroup:
        """``role``'s learner ranks started on its placement group (DeepSpeed world joined, model loaded)."""
        c, rt = self.recipe.cluster, self.recipe.roles[role]
        group = LearnerGroup(role, rt.learner, self.models[role], c.learner_ranks, c.learner_cpus, c.learner_gpus,
                             self.placement[f"learner/{role}"])
        self.log.event(f"learner {role}: {c.learner_ranks} rank(s), ZeRO-{rt.learner.zero_stage}, "
                       f"{rt.model}, up in {group.init_seconds:.1f}s")
        return group

    def relaunch(self, role: str) -> LearnerGroup:
        """End every rank of ``role``'s group (the dead one's bundle is free again) and start a fresh group."""
        old = self.groups.pop(role, None)  # absent when the last relaunch died starting
        if old is not None:
            old.shutdown()
        self.groups[role] = self.start(role)
        return self.groups[role]


def _start_workers(recipe: Recipe, models: Mapping[str, Path], groups: Mapping[str, Any]) -> dict[str, Any]:
    """The rollout worker actors, created on their bundles and not waited for (name -> handle)."""
    c = recipe.cluster
    factory = RolloutWorkerFactory(recipe.model_dump_json(), {r: str(p) for r, p in models.items()})
    tp, backend, _ = _rollout_layout(recipe)
    actor = rollout_worker_actor(**worker_actor_resources(tp, c.rollout_cpus, c.rollout_gpus, backend))
    root = str(recipe.run_dir() / "adapters" / "{node}")
    slots = [worker_slot(i, tp, backend) for i in range(c.rollout_workers)]
    return {f"rollout-{i}": actor.options(scheduling_strategy=bundle_strategy(groups[group], bundle))
            .remote(factory, f"rollout-{i}", root) for i, (group, bundle) in enumerate(slots)}


def build_runtime(recipe: Recipe, train_items: Sequence[Any], log, models: Mapping[str, Path],
                  publish: bool = True, eval_items: Sequence[Any] = ()) -> tuple[Driver, Callable]:
    """Start every actor of the run; returns the driver and a teardown function. ``models``: role ->
    base model directory, resolved before Ray started (:func:`cluster.models.resolve_models`).
    ``publish=False`` (resume) leaves the workers without adapters until :meth:`Driver.restore`
    publishes the checkpoint's."""
    c = recipe.cluster
    groups = create_placement_groups(_plan(recipe), timeout_s=c.placement_timeout_s or None, run_name=f"duet-{recipe.name}",
                                     autoscaling=c.autoscaling, say=log.event)
    nodes = bundle_nodes(groups)
    try:
        check_shared(recipe.run_dir(), nodes)
    except StorageError:
        remove_placement_groups(groups)
        raise
    log.event(f"run directory {recipe.run_dir()} is seen by every node of the run ({len(nodes)})")
    workers = _start_workers(recipe, models, groups)  # their engines build while the learner ranks start
    try:
        learning = RayLearners(recipe, models, groups, log)
    except BaseException:
        RayFleet(workers).kill()
        remove_placement_groups(groups)
        raise
    learners = learning.groups
    wait_alive(list(workers.values()), timeout_s=600)
    log.event(f"{len(workers)} rollout worker(s) up")
    service = start_sync_service(PROBE, tolerance=1e-4)
    register_workers(service, workers)
    fleet = RayFleet(workers)
    sync = RaySyncClient(service, learners, PROBE, {r: recipe.proof_tolerance(r) for r in recipe.trainable_roles})
    adapters = recipe.resolve().adapters()  # role -> adapter, in the rollout kind's role order
    driver = Driver(recipe, fleet, learners, sync, log, train_items, adapters, pids=fleet.pids(), relauncher=learning,
                    eval_items=eval_items)
    for role in recipe.trainable_roles if publish else ():
        driver.publish(role)

    def teardown() -> None:
        for group in learning.groups.values():  # the groups now (a restarted one replaced its role's)
            group.shutdown()
        fleet.kill()
        sync.kill()
        remove_placement_groups(groups)

    return driver, teardown
