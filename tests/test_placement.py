"""Resource planning arithmetic and the fit check (pure; no Ray)."""

import pytest

from cluster.placement import GroupPlan, Plan, PlanDoesNotFit, RoleSpec, check_fits, plan_resources

pytestmark = pytest.mark.unit

TWO_CPU_NODES = {"aaaaaaaa1111": {"CPU": 2.0, "GPU": 0.0}, "bbbbbbbb2222": {"CPU": 2.0, "GPU": 0.0}}
TWO_GPU_NODES = {"g1": {"CPU": 8.0, "GPU": 1.0}, "g2": {"CPU": 8.0, "GPU": 1.0}}


def test_plan_groups_bundles_and_totals():
    plan = plan_resources(
        RoleSpec("rollout", 4, cpus=0.5, strategy="SPREAD"),
        {"reasoner": RoleSpec("reasoner", 2, cpus=1, gpus=1), "observer": RoleSpec("observer", 2, cpus=1, gpus=0.5)},
    )
    assert [(g.name, g.strategy, len(g.bundles)) for g in plan.groups] == [
        ("rollout", "SPREAD", 4), ("learner/reasoner", "PACK", 2), ("learner/observer", "PACK", 2)]
    assert plan.group("rollout").bundles[0] == {"CPU": 0.5}  # no zero-valued GPU key (Ray rejects it)
    assert plan.group("learner/observer").bundles[1] == {"CPU": 1.0, "GPU": 0.5}
    # CPU: 4 * 0.5 + 2 * 1 + 2 * 1 = 6; GPU: 2 * 1 + 2 * 0.5 = 3
    assert plan.total() == {"CPU": 6.0, "GPU": 3.0}
    assert plan.group("learner/reasoner").total() == {"CPU": 2.0, "GPU": 2.0}
    with pytest.raises(KeyError, match="learner/critic"):
        plan.group("learner/critic")


def test_zero_count_roles_get_no_group():
    plan = plan_resources(RoleSpec("rollout", 2), {"observer": RoleSpec("observer", 0)})
    assert [g.name for g in plan.groups] == ["rollout"]
    assert plan.total() == {"CPU": 2.0}


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=-1), "count"),
    (dict(cpus=0, gpus=0), "not both 0"),
    (dict(gpus=1.5), "whole number"),
    (dict(strategy="RANDOM"), "strategy"),
])
def test_role_spec_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RoleSpec("rollout", **{"count": 1, **kwargs})


def test_fits_two_cpu_nodes():
    # 4 workers x 0.5 CPU spread + 2 learner ranks x 1 CPU packed = 4 CPUs = the cluster exactly
    plan = plan_resources(RoleSpec("rollout", 4, cpus=0.5, strategy="SPREAD"), {"policy": RoleSpec("policy", 2)})
    check_fits(plan, TWO_CPU_NODES)


def test_total_shortfall_message_names_needed_and_available():
    plan = plan_resources(RoleSpec("rollout", 4, cpus=0.5), {"policy": RoleSpec("policy", 3)})
    with pytest.raises(PlanDoesNotFit) as e:
        check_fits(plan, TWO_CPU_NODES)
    # needed: 4 * 0.5 + 3 * 1 = 5 CPUs; available 2 + 2 = 4
    assert str(e.value) == "plan needs CPU=5 but the cluster has CPU=4, GPU=0 over 2 node(s): short of CPU"


def test_bundle_larger_than_any_node_is_refused():
    plan = plan_resources(RoleSpec("rollout", 1, cpus=3))  # 3 <= 4 in total, but no node has 3
    with pytest.raises(PlanDoesNotFit, match=r"cannot place bundle rollout\[0\] \(CPU=3\) \(PACK\); "
                                             r"node capacities: aaaaaaaa: CPU=2, GPU=0; bbbbbbbb: CPU=2, GPU=0"):
        check_fits(plan, TWO_CPU_NODES)


def test_strict_strategies():
    strict_spread = Plan((GroupPlan("rollout", ({"CPU": 0.5},) * 3, "STRICT_SPREAD"),))
    with pytest.raises(PlanDoesNotFit, match=r"bundle rollout\[2\] \(CPU=0.5\) on a node of its own"):
        check_fits(strict_spread, TWO_CPU_NODES)  # 3 bundles, 2 nodes
    check_fits(Plan((GroupPlan("rollout", ({"CPU": 0.5},) * 2, "STRICT_SPREAD"),)), TWO_CPU_NODES)
    strict_pack = Plan((GroupPlan("learner/policy", ({"CPU": 1.0},) * 3, "STRICT_PACK"),))
    with pytest.raises(PlanDoesNotFit, match=r"group 'learner/policy' \(CPU=3\) on one node"):
        check_fits(strict_pack, TWO_CPU_NODES)
    check_fits(Plan((GroupPlan("learner/policy", ({"CPU": 1.0},) * 2, "STRICT_PACK"),)), TWO_CPU_NODES)


def test_gpu_arithmetic():
    # two 1-GPU nodes: two 0.5-GPU rollout workers share one device, two 0.5-GPU learner ranks the other
    shared = plan_resources(RoleSpec("rollout", 2, cpus=1, gpus=0.5), {"policy": RoleSpec("policy", 2, gpus=0.5)})
    check_fits(shared, TWO_GPU_NODES)
    # two whole-GPU reasoner ranks take both devices; one more 0.5-GPU observer rank: 2.5 > 2
    over = plan_resources(RoleSpec("rollout", 0),
                          {"reasoner": RoleSpec("reasoner", 2, gpus=1), "observer": RoleSpec("observer", 1, gpus=0.5)})
    with pytest.raises(PlanDoesNotFit, match="plan needs CPU=3, GPU=2.5 .* short of GPU"):
        check_fits(over, TWO_GPU_NODES)
    # a 2-GPU rank fits on no 1-GPU node although the total is 2
    with pytest.raises(PlanDoesNotFit, match=r"learner/policy\[0\] \(CPU=1, GPU=2\)"):
        check_fits(plan_resources(RoleSpec("rollout", 0), {"policy": RoleSpec("policy", 1, gpus=2)}), TWO_GPU_NODES)


def test_gpu_plan_on_cpu_cluster_says_so():
    plan = plan_resources(RoleSpec("rollout", 1, cpus=1, gpus=1))
    with pytest.raises(PlanDoesNotFit, match="plan needs CPU=1, GPU=1 but the cluster has CPU=4, GPU=0"):
        check_fits(plan, TWO_CPU_NODES)
