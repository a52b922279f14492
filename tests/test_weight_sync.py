"""Node-local adapter store (atomic, idempotent, concurrent materialize; checksum; GC) and the
weight-sync service over the in-process transport with fake engines. The artifact format itself is
tested in tests/test_adapter_artifact.py."""

import hashlib
import json
import math
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from cluster.adapter_store import gc_versions, materialize, stable_versions
from cluster.metrics import DuetMetrics, Recorder
from cluster.weight_sync import (
    AdapterHost, LocalTransport, Probe, StoredArtifact, SyncAck, SyncFailure, SyncSite, WeightSyncService,
    apply_artifact,
)
from rollout.adapter_artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, STABLE, AdapterArtifact
from rollout.engine.base import AdapterRejected
from rollout.engine.fake import FakeEngine

pytestmark = pytest.mark.unit

WEIGHTS = b"\x00weights-v1" * 1000


def payload(role="policy", version=1, weights=WEIGHTS, sha=None):
    files = {ADAPTER_CONFIG: json.dumps({"r": 8}).encode(), ADAPTER_WEIGHTS: weights}
    sha = sha or hashlib.sha256(weights).hexdigest()
    return AdapterArtifact(role, version, sha, "tiny-vlm", files)


def corrupt(p: AdapterArtifact) -> AdapterArtifact:
    """Same identity (role, version, sha256) with one flipped byte: what a bad transfer delivers."""
    bad = bytearray(p.files[ADAPTER_WEIGHTS])
    bad[0] ^= 0xFF
    return AdapterArtifact(p.role, p.version, p.sha256, p.base_model, {**p.files, ADAPTER_WEIGHTS: bytes(bad)})


# ---------------------------------------------------------------- node-local store


def test_materialize_writes_stable_directory(tmp_path):
    p = payload()
    ref = materialize(p, tmp_path)
    d = tmp_path / "policy" / p.dirname
    # verified here once: the ref carries no checksum for the engines to hash again
    assert (ref.name, ref.version, ref.path, ref.sha256) == ("policy", 1, str(d), "")
    assert sorted(os.listdir(d)) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, STABLE])
    assert (d / ADAPTER_WEIGHTS).read_bytes() == WEIGHTS
    assert (d / STABLE).read_text() == p.sha256
    assert json.loads((d / MANIFEST).read_text())["sha256"] == p.sha256
    assert os.listdir(tmp_path / "policy") == [p.dirname]  # no temporary directory left


def test_checksum_mismatch_rejected_and_nothing_written(tmp_path):
    with pytest.raises(AdapterRejected, match="sha256"):
        materialize(corrupt(payload()), tmp_path)
    assert not (tmp_path / "policy").exists()


def test_materialize_is_idempotent(tmp_path):
    p = payload()
    first = materialize(p, tmp_path)
    stamp = os.stat(Path(first.path) / STABLE).st_mtime_ns
    assert materialize(p, tmp_path) == first
    assert os.stat(Path(first.path) / STABLE).st_mtime_ns == stamp  # reused, not rewritten


def test_damaged_directory_is_rebuilt(tmp_path):
    p = payload()
    d = Path(materialize(p, tmp_path).path)
    (d / ADAPTER_WEIGHTS).write_bytes(b"bit rot")
    materialize(p, tmp_path)
    assert (d / ADAPTER_WEIGHTS).read_bytes() == WEIGHTS


