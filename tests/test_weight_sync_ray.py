"""Weight sync on real Ray actors: 4 rollout-worker actors (RolloutWorker over a FakeEngine) spread
over the session's two nodes, a WeightSyncService with the Ray transport in the driver.

The tests run in file order on one fleet: publish (policy v1, v2, observer v1) -> corrupt v3 ->
kill and catch up -> policy v3 put into the object store by another actor (as the learner's rank 0).
"""

import math
import sys
import time

import pytest

from cluster.placement import RoleSpec, bundle_strategy, create_placement_groups, plan_resources, \
    remove_placement_groups
from cluster.weight_sync import Probe, StoredArtifact, WeightSyncService
from rollout.adapter_artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterArtifact

pytestmark = pytest.mark.ray

PROBE = Probe(prompt_ids=(1, 2, 3), target_ids=(40, 41, 42))


def fake_logprobs(version):
    """FakeEngine.score: log(1/102) - 0.01 * version per target token; 102 = 6 special tokens +
    95 printable ASCII + newline. v1: -4.634972813284271, v2: -4.644972813284271."""
    return [-math.log(102) - 0.01 * version] * len(PROBE.target_ids)


def payload(role, version, weights=None):
    weights = weights or f"{role}-v{version}".encode() * 50_000  # ~500 KB: over Ray's inline limit
    return AdapterArtifact.build(role, version, "fake-vlm", {ADAPTER_CONFIG: b'{"r": 8}', ADAPTER_WEIGHTS: weights})


def corrupt(p):
    bad = bytearray(p.files[ADAPTER_WEIGHTS])
    bad[-1] ^= 0xFF
    return AdapterArtifact(p.role, p.version, p.sha256, p.base_model, {**p.files, ADAPTER_WEIGHTS: bytes(bad)})


def make_worker():
    """Factory run inside each actor (and again after a restart): a dialogue RolloutWorker whose
    Reasoner uses adapter "policy" and Observer adapter "observer", both on one FakeEngine."""
    from rollout.config import DialogueConfig, RoleConfig, RolloutConfig
    from rollout.engine.fake import FakeEngine
    from rollout.worker import RolloutWorker

    cfg = RolloutConfig(kind="dialogue", group_size=2, dialogue=DialogueConfig(
        reasoner=RoleConfig(adapter="policy"), observer=RoleConfig(adapter="observer")))
    eng = FakeEngine(lambda prompt, adapter, version, k: "<answer>blue</answer>")
    return RolloutWorker(cfg, {"reasoner": eng, "observer": eng})


def wait_released(ray, cpus, timeout_s=30.0):
    """Teardown: wait until Ray has given back the CPUs (kills and removals are asynchronous), so the
    next module of the session schedules on an idle cluster."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(ray_session, tmp_path_factory):
    ray = ray_session
    from cluster.actors import RayTransport, rollout_worker_actor, wait_alive

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test module is not importable by workers
    root = str(tmp_path_factory.mktemp("adapters") / "{node}")
    cpus_before = ray.available_resources().get("CPU", 0)
    groups = create_placement_groups(plan_resources(RoleSpec("rollout", 4, cpus=0.25, strategy="SPREAD")),
                                     run_name="test-weight-sync")
    actor = rollout_worker_actor(num_cpus=0.25)
    handles = {f"w{i}": actor.options(scheduling_strategy=bundle_strategy(groups["rollout"], i))
               .remote(make_worker, f"w{i}", root) for i in range(4)}
    wait_alive(list(handles.values()))
    service = WeightSyncService(RayTransport(), PROBE, tolerance=1e-9, timeout_s=60)
    for wid, h in handles.items():
        service.register(wid, h)
    yield ray, handles, service
    for h in handles.values():
        ray.kill(h)
    remove_placement_groups(groups)
    wait_released(ray, cpus_before)


def store_created_bytes(address):
    """Bytes ever created in the object stores of all nodes (Ray's private memory-info API, the one
    behind ``ray memory --stats-only``): a pull to a node creates a copy there and counts again."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    return get_memory_info_reply(get_state_from_address(address)).store_stats.cumulative_created_bytes


