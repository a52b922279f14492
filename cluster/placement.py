"""Resource planning: actor counts -> Ray placement groups, with a fit check that explains itself.

:func:`plan_resources` is pure arithmetic (unit-tested): one placement group for the rollout
workers and one per learner role, one bundle per actor. :func:`check_fits` simulates placing the
bundles on the nodes' capacities and raises :class:`PlanDoesNotFit` naming what is needed and what
is there. :func:`create_placement_groups` is the Ray part (Ray is imported inside it only).

GPUs: a bundle asks for ``GPU`` only when its role is configured with ``gpus > 0`` (fractions in
(0, 1] share a device, e.g. vLLM + learner colocated; larger values must be whole devices, as Ray
requires). This machine has no GPU: only the CPU path is exercised by the tests here; the GPU
arithmetic is unit-tested but has not been scheduled on a real GPU cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Ray placement strategies. PACK/SPREAD are best effort; STRICT_* fail if they cannot be met."""
_EPS = 1e-9


class PlanDoesNotFit(RuntimeError):
    """The cluster cannot host the plan; the message says what was needed and what is available."""


@dataclass(frozen=True)
class RoleSpec:
    """``count`` identical actors, each needing ``cpus`` CPUs and ``gpus`` GPUs."""

    name: str
    count: int
    cpus: float = 1.0
    gpus: float = 0.0
    strategy: str = "PACK"

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"RoleSpec {self.name}: count must be >= 0, got {self.count}")
        if self.cpus < 0 or self.gpus < 0 or self.cpus + self.gpus <= 0:
            raise ValueError(f"RoleSpec {self.name}: need cpus, gpus >= 0 and not both 0, got "
                             f"cpus={self.cpus} gpus={self.gpus}")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ValueError(f"RoleSpec {self.name}: gpus > 1 must be a whole number, got {self.gpus}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"RoleSpec {self.name}: strategy must be one of {STRATEGIES}, got {self.strategy!r}")

    def bundle(self) -> dict[str, float]:
        """Ray bundle of one actor (zero-valued resources left out, as Ray requires)."""
        b = {"CPU": float(self.cpus), "GPU": float(self.gpus)}
        return {k: v for k, v in b.items() if v > 0}


@dataclass(frozen=True)
class GroupPlan:
    """One placement group: ``bundles[i]`` hosts actor i of the group."""

    name: str
    bundles: tuple[Mapping[str, float], ...]
    strategy: str

    def total(self) -> dict[str, float]:
        return _sum(self.bundles)


@dataclass(frozen=True)
class Plan:
    """All placement groups of a run, in creation order."""

    groups: tuple[GroupPlan, ...]

    def total(self) -> dict[str, float]:
        """Resources summed over every bundle of every group."""
        return _sum(b for g in self.groups for b in g.bundles)

    def group(self, name: str) -> GroupPlan:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no placement group {name!r} (have {[g.name for g in self.groups]})")


def _sum(bundles) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def plan_resources(rollout: RoleSpec, learners: Mapping[str, RoleSpec] | None = None) -> Plan:
    """Group ``"rollout"`` (``rollout.count`` bundles) then ``"learner/<role>"`` per learner role.

    Roles with count 0 get no group. Typical strategies: rollout SPREAD (workers on many nodes,
    inference is per-worker), learner PACK (ZeRO ranks of one role close together for collectives).
    """
    specs = [("rollout", rollout)] + [(f"learner/{r}", s) for r, s in (learners or {}).items()]
    return Plan(tuple(GroupPlan(name, tuple(s.bundle() for _ in range(s.count)), s.strategy)
                      for name, s in specs if s.count > 0))


def _fmt(res: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(res.items())) or "nothing"


def _place(bundle: Mapping[str, float], free: dict[str, dict[str, float]], avoid: set[str],
           spread: bool) -> str | None:
    """Node chosen for ``bundle`` (most free CPU if ``spread``, else first that fits), or None."""
    fits = [n for n, f in free.items() if n not in avoid and all(f.get(k, 0) + _EPS >= v for k, v in bundle.items())]
    if not fits:
        return None
    node = max(fits, key=lambda n: free[n].get("CPU", 0)) if spread else fits[0]
    for k, v in bundle.items():
        free[node][k] = free[node].get(k, 0) - v
    return node


def _place_group(g: GroupPlan, free: dict[str, dict[str, float]]) -> str | None:
    """Place every bundle of ``g`` into ``free`` (mutated); a description of the failure or None."""
    if g.strategy == "STRICT_PACK":
        return None if _place(g.total(), free, set(), False) else f"group {g.name!r} ({_fmt(g.total())}) on one node"
    used: set[str] = set()
    for i, b in enumerate(g.bundles):
        node = _place(b, free, used, g.strategy == "SPREAD")
        if node is None:
            where = " on a node of its own" if g.strategy == "STRICT_SPREAD" else ""
            return f"bundle {g.name}[{i}] ({_fmt(b)}){where}"
        used |= {node} if g.strategy == "STRICT_SPREAD" else set()
    return None


def check_fits(plan: Plan, nodes: Mapping[str, Mapping[str, float]]) -> None:
    """Raise :class:`PlanDoesNotFit` unless every bundle can be placed on ``nodes`` (node -> capacity).

    First compares totals; then places groups in order, bundles largest first, greedily (bin packing
    is NP-hard and Ray's scheduler is greedy too, so a rare feasible plan may be refused).
    """
    have = _sum(nodes.values())
    need = plan.total()
    short = {k: v for k, v in need.items() if v > have.get(k, 0) + _EPS}
    if short:
        raise PlanDoesNotFit(f"plan needs {_fmt(need)} but the cluster has {_fmt(have)} over {len(nodes)} "
                             f"node(s): short of {', '.join(short)}")
    free = {n: dict(c) for n, c in nodes.items()}
    for g in plan.groups:
        ordered = GroupPlan(g.name, tuple(sorted(g.bundles, key=lambda b: (-b.get("GPU", 0), -b.get("CPU", 0)))),
                            g.strategy)
        problem = _place_group(ordered, free)
        if problem:
            per_node = "; ".join(f"{n[:8]}: {_fmt(c)}" for n, c in nodes.items())
            raise PlanDoesNotFit(f"cannot place {problem} ({g.strategy}); node capacities: {per_node}")


def node_capacities() -> dict[str, dict[str, float]]:
    """node id -> {"CPU": n, "GPU": n} of the alive nodes of the connected Ray cluster."""
    import ray

    return {n["NodeID"]: _cpu_gpu(n["Resources"]) for n in ray.nodes() if n["Alive"]}


def create_placement_groups(plan: Plan, timeout_s: float | None = 60.0, run_name: str = "",
                            autoscaling: bool = False, say=None, poll_s: float = 30.0) -> dict:
    """Check the plan against the cluster, then create its placement groups and wait until ready.

    With a ``run_name`` the groups are named ``<run_name>/<group>`` (visible in the dashboard; Ray
    requires names to be unique in the namespace), else they are unnamed.

    ``autoscaling=True`` skips the capacity check against the nodes alive now (an autoscaler adds
    nodes for pending placement groups: Ray's cluster launcher, KubeRay) and waits up to
    ``timeout_s`` (None: without limit), calling ``say(line)`` every ``poll_s`` seconds with what
    is still pending.

    Returns group name -> ``PlacementGroup``. Raises :class:`PlanDoesNotFit` when the capacity
    check fails, or when a group is not ready in ``timeout_s`` (resources held by other actors or
    groups, or no node came); in that case every group created here is removed again.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    if not autoscaling:
        check_fits(plan, node_capacities())
    groups = {g.name: placement_group([dict(b) for b in g.bundles], strategy=g.strategy,
                                      name=f"{run_name}/{g.name}" if run_name else "")
              for g in plan.groups}
    for name, pg in groups.items():
        if not _wait_ready(pg, timeout_s, poll_s, lambda waited: say and say(
                f"placement group {name!r} ({_fmt(plan.group(name).total())}) pending for {waited:.0f}s; "
                f"cluster resources available now: {_fmt(_cpu_gpu(ray.available_resources()))}")):
            for other in groups.values():
                remove_placement_group(other)
            free = _fmt(_cpu_gpu(ray.available_resources()))
            raise PlanDoesNotFit(f"placement group {name!r} ({_fmt(plan.group(name).total())}) not ready after "
                                 f"{timeout_s:g}s (cluster.placement_timeout_s); cluster resources available "
                                 f"now: {free}")
    return groups


def _wait_ready(pg, timeout_s: float | None, poll_s: float, pending) -> bool:
    """Wait for ``pg`` up to ``timeout_s`` (None: forever), calling ``pending(seconds)`` every ``poll_s``."""
    import time

    t0 = time.monotonic()
    while True:
        left = None if timeout_s is None else timeout_s - (time.monotonic() - t0)
        if left is not None and left <= 0:
            return False
        if pg.wait(timeout_seconds=poll_s if left is None else min(poll_s, left)):
            return True
        pending(time.monotonic() - t0)


def bundle_nodes(groups: Mapping[str, object]) -> list[str]:
    """Node ids hosting the bundles of ready placement groups (each node once)."""
    from ray.util import placement_group_table

    nodes = {n for pg in groups.values() for n in placement_group_table(pg)["bundles_to_node_id"].values()}
    return sorted(nodes)


def _cpu_gpu(res: Mapping[str, float]) -> dict[str, float]:
    return {k: float(res.get(k, 0)) for k in ("CPU", "GPU")}


def remove_placement_groups(groups: Mapping[str, object]) -> None:
    """Remove groups made by :func:`create_placement_groups` (their actors are killed by Ray)."""
    from ray.util.placement_group import remove_placement_group

    for pg in groups.values():
        remove_placement_group(pg)


def bundle_strategy(pg: object, index: int):
    """Scheduling strategy that puts an actor into bundle ``index`` of ``pg``
    (``ActorClass.options(scheduling_strategy=bundle_strategy(pg, i))``)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)
