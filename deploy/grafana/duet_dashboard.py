"""The duet-rl Grafana dashboard, written the way Ray writes its own (``ray.dashboard.modules.metrics``):
panels and targets as Ray's ``DashboardConfig`` / ``Row`` / ``Panel`` / ``Target``, rendered by Ray's
``grafana_dashboard_factory`` on the base JSON next to this file into ``duet_dashboard.json``.

    python -m deploy.grafana.duet_dashboard          # rewrite deploy/grafana/duet_dashboard.json

Every query reads only metrics the run exports (:data:`cluster.metrics.SPECS`, as Prometheus names
them: ``ray_`` prefix, ``_total`` for counters, ``_bucket``/``_count``/``_sum`` for the histogram);
tests/test_grafana_dashboard.py parses each expression and checks it. Gauges are per process
(Ray labels each series with its WorkerId); ``max by (role)`` shows one line per role.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE_JSON = HERE / "duet_grafana_dashboard_base.json"
OUTPUT = HERE / "duet_dashboard.json"
F = 'SessionName=~"$SessionName", {global_filters}'  # every target's label filter
R = 'role=~"$Role", ' + F  # per-role panels


def _config():
    from ray.dashboard.modules.metrics.dashboards.common import DashboardConfig, Panel, Row, Target

    def gauge(pid, title, description, unit, expr, legend):
        return Panel(id=pid, title=title, description=description, unit=unit,
                     targets=[Target(expr=expr, legend=legend)], fill=0, stack=False)

    learning = [
        gauge(1, "Reward", "Mean episode reward of each step's trained batch (duet_reward).", "short",
              f"max(ray_duet_reward{{{{{F}}}}})", "reward"),
        gauge(2, "Success rate", "Fraction of each step's trained episodes that succeeded (duet_success_rate).",
              "percentunit", f"max(ray_duet_success_rate{{{{{F}}}}})", "success"),
        gauge(3, "Entropy", "Mean token entropy of each role's last update (duet_entropy).", "short",
              f"max(ray_duet_entropy{{{{{R}}}}}) by (role)", "{{role}}"),
        Panel(id=4, title="KL", unit="short", fill=0, stack=False,
              description="PPO's approx-KL between pi_old and pi (duet_approx_kl) and, with a KL term "
                          "(algo.kl_coef > 0), the KL to the reference model (duet_kl_ref), per role.",
              targets=[Target(expr=f"max(ray_duet_approx_kl{{{{{R}}}}}) by (role)", legend="approx-KL {{role}}"),
                       Target(expr=f"max(ray_duet_kl_ref{{{{{R}}}}}) by (role)", legend="KL to ref {{role}}")]),
    ]
    sync = [
        gauge(5, "Adapter version", "Latest adapter version proven on every rollout worker (duet_adapter_version).",
              "short", f"max(ray_duet_adapter_version{{{{{R}}}}}) by (role)", "{{role}}"),
        Panel(id=6, title="Adapter sync latency", unit="s", fill=0, stack=False,
              description="Publish-to-last-ack time of adapter syncs, p50 and p95 over the window "
                          "(duet_sync_latency_s histogram), and the mean.",
              targets=[Target(expr=f"histogram_quantile(0.5, sum(rate(ray_duet_sync_latency_s_bucket{{{{{R}}}}}"
                                   "[$window])) by (le, role))", legend="p50 {{role}}"),
                       Target(expr=f"histogram_quantile(0.95, sum(rate(ray_duet_sync_latency_s_bucket{{{{{R}}}}}"
                                   "[$window])) by (le, role))", legend="p95 {{role}}"),
                       Target(expr=f"sum(rate(ray_duet_sync_latency_s_sum{{{{{R}}}}}[$window])) by (role) / "
                                   f"sum(rate(ray_duet_sync_latency_s_count{{{{{R}}}}}[$window])) by (role)",
                              legend="mean {{role}}")]),
    ]
    rollouts = [
        gauge(7, "Generated tokens/s", "Generated tokens per second over each step's rollouts, all workers "
              "(duet_tokens_per_s).", "short", f"max(ray_duet_tokens_per_s{{{{{F}}}}})", "tokens/s"),
        Panel(id=8, title="Episodes per second", unit="short", fill=0, stack=False,
              description="Episodes collected from the rollout workers (duet_episodes_produced) and dropped "
                          "before training (duet_episodes_dropped, by reason), per second over the window.",
              targets=[Target(expr=f"sum(rate(ray_duet_episodes_produced_total{{{{{F}}}}}[$window]))",
                              legend="produced"),
                       Target(expr=f"sum(rate(ray_duet_episodes_dropped_total{{{{{F}}}}}[$window])) by (reason)",
                              legend="dropped ({{reason}})")]),
        gauge(9, "Staleness", "Mean adapter version minus generating version over each step's trained episodes "
              "(duet_staleness; 0 in sync mode, about 1 in async mode).", "short",
              f"max(ray_duet_staleness{{{{{R}}}}}) by (role)", "{{role}}"),
        gauge(10, "Queue depth", "Episodes launched for the next step and not collected yet while the learner "
              "trains (duet_queue_depth, queue=in_flight; 0 in sync mode).", "short",
              f"max(ray_duet_queue_depth{{{{{F}}}}}) by (queue)", "{{queue}}"),
    ]
    rows = [Row(title="Learning", id=100, panels=learning), Row(title="Weight sync", id=101, panels=sync),
            Row(title="Rollouts and staleness", id=102, panels=rollouts)]
    return DashboardConfig(name="DUET", default_uid="duetRlDashboard", rows=rows, standard_global_filters=[],
                           base_json_file_name=str(BASE_JSON))


def render() -> str:
    """The dashboard JSON, as Ray's factory renders it (an absolute base file name is read as is)."""
    from ray.dashboard.modules.metrics.grafana_dashboard_factory import _generate_grafana_dashboard

    content, _uid = _generate_grafana_dashboard(_config())
    return content + "\n"


def main(argv: list[str] | None = None) -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT} ({len(json.loads(OUTPUT.read_text())['panels'])} panels and rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
