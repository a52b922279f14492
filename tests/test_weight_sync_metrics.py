"""Typed metrics front, the in-memory recorder, the Ray sink's no-op without Ray, the exported names,
the Prometheus text parser, staleness and the export hold."""

import subprocess
import sys
from types import SimpleNamespace

import pytest

from cluster.metrics import (SPECS, DuetMetrics, MetricRow, RaySink, Recorder, Sample, all_exported_names,
                             exported_names, format_tags, hold_for_export, mean_staleness, parse_prometheus,
                             row_of, rows_to_columns)

pytestmark = pytest.mark.unit


def clock_from(times):
    it = iter(times)
    return lambda: next(it)


def test_recorder_latest_counters_and_drain():
    rec = Recorder(clock=clock_from([1.0, 2.0, 3.0, 4.0, 5.0]))
    m = DuetMetrics(rec)
    m.reward(0.5)
    m.reward(0.75)  # gauges keep the last value
    m.episodes_produced(8)
    m.episodes_produced(4)  # counters add up: 8 + 4 = 12
    m.episodes_dropped("stale", 3)
    assert rec.latest("duet_reward") == 0.75
    assert rec.latest("duet_reward", role="observer") is None
    assert rec.latest("duet_episodes_produced") == 12.0
    assert rec.latest("duet_episodes_dropped", reason="stale") == 3.0
    rows = rec.drain(step=7)
    assert rows[0] == MetricRow(7, "duet_reward", "", 0.5, 1.0)
    assert [r.value for r in rows] == [0.5, 0.75, 8.0, 4.0, 3.0]
    assert rec.drain(step=8) == []
    assert rows_to_columns(rows[:2]) == {"step": [7, 7], "name": ["duet_reward"] * 2, "tags": [""] * 2,
                                         "value": [0.5, 0.75], "time_s": [1.0, 2.0]}


def test_every_typed_method_matches_its_spec():
    rec = Recorder(clock=lambda: 0.0)
    m = DuetMetrics(rec)
    m.success_rate(0.25)
    m.kl_ref("reasoner", 0.01)
    m.approx_kl("reasoner", 0.002)
    m.entropy("observer", 1.5)
    m.adapter_version("observer", 3)
    m.staleness("policy", 1.0)
    m.sync_latency("policy", 0.2)
    m.tokens_per_s(120.0)
    m.queue_depth("in_flight", 5)
    names = {r.name for r in rec.drain(0)}
    assert names | {"duet_reward", "duet_episodes_produced", "duet_episodes_dropped"} == set(SPECS)
    assert rec.latest("duet_queue_depth", queue="in_flight") == 5.0
    assert rec.latest("duet_kl_ref", role="reasoner") == 0.01 and rec.latest("duet_approx_kl", role="reasoner") == 0.002


def test_tags_must_match_declaration():
    with pytest.raises(ValueError, match="duet_entropy"):
        DuetMetrics(Recorder())._emit("duet_entropy", 1.0)
    assert format_tags({"role": "policy", "a": "b"}) == "a=b,role=policy"


def test_ray_sink_is_a_noop_without_ray():
    # checked in a fresh interpreter: in a full test session a Ray-tier fixture may already have
    # initialised Ray in this process, and then the sink rightly records
    code = ("import sys\nfrom cluster.metrics import DuetMetrics, RaySink\nsink = RaySink()\n"
            "DuetMetrics(sink).sync_latency('policy', 0.1)\n"
            "print(len(sink._objects), 'ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"]


def test_learner_update_sets_each_kl_under_its_own_name():
    rec = Recorder(clock=lambda: 0.0)
    m = DuetMetrics(rec)
    m.learner_update("policy", {"policy/entropy": 1.25, "policy/approx_kl": 0.003, "loss/policy": -0.1})
    assert rec.latest("duet_entropy", role="policy") == 1.25
    assert rec.latest("duet_approx_kl", role="policy") == 0.003
    assert rec.latest("duet_kl_ref", role="policy") is None  # no KL term: no KL-to-reference figure
    m.learner_update("policy", {"policy/entropy": 1.0, "policy/approx_kl": 0.001, "kl/ref": 0.02})
    assert rec.latest("duet_kl_ref", role="policy") == 0.02 and rec.latest("duet_approx_kl", role="policy") == 0.001
    m.learner_update("observer", {"batch/samples": 0.0, "batch/episodes": 8.0})  # empty update: nothing set
    assert rec.latest("duet_entropy", role="observer") is None


def test_exported_names_follow_rays_prometheus_naming():
    assert exported_names(SPECS["duet_reward"]) == ("ray_duet_reward",)
    assert exported_names(SPECS["duet_episodes_produced"]) == ("ray_duet_episodes_produced_total",)
    assert exported_names(SPECS["duet_sync_latency_s"]) == (
        "ray_duet_sync_latency_s_bucket", "ray_duet_sync_latency_s_count", "ray_duet_sync_latency_s_sum")
    assert len(all_exported_names()) == 9 + 2 + 3  # 9 gauges, 2 counters, 1 histogram
    assert "ray_duet_kl" not in all_exported_names()  # split: duet_kl_ref and duet_approx_kl