def test_concurrent_threads_materialize_one_directory(tmp_path):
    # 8 threads released together by a barrier, on 10 versions: every version ends as exactly one
    # complete directory with the published bytes, and every thread got the same ref.
    for version in range(1, 11):
        p = payload(version=version, weights=WEIGHTS * version)
        barrier, refs = threading.Barrier(8), []

        def work():
            barrier.wait()
            refs.append(materialize(p, tmp_path))

        threads = [threading.Thread(target=work) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(refs) == 8 and len(set(refs)) == 1
        assert (Path(refs[0].path) / ADAPTER_WEIGHTS).read_bytes() == WEIGHTS * version
        assert (Path(refs[0].path) / STABLE).is_file()
    expected = sorted(payload(version=v, weights=WEIGHTS * v).dirname for v in range(1, 11))
    assert sorted(os.listdir(tmp_path / "policy")) == expected


def _materialize_in_child(args):
    root, version = args
    return materialize(payload(version=version), root).path


def test_concurrent_processes_materialize_one_directory(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # fork from a process holding Ray's threads can deadlock
    with ctx.Pool(4) as pool:
        paths = pool.map(_materialize_in_child, [(str(tmp_path), 1)] * 8)
    assert set(paths) == {str(tmp_path / "policy" / payload().dirname)}
    assert os.listdir(tmp_path / "policy") == [payload().dirname]
    assert (Path(paths[0]) / ADAPTER_WEIGHTS).read_bytes() == WEIGHTS


def test_gc_keeps_newest_k_and_removes_stale_temporaries(tmp_path):
    for v in range(1, 6):
        materialize(payload(version=v), tmp_path)
    leftover = tmp_path / "policy" / ".tmp-v9-000000000000-1-abc"
    leftover.mkdir()
    assert gc_versions(tmp_path, "policy", keep=2, stale_s=3600) == [payload(version=v).dirname for v in (1, 2, 3)]
    assert [v for v, _ in stable_versions(tmp_path, "policy")] == [4, 5]
    assert leftover.exists()  # younger than stale_s: may belong to a live writer
    assert gc_versions(tmp_path, "policy", keep=2, stale_s=0) == [leftover.name]
    assert sorted(os.listdir(tmp_path / "policy")) == [payload(version=v).dirname for v in (4, 5)]
    with pytest.raises(ValueError):
        gc_versions(tmp_path, "policy", keep=0)


# ---------------------------------------------------------------- worker side and service

PROBE = Probe(prompt_ids=(1, 2, 3), target_ids=(40, 41))


def fake_logprobs(version, n=2):
    """FakeEngine.score: log(1/102) - 0.01 * version per target token (102 = its vocabulary size)."""
    return [-math.log(102) - 0.01 * version] * n


def host(tmp_path, wid, node="node-a"):
    return AdapterHost(FakeEngine(lambda *a: "x"), SyncSite(wid, node, str(tmp_path / node)))


class CorruptingHost(AdapterHost):
    """A worker whose incoming artifacts are damaged in transit."""

    def sync_adapter(self, p, probe):
        return super().sync_adapter(corrupt(p), probe)


class DeadHost(AdapterHost):
    def sync_adapter(self, p, probe):
        raise ConnectionError("worker process died")


def service(hosts, recorder=None, **kw):
    svc = WeightSyncService(LocalTransport(), PROBE, tolerance=1e-6, metrics=DuetMetrics(recorder or Recorder()), **kw)
    for h in hosts:
        svc.register(h.site.worker_id, h)
    return svc


def test_apply_artifact_acks_with_probe_and_skips_reload(tmp_path):
    h = host(tmp_path, "w0")
    ack = apply_artifact(h.target, payload(version=2), PROBE, h.site)
    # -log(102) - 0.02 = -4.624972813284271 - 0.02 = -4.644972813284271
    assert ack.probe_logprobs == pytest.approx((-4.644972813284271,) * 2)
    assert (ack.worker_id, ack.node_id, ack.role, ack.version, ack.error) == ("w0", "node-a", "policy", 2, "")
    again = apply_artifact(h.target, payload(version=2), PROBE, h.site)  # catch-up of a current worker
    assert (again.version, again.error) == (2, "")  # FakeEngine would reject a reload of v2


def test_publish_proves_every_worker_per_role(tmp_path):
    hosts = [host(tmp_path, f"w{i}", node=f"node-{i % 2}") for i in range(3)]
    rec = Recorder()
    svc = service(hosts, rec)
    r1 = svc.publish(payload(version=1), fake_logprobs(1))
    r2 = svc.publish(payload(version=2, weights=b"v2"), fake_logprobs(2))
    ro = svc.publish(payload("observer", 1), fake_logprobs(1))
    for report, role, version in ((r1, "policy", 1), (r2, "policy", 2), (ro, "observer", 1)):
        assert report.all_proven and report.failures == ()
        assert (report.role, report.version) == (role, version)
        assert sorted(a.worker_id for a in report.acks) == ["w0", "w1", "w2"]
        assert all(a.probe_logprobs == pytest.approx(fake_logprobs(version)) for a in report.acks)
    assert svc.served_versions() == {f"w{i}": {"policy": 2, "observer": 1} for i in range(3)}
    assert svc.latest_versions() == {"policy": 2, "observer": 1}
    # workers on one node share one directory per version; GC keeps 3 per role
    assert [v for v, _ in stable_versions(tmp_path / "node-0", "policy")] == [1, 2]
    assert rec.latest("duet_adapter_version", role="policy") == 2.0
    assert rec.latest("duet_sync_latency_s", role="observer") == ro.latency_s


def test_corrupt_artifact_refused_and_reported(tmp_path):
    good = [host(tmp_path, "w0"), host(tmp_path, "w1")]
    bad = CorruptingHost(FakeEngine(lambda *a: "x"), SyncSite("w2", "node-b", str(tmp_path / "node-b")))
    svc = service([*good])
    svc.publish(payload(version=1), fake_logprobs(1))
    svc.register("w2", bad)
    report = svc.publish(payload(version=2, weights=b"v2"), fake_logprobs(2))
    assert not report.all_proven and report.proven == ("w0", "w1")
    [failure] = report.failures
    assert failure.worker_id == "w2" and failure.reason.startswith("rejected (serves v0)")
    assert "sha256" in failure.reason and failure.kind == "rejected"
    assert svc.served_versions()["w2"] == {"policy": 0}


def test_every_worker_refusing_keeps_previous_latest(tmp_path):
    svc = service([host(tmp_path, "w0"), host(tmp_path, "w1")])
    svc.publish(payload(version=1), fake_logprobs(1))
    report = svc.publish(corrupt(payload(version=2, weights=b"v2")), fake_logprobs(2))
    assert [f.worker_id for f in report.failures] == ["w0", "w1"]
    assert all(a.version == 1 and a.probe_logprobs == pytest.approx(fake_logprobs(1)) for a in report.acks)
    assert svc.latest_versions() == {"policy": 1}


def test_probe_disagreement_and_dead_worker_are_failures(tmp_path):
    dead = DeadHost(FakeEngine(lambda *a: "x"), SyncSite("w9", "n", str(tmp_path)))
    svc = service([host(tmp_path, "w0"), dead])
    report = svc.publish(payload(version=1), fake_logprobs(2))  # learner claims v2's numbers
    reasons = {f.worker_id: f.reason for f in report.failures}
    # |(-log 102 - 0.01) - (-log 102 - 0.02)| = 0.01
    assert reasons["w0"] == "probe mismatch: max |logprob diff| 0.01 > tolerance 1e-06"
    assert reasons["w9"] == "unreachable: ConnectionError: worker process died"
    # the driver waits for Ray to restart "unreachable" workers only, by kind, not by message text
    assert {f.worker_id: f.kind for f in report.failures} == {"w0": "probe", "w9": "unreachable"}
    assert svc.latest_versions() == {}


def test_catch_up_brings_new_worker_to_latest_of_each_role(tmp_path):
    svc = service([host(tmp_path, "w0")])
    svc.publish(payload(version=1), fake_logprobs(1))
    svc.publish(payload(version=2, weights=b"v2"), fake_logprobs(2))
    svc.publish(payload("observer", 1), fake_logprobs(1))
    fresh = host(tmp_path, "w1", node="node-b")
    svc.register("w1", fresh)
    reports = svc.catch_up("w1")
    assert [(r.role, r.version, r.all_proven) for r in reports] == [("observer", 1, True), ("policy", 2, True)]
    assert fresh.target.adapter_versions() == {"policy": 2, "observer": 1}
    assert svc.served_versions()["w1"] == {"policy": 2, "observer": 1}


def test_publish_of_a_stored_artifact_fans_out_its_handle(tmp_path):
    # the driver hands the service a StoredArtifact (claimed identity + handle); the service never
    # sees the bytes, passes the handle itself to the workers and keeps it for catch-up
    handles = []

    class Recording(LocalTransport):
        def put(self, artifact):
            raise AssertionError("a stored artifact must not be put again")

        def fanout(self, workers, handle, probe, timeout_s):
            handles.append(handle)
            return super().fanout(workers, handle, probe, timeout_s)

    art = payload(version=3)
    svc = WeightSyncService(Recording(), PROBE, tolerance=1e-6, metrics=DuetMetrics(Recorder()))
    svc.register("w0", host(tmp_path, "w0"))
    report = svc.publish(StoredArtifact.of(art, art), fake_logprobs(3))
    assert report.all_proven and (report.role, report.version) == ("policy", 3)
    assert svc.latest_handle("policy") is art
    svc.register("w1", host(tmp_path, "w1", node="node-b"))
    assert [r.all_proven for r in svc.catch_up("w1")] == [True]
    assert handles == [art, art]
    # a claim that does not match the artifact fails the proof on every worker
    wrong = svc.publish(StoredArtifact("observer", 3, art), fake_logprobs(3))
    assert [f.reason for f in wrong.failures] == ["rejected: the artifact is 'policy', published as 'observer'"] * 2
    assert svc.latest_versions() == {"policy": 3}


def test_sync_latency_uses_injected_clock(tmp_path):
    ticks = iter([10.0, 10.25])  # publish start, after the last answer
    rec = Recorder()
    svc = service([host(tmp_path, "w0")], rec, clock=lambda: next(ticks))
    report = svc.publish(payload(version=1), fake_logprobs(1))
    assert report.latency_s == 0.25
    assert rec.latest("duet_sync_latency_s", role="policy") == 0.25


def test_report_types():
    ack = SyncAck("w", "n", "policy", 1, (0.0,), 0.1)
    assert ack.error == "" and SyncFailure("w", "x").reason == "x"
    with pytest.raises(ValueError):
        Probe((1,), ())


def test_rollout_worker_is_synced_and_scores_the_probe(tmp_path):
    # A real RolloutWorker: Reasoner served by adapter "policy", Observer by "observer", both roles
    # on one FakeEngine; the worker loads and scores the probe itself.
    from rollout.config import DialogueConfig, RoleConfig, RolloutConfig
    from rollout.worker import RolloutWorker

    cfg = RolloutConfig(kind="dialogue", dialogue=DialogueConfig(
        reasoner=RoleConfig(adapter="policy"), observer=RoleConfig(adapter="observer")))
    eng = FakeEngine(lambda *a: "x")
    worker_host = AdapterHost(RolloutWorker(cfg, {"reasoner": eng, "observer": eng}),
                              SyncSite("w0", "node-a", str(tmp_path)))
    svc = service([worker_host])
    assert svc.publish(payload(version=1), fake_logprobs(1)).all_proven
    assert svc.publish(payload("observer", 3), fake_logprobs(3)).all_proven
    assert eng.adapter_versions() == {"policy": 1, "observer": 3}
    report = svc.publish(payload("reasoner", 1), fake_logprobs(1))  # no role uses "reasoner"
    [failure] = report.failures
    assert failure.reason == "rejected (serves v0): RolloutWorker.load_adapter: no role uses adapter " \
                             "'reasoner' (served: ['observer', 'policy'])"


def test_learner_export_round_trip(tmp_path):
    # learner.export.adapter_artifact (the learner's in-memory export) -> node-local directory
    # that reads back as the same artifact, with the safetensors bytes unchanged
    import torch

    from learner.export import adapter_artifact
    from rollout.adapter_artifact import read_artifact

    class LoraConfig:  # the three things adapter_artifact reads from peft.LoraConfig (peft imports slowly)
        r, lora_alpha = 2, 4

        def to_dict(self):
            return {"r": 2, "lora_alpha": 4, "target_modules": {"q_proj"}, "peft_type": "LORA"}

    state = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.ones(2, 4),
             "base_model.model.layers.0.q_proj.lora_B.weight": torch.zeros(4, 2)}
    p = adapter_artifact(state, LoraConfig(), role="observer", version=5, base_model_id="tiny-vlm", step=9)
    ref = materialize(p, tmp_path)
    assert (ref.name, ref.version) == ("observer", 5)
    back = read_artifact(ref.path)
    assert back == p and back.manifest["learner_step"] == 9 and back.manifest["lora_r"] == 2
    assert (Path(ref.path) / ADAPTER_WEIGHTS).read_bytes() == p.files[ADAPTER_WEIGHTS]


# ---------------------------------------------------------------- proof tolerance per dtype


def test_proof_tolerance_is_the_loosest_of_the_two_sides():
    from cluster.weight_sync import PROOF_TOLERANCE, proof_tolerance

    assert proof_tolerance("float32", "fp32") == PROOF_TOLERANCE["float32"] == 1e-4
    assert proof_tolerance("bfloat16", "fp32") == proof_tolerance("float32", "bf16") == 0.15
    assert proof_tolerance("auto") == 0.15 and proof_tolerance("float16", "fp32") == 0.02


def test_recipe_proof_tolerance_by_dtype_or_set_per_role():
    from cluster.config import build_recipe

    assert build_recipe({}).proof_tolerance("policy") == 1e-4
    bf16 = build_recipe({"roles": {"policy": {"engine": {"dtype": "bfloat16"}, "learner": {"dtype": "bf16"}}}})
    assert bf16.proof_tolerance("policy") == 0.15
    own = build_recipe({"roles": {"policy": {"proof_tolerance": 0.03, "engine": {"dtype": "bfloat16"}}}})
    assert own.proof_tolerance("policy") == 0.03


def test_publish_tolerance_decides_and_the_report_keeps_the_gap(tmp_path):
    hosts = [host(tmp_path, "w0"), host(tmp_path, "w1")]
    svc = service(hosts)  # default tolerance 1e-6
    off = [x + 0.04 for x in fake_logprobs(1)]  # what a bf16 learner might send: 0.04 off every token
    strict = svc.publish(payload(version=1), off)
    assert not strict.all_proven and {f.kind for f in strict.failures} == {"probe"}
    assert strict.probe_gap == pytest.approx(0.04) and strict.tolerance == 1e-6
    loose = svc.publish(payload(version=2, weights=b"v2"), [x + 0.04 for x in fake_logprobs(2)], tolerance=0.15)
    assert loose.all_proven and loose.proven == ("w0", "w1")
    assert loose.probe_gap == pytest.approx(0.04) and loose.tolerance == 0.15
    # a worker restarted later is caught up against the same bound
    fresh = host(tmp_path, "w2", node="node-b")
    svc.register("w2", fresh)
    (caught,) = svc.catch_up("w2")
    assert caught.all_proven and caught.tolerance == 0.15
