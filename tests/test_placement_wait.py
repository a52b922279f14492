"""Placement on a cluster that scales up: the run waits for a node to arrive instead of failing at once.

The session's two-node cluster has 4 CPUs. A plan of 3 bundles x 1.5 CPUs cannot fit; with
``autoscaling=True`` the capacity check is skipped and the wait goes on while a third node joins
(what Ray's autoscaler does for a pending placement group), after which the group is ready.
"""

import threading
import time

import pytest

from cluster.placement import PlanDoesNotFit, RoleSpec, bundle_nodes, create_placement_groups, plan_resources, \
    remove_placement_groups

pytestmark = pytest.mark.ray


def test_without_autoscaling_an_oversized_plan_fails_at_once(ray_session):
    t0 = time.monotonic()
    with pytest.raises(PlanDoesNotFit, match="short of CPU"):
        create_placement_groups(plan_resources(RoleSpec("rollout", 3, cpus=1.5)), timeout_s=120)
    assert time.monotonic() - t0 < 5


def test_with_autoscaling_the_plan_waits_for_a_new_node(ray_session, ray_cluster):
    said: list[str] = []
    out: dict = {}

    def place():  # the run's side: waits for its placement group
        t0 = time.monotonic()
        try:
            groups = create_placement_groups(plan_resources(RoleSpec("rollout", 3, cpus=1.5)), timeout_s=120,
                                             autoscaling=True, say=said.append, poll_s=1.0)
            out["waited"], out["nodes"] = time.monotonic() - t0, bundle_nodes(groups)
            remove_placement_groups(groups)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            out["error"] = e

    thread = threading.Thread(target=place)
    thread.start()
    time.sleep(3)
    node = ray_cluster.add_node(num_cpus=2)  # the autoscaler's side: a node joins
    thread.join(timeout=150)
    try:
        assert "error" not in out, out.get("error")
        assert out["waited"] >= 3  # ready only once the third node had joined
        assert len(out["nodes"]) == 3 and node.node_id in out["nodes"]  # 1.5 CPUs per bundle, 2 per node
        assert said and said[0].startswith("placement group 'rollout' (CPU=4.5) pending for ")
    finally:
        ray_cluster.remove_node(node)