def test_each_gauge_names_its_parquet_row():
    assert row_of(SPECS["duet_entropy"], {"role": "observer"}) == ("learner/observer", "policy/entropy")
    assert row_of(SPECS["duet_kl_ref"], {"role": "policy"}) == ("learner/policy", "kl/ref")
    assert row_of(SPECS["duet_approx_kl"], {"role": "policy"}) == ("learner/policy", "policy/approx_kl")
    assert row_of(SPECS["duet_queue_depth"], {"queue": "in_flight"}) == ("rollout", "queue_depth/in_flight")
    assert row_of(SPECS["duet_adapter_version"], {"role": "policy"}) == ("sync/policy", "version")
    assert row_of(SPECS["duet_episodes_produced"], {}) is None
    assert all(s.row is not None for s in SPECS.values() if s.kind == "gauge")


def test_parse_prometheus_text():
    text = ("# HELP ray_duet_reward Mean episode reward\n# TYPE ray_duet_reward gauge\n"
            'ray_duet_reward{Component="core_worker",SessionName="session_1"} 0.625\n'
            'ray_duet_sync_latency_s_bucket{role="policy",le="0.05"} 3.0\n'
            'ray_x{a="q\\"uote",b=""} -1.5e-3 1700000000000\n\n'
            "ray_duet_episodes_produced_total 32.0\n")
    assert parse_prometheus(text) == [
        Sample("ray_duet_reward", {"Component": "core_worker", "SessionName": "session_1"}, 0.625),
        Sample("ray_duet_sync_latency_s_bucket", {"role": "policy", "le": "0.05"}, 3.0),
        Sample("ray_x", {"a": 'q"uote', "b": ""}, -0.0015),
        Sample("ray_duet_episodes_produced_total", {}, 32.0)]


def _episode(**versions):
    return SimpleNamespace(policy_versions=versions)


def test_mean_staleness_per_role_against_the_current_adapters():
    eps = [_episode(reasoner=3, observer=5), _episode(reasoner=2, observer=5), _episode(observer=4)]
    versions = {"r_lora": 3, "o_lora": 5}
    # reasoner: (3-3 + 3-2) / 2 = 0.5; observer: (0 + 0 + 1) / 3
    assert mean_staleness(eps, versions, {"reasoner": "r_lora", "observer": "o_lora"}) == {
        "observer": 1 / 3, "reasoner": 0.5}
    assert mean_staleness(eps, versions, {"observer": "o_lora"}) == {"observer": 1 / 3}  # roles without adapter
    assert mean_staleness([], versions, {"observer": "o_lora"}) == {}  # an empty batch has none


def test_hold_for_export_waits_one_report_interval_only_when_scraped():
    waits = []
    # Ray's default 10 s report interval (RAY_metrics_report_interval_ms unset), plus 1 s
    assert hold_for_export(None, exported=True, sleep=waits.append) == 11.0
    assert hold_for_export(None, exported=False, sleep=waits.append) == 0.0
    assert hold_for_export(2.5, exported=False, sleep=waits.append) == 2.5  # explicit: always
    assert hold_for_export(0, exported=True, sleep=waits.append) == 0.0  # 0: never
    assert waits == [11.0, 2.5]


def test_ray_sink_skips_zero_counter_increments():
    calls = []

    class Obj:
        def inc(self, value, tags):
            calls.append(("inc", value, tags))

        def set(self, value, tags):
            calls.append(("set", value, tags))

    class FakeRay:
        @staticmethod
        def is_initialized():
            return True

    sink = RaySink()
    sink._objects = {"duet_episodes_dropped": Obj(), "duet_queue_depth": Obj()}
    sink._ray = lambda: FakeRay
    m = DuetMetrics(sink)
    m.episodes_dropped("stale", 0)  # Ray refuses inc(0): nothing sent
    m.episodes_dropped("stale", 8)
    m.queue_depth("in_flight", 0)  # a gauge at 0 is a value
    assert calls == [("inc", 8.0, {"reason": "stale"}), ("set", 0.0, {"queue": "in_flight"})]


def test_last_values_of_polled_pages():
    # the e2e tests' helper: counters summed over processes, a gauge's newest process wins
    from prometheus_poll import gauge_mismatches, last_values

    a, b = {"WorkerId": "a", "role": "policy", "SessionName": "s"}, {"WorkerId": "b", "role": "policy"}
    pages = [(0.0, [Sample("ray_duet_adapter_version", a, 3.0), Sample("ray_duet_episodes_produced_total", a, 16)]),
             (1.0, [Sample("ray_duet_adapter_version", a, 3.0), Sample("ray_duet_adapter_version", b, 4.0),
                    Sample("ray_duet_episodes_produced_total", a, 16), Sample("ray_duet_episodes_produced_total", b, 8)]),
             (2.0, [Sample("ray_duet_adapter_version", b, 6.0)])]
    last = last_values(pages)
    assert last == {("ray_duet_adapter_version", (("role", "policy"),)): 6.0,
                    ("ray_duet_episodes_produced_total", ()): 24.0}  # Ray's labels and undeclared tags dropped
    assert gauge_mismatches(last, {("sync/policy", "version"): 6.0}) == []
    assert gauge_mismatches(last, {("sync/policy", "version"): 5.0}) == [
        (("ray_duet_adapter_version", (("role", "policy"),)), 6.0, 5.0)]