def alive_nodes(ray):
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_workers_are_spread_over_both_nodes(fleet):
    ray, handles, _ = fleet
    nodes = ray.get([h.node_id.remote() for h in handles.values()])
    assert set(nodes) == alive_nodes(ray) and len(alive_nodes(ray)) == 2
    # SPREAD is best effort in Ray: usually 2 + 2, but 1 + 3 was seen while a previous module's
    # actors were still being released, so only "both nodes" is asserted


def test_placement_errors_on_the_live_cluster(fleet):
    ray, _, _ = fleet
    from cluster.placement import PlanDoesNotFit

    with pytest.raises(PlanDoesNotFit, match=r"bundle rollout\[0\] \(CPU=3\)"):  # no node has 3 CPUs
        create_placement_groups(plan_resources(RoleSpec("rollout", 1, cpus=3)))
    # 1.75 CPU fits each node's capacity (2), but the fleet holds 0.25 per worker: not schedulable now
    free = ray.available_resources()["CPU"]
    with pytest.raises(PlanDoesNotFit, match=r"'rollout' \(CPU=3.5\) not ready after 1s \(cluster.placement_timeout_s\); cluster resources "
                                             r"available now: CPU=\d"):
        create_placement_groups(plan_resources(RoleSpec("rollout", 2, cpus=1.75, strategy="SPREAD")), timeout_s=1)
    wait_released(ray, free)
    assert ray.available_resources()["CPU"] == free  # the half-made group was removed again


def test_publish_policy_twice_then_observer(fleet, ray_cluster):
    ray, handles, service = fleet
    for role, version in (("policy", 1), ("policy", 2), ("observer", 1)):
        before = store_created_bytes(ray_cluster.address)
        report = service.publish(payload(role, version), fake_logprobs(version))
        [loc] = ray.experimental.get_object_locations([service.latest_handle(role)]).values()
        # one copy created by the put on the driver's node + one pulled to the other node, shared by
        # that node's workers: 2 x size for 4 workers (one copy per worker would be >= 4 x size)
        assert store_created_bytes(ray_cluster.address) - before == 2 * loc["object_size"]
        assert set(loc["node_ids"]) == alive_nodes(ray)
        assert report.all_proven, report.failures
        assert (report.role, report.version) == (role, version)
        assert sorted(a.worker_id for a in report.acks) == ["w0", "w1", "w2", "w3"]
        assert {a.node_id for a in report.acks} == alive_nodes(ray)
        for ack in report.acks:
            assert (ack.role, ack.version, ack.error) == (role, version, "")
            assert ack.probe_logprobs == pytest.approx(fake_logprobs(version), abs=1e-12)
    versions = ray.get([h.adapter_versions.remote() for h in handles.values()])
    assert versions == [{"policy": 2, "observer": 1}] * 4
    assert service.served_versions() == {w: {"policy": 2, "observer": 1} for w in handles}
    assert loc["object_size"] > 50_000 * len(b"observer-v1")  # ~550 KB: in the object store, not inlined


def test_rollouts_use_the_synced_versions(fleet):
    ray, handles, _ = fleet
    from rollout.types import Task

    tasks = [Task("t1", "What colour?", "blue", image=b"img-1")]
    batch, stats = ray.get(handles["w3"].rollout.remote(tasks, {"policy": 2, "observer": 1}, step=1))
    by_role = {}
    for e in batch.episodes:
        for t in e.turns:
            by_role.setdefault(t.role, set()).add(t.adapter_version)
    # Reasoner turns come from adapter "policy" v2, Observer turns from "observer" v1
    assert by_role == {"reasoner": {2}, "observer": {1}}
    assert stats.num_episodes == 2  # group_size 2 for one task


def test_corrupt_artifact_is_refused_and_reported(fleet):
    ray, handles, service = fleet
    bad = corrupt(payload("policy", 3))
    ack = ray.get(handles["w0"].sync_adapter.remote(bad, PROBE))  # one worker, directly
    assert ack.version == 2 and "sha256" in ack.error
    assert ack.probe_logprobs == pytest.approx(fake_logprobs(2), abs=1e-12)  # still serving v2
    report = service.publish(bad, fake_logprobs(3))
    assert not report.all_proven and report.proven == ()
    assert sorted(f.worker_id for f in report.failures) == ["w0", "w1", "w2", "w3"]
    assert all(f.reason.startswith("rejected (serves v2)") and "sha256" in f.reason for f in report.failures)
    assert service.latest_versions() == {"policy": 2, "observer": 1}
    assert ray.get([h.adapter_versions.remote() for h in handles.values()]) == [{"policy": 2, "observer": 1}] * 4


