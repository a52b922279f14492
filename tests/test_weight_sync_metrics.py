"""Typed metrics front, the in-memory recorder and the Ray sink's no-op without Ray."""

import subprocess
import sys

import pytest

from cluster.metrics import SPECS, DuetMetrics, MetricRow, RaySink, Recorder, format_tags, rows_to_columns

pytestmark = pytest.mark.unit


def clock_from(times):
    it = iter(times)
    return lambda: next(it)


def test_recorder_latest_counters_and_drain():
    rec = Recorder(clock=clock_from([1.0, 2.0, 3.0, 4.0, 5.0]))
    m = DuetMetrics(rec)
    m.reward("policy", 0.5)
    m.reward("policy", 0.75)  # gauges keep the last value
    m.episodes_produced(8)
    m.episodes_produced(4)  # counters add up: 8 + 4 = 12
    m.episodes_dropped("stale", 3)
    assert rec.latest("duet_reward", role="policy") == 0.75
    assert rec.latest("duet_reward", role="observer") is None
    assert rec.latest("duet_episodes_produced") == 12.0
    assert rec.latest("duet_episodes_dropped", reason="stale") == 3.0
    rows = rec.drain(step=7)
    assert rows[0] == MetricRow(7, "duet_reward", "role=policy", 0.5, 1.0)
    assert [r.value for r in rows] == [0.5, 0.75, 8.0, 4.0, 3.0]
    assert rec.drain(step=8) == []
    assert rows_to_columns(rows[:2]) == {"step": [7, 7], "name": ["duet_reward"] * 2, "tags": ["role=policy"] * 2,
                                         "value": [0.5, 0.75], "time_s": [1.0, 2.0]}


def test_every_typed_method_matches_its_spec():
    rec = Recorder(clock=lambda: 0.0)
    m = DuetMetrics(rec)
    m.success_rate("reasoner", 0.25)
    m.kl("reasoner", 0.01)
    m.entropy("observer", 1.5)
    m.adapter_version("observer", 3)
    m.staleness("policy", 1.0)
    m.sync_latency("policy", 0.2)
    m.tokens_per_s("policy", 120.0)
    m.queue_depth("episodes", 5)
    names = {r.name for r in rec.drain(0)}
    assert names | {"duet_reward", "duet_episodes_produced", "duet_episodes_dropped"} == set(SPECS)
    assert rec.latest("duet_queue_depth", queue="episodes") == 5.0


def test_tags_must_match_declaration():
    with pytest.raises(ValueError, match="duet_reward"):
        DuetMetrics(Recorder())._emit("duet_reward", 1.0)
    assert format_tags({"role": "policy", "a": "b"}) == "a=b,role=policy"


def test_ray_sink_is_a_noop_without_ray():
    # checked in a fresh interpreter: in a full test session a Ray-tier fixture may already have
    # initialised Ray in this process, and then the sink rightly records
    code = ("import sys\nfrom cluster.metrics import DuetMetrics, RaySink\nsink = RaySink()\n"
            "DuetMetrics(sink).sync_latency('policy', 0.1)\n"
            "print(len(sink._objects), 'ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"]
