"""The shipped Grafana dashboard (deploy/grafana/duet_dashboard.json): every panel's PromQL reads only
metric names the run exports (cluster.metrics.SPECS as Prometheus names them), every exported name is
on some panel, and the file is what Ray's own dashboard factory renders from deploy/grafana's config."""

import json
import re
from pathlib import Path

import pytest

from cluster.metrics import all_exported_names

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "duet_dashboard.json"
PROMQL_WORDS = {  # functions, aggregations and keywords: never metric names
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "topk", "bottomk",
    "label_values", "clamp_min", "clamp_max", "abs", "delta", "deriv", "time", "vector", "scalar"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers once string literals, label matchers
    ``{...}``, ranges ``[...]`` and ``by (...)``/``without (...)`` label lists are removed, that are no
    function (not followed by ``(``), keyword or number."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word, rest = m.group(0), s[m.end():].lstrip()
        if word in PROMQL_WORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def _check_parser() -> None:
    assert metric_names('histogram_quantile(0.5, sum(rate(ray_a_bucket{role=~"$Role", x="by(q)"}[$window])) '
                        'by (le, role))') == {"ray_a_bucket"}
    assert metric_names("sum(rate(ray_b_sum{}[1m])) by (role) / sum(rate(ray_b_count[1m])) by (role)") == {
        "ray_b_sum", "ray_b_count"}
    assert metric_names("max(ray_c) without (WorkerId) > 0.5") == {"ray_c"}


def panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


@pytest.mark.unit
def test_metric_names_parser():
    _check_parser()


@pytest.mark.unit
def test_every_panel_queries_only_metrics_the_run_emits():
    dashboard = json.loads(DASHBOARD.read_text())
    emitted, used = all_exported_names(), set()
    graphs = [p for p in panels(dashboard) if p["type"] != "row"]
    assert len(graphs) == 10
    for p in graphs:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = metric_names(t["expr"])
            assert names and names <= emitted, (p["title"], t["expr"], sorted(names - emitted))
            used |= names
    assert used == emitted  # and every exported series is on some panel
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":  # label_values(<selector>, <label name>)
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["query"]["query"]).group(1)
            assert metric_names(selector) and metric_names(selector) <= emitted, var["name"]


@pytest.mark.unit
def test_dashboard_has_the_ray_dashboard_shape():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "duetRlDashboard" and dashboard["title"] == "duet-rl Training"
    assert any(t.startswith("rayVersion:") for t in dashboard["tags"])  # stamped by Ray's factory
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert {p["title"] for p in panels(dashboard) if p["type"] == "row"} == {
        "Learning", "Weight sync", "Rollouts and staleness"}
    assert all(p["datasource"] == "${datasource}" for p in panels(dashboard) if p["type"] != "row")
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "window", "SessionName", "Role"} <= names


@pytest.mark.ray
def test_shipped_json_is_what_rays_factory_renders():
    from deploy.grafana.duet_dashboard import render

    assert json.loads(render()) == json.loads(DASHBOARD.read_text()), \
        "stale: run python -m deploy.grafana.duet_dashboard"