def _wait_restarted(ray, handle, old_pid, timeout_s=60.0):
    """Poll until the actor answers from a new process (ray.kill is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ray.get(handle.pid.remote(), timeout=10) != old_pid:
                return ray.get(handle.ping.remote())
        except ray.exceptions.RayActorError:
            pass
        time.sleep(0.2)
    raise TimeoutError("actor was not restarted")


def test_killed_worker_restarts_and_catches_up(fleet):
    ray, handles, service = fleet
    h = handles["w1"]
    node, pid = ray.get([h.node_id.remote(), h.pid.remote()])
    ray.kill(h, no_restart=False)
    assert _wait_restarted(ray, h, pid) == "w1"
    assert ray.get(h.adapter_versions.remote()) == {"policy": 0, "observer": 0}  # rebuilt from the factory
    assert ray.get(h.node_id.remote()) == node  # restarted in its placement-group bundle
    reports = service.catch_up("w1")
    assert [(r.role, r.version, r.all_proven) for r in reports] == [("observer", 1, True), ("policy", 2, True)]
    assert [a.worker_id for r in reports for a in r.acks] == ["w1", "w1"]
    assert ray.get(h.adapter_versions.remote()) == {"policy": 2, "observer": 1}
    assert service.served_versions()["w1"] == {"policy": 2, "observer": 1}


class Exporter:
    """Stands in for the learner's rank-0 actor: builds an artifact and leaves it in the object store,
    returning its reference in a one-element list (as ``LearnerGroup.adapter_ref`` under Ray)."""

    def export(self, role, version):
        import ray

        return [ray.put(payload(role, version))]


def test_publish_of_an_artifact_stored_by_another_actor(fleet, ray_cluster):
    # rank 0 puts the artifact; only its reference reaches this process and the service (inside a
    # StoredArtifact); the workers resolve the same reference from the object store
    ray, handles, service = fleet
    exporter = ray.remote(num_cpus=0)(Exporter).remote()
    before = store_created_bytes(ray_cluster.address)
    [ref] = ray.get(exporter.export.remote("policy", 3))
    report = service.publish(StoredArtifact("policy", 3, [ref]), fake_logprobs(3))
    assert report.all_proven, report.failures
    assert service.latest_handle("policy") == [ref]
    [loc] = ray.experimental.get_object_locations([ref]).values()
    assert set(loc["node_ids"]) == alive_nodes(ray)
    # put once on the exporter's node, pulled once to the other node (+ a few bytes of the call's own
    # small objects), as when the service put the record itself: the handle travels, not the bytes
    created = store_created_bytes(ray_cluster.address) - before
    assert 2 * loc["object_size"] <= created < 2 * loc["object_size"] + 1_000
    assert ray.get([h.adapter_versions.remote() for h in handles.values()]) == [{"policy": 3, "observer": 1}] * 4
    ray.kill(exporter)


def test_metrics_are_accepted_by_ray(ray_session):
    # Ray validates names, tag keys and histogram boundaries when metrics are created and recorded;
    # every declared metric goes through once with its declared tags.
    from ray.util.metrics import Counter, Gauge, Histogram

    from cluster.metrics import SPECS, DuetMetrics, RaySink

    sink = RaySink()
    m = DuetMetrics(sink)
    m.reward(0.5), m.success_rate(0.25), m.tokens_per_s(80.0)
    for role in ("policy", "observer"):
        m.kl_ref(role, 0.01), m.approx_kl(role, 0.002), m.entropy(role, 1.2)
        m.adapter_version(role, 3), m.staleness(role, 1.0), m.sync_latency(role, 0.3)
    m.queue_depth("in_flight", 4), m.episodes_produced(16), m.episodes_dropped("stale", 2)
    kinds = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}
    assert set(sink._objects) == set(SPECS)
    assert all(isinstance(sink._objects[n], kinds[s.kind]) for n, s in SPECS.items())
