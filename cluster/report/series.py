"""What the run report plots, as data: ``metrics.parquet`` grouped into panels of named series.

Pure pyarrow (no matplotlib), so a test can compare every plotted point with the Parquet file read
on its own. The file is long format (``step, scope, name, value, time_s``, see
:mod:`cluster.progress`): per-step rows (``step >= 0``; scope ``rollout`` or ``learner/<role>``),
and rows with ``step = -1``: events (scope ``event``, the text in ``name``), adapter syncs (scope
``sync/<role>``: ``latency_s``, ``version``, ``proven_workers``, ``probe_gap`` per sync, in that
order) and held-out evaluations (scope ``eval/<label>``).

Per-step series are matched to panels by name (:data:`STEP_PANELS`); a series no panel claims is
still plotted, in a panel named after its name's prefix ("batch", "mismatch", ...), so a metric
added later shows up without a change here. Series absent from a run are skipped quietly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import pyarrow.parquet as pq


@dataclass(frozen=True)
class Series:
    """One plotted line: ``x[i]`` and ``y[i]`` are one point (equal lengths, checked)."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    scope: str = ""
    """Where the points come from in ``metrics.parquet``: its scope and name (for evaluations the
    scope is ``eval/*`` and x indexes the panel's categories; for syncs x is the ``version`` row)."""
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Series: {len(self.x)} x values for {len(self.y)} y values")


@dataclass(frozen=True)
class Panel:
    """One plot: a title, axis labels and its series by legend label."""

    title: str
    xlabel: str
    ylabel: str
    series: Mapping[str, Series]
    categories: tuple[str, ...] = ()
    """Names of the x positions 0, 1, ... when x is categorical (evaluation labels), else empty."""


@dataclass(frozen=True)
class Row:
    step: int
    scope: str
    name: str
    value: float
    time_s: float


Match = Callable[[str, str], bool]
"""(scope, name) -> does this series belong to the panel?"""


def _names(*names: str) -> Match:
    return lambda scope, name: name in names


def _prefix(prefix: str, scope_prefix: str = "") -> Match:
    return lambda scope, name: name.startswith(prefix) and scope.startswith(scope_prefix)


def _pattern(regex: str) -> Match:
    return lambda scope, name: re.search(regex, name) is not None


STEP_PANELS: tuple[tuple[str, str, Match], ...] = (
    ("Reward (training episodes)", "mean reward", lambda s, n: s == "rollout" and n == "reward"),
    ("Reward components", "mean component", _prefix("reward/", "rollout")),
    ("Episodes per step and in flight", "episodes",
     lambda s, n: (s == "rollout" and n == "episodes") or n.startswith("queue_depth/")),
    ("Success rate (training episodes)", "success", lambda s, n: s == "rollout" and n == "success"),
    ("KL", "KL", _names("kl/ref", "policy/approx_kl", "loss/kl")),
    ("Entropy", "nats / token", _names("policy/entropy")),
    ("Losses", "loss", _pattern(r"^loss/(policy|value|total)$")),
    ("Value explained variance (PPO)", "explained variance", _names("value/explained_variance")),
    ("Values and returns (PPO)", "mean", _names("value/mean", "value/returns_mean")),
    ("Advantages", "advantage", _prefix("adv/")),
    ("Learner rewards (normalised)", "reward", _names("reward/mean", "reward/std", "reward/normalized_mean")),
    ("Clipping", "fraction", _pattern(r"clip_frac$")),
    ("Staleness and dropped episodes", "count", _pattern(r"stale|dropped")),
    ("Throughput", "tokens / s", _names("tokens_per_s", "perf/tokens_per_s")),
    ("Step time", "seconds", _prefix("time/")),
    ("Optimizer", "value", _prefix("optim/")),
)

SYNC_PANELS: tuple[tuple[str, str, str], ...] = (
    ("Adapter sync latency", "seconds", "latency_s"),
    ("Workers that proved each sync", "workers", "proven_workers"),
    ("Sync proof: probe log-prob gap", "max |gap|", "probe_gap"),
)


def read_rows(path: Path) -> list[Row]:
    """Every row of a ``metrics.parquet``, in file order."""
    return [Row(int(r["step"]), r["scope"], r["name"], float(r["value"]), float(r["time_s"]))
            for r in pq.read_table(path).to_pylist()]


def _labels(keys: list[tuple[str, str]], roles: int) -> list[str]:
    """Legend labels: the metric name, with ``[scope]`` added when the name alone is ambiguous (two
    scopes in one panel, several learner roles, a scope other than rollout/learner)."""
    names = [n for _, n in keys]
    def qualified(scope: str, name: str) -> bool:
        known = scope == "rollout" or (scope.startswith("learner/") and roles == 1)
        return names.count(name) > 1 or not known
    return [f"{n} [{s}]" if qualified(s, n) else n for s, n in keys]


def step_series(rows: list[Row]) -> dict[tuple[str, str], Series]:
    """(scope, name) -> its per-step series (rows with ``step >= 0``, sorted by step; a step written
    twice, e.g. on resume, keeps its last value)."""
    points: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        if r.step >= 0:
            points.setdefault((r.scope, r.name), {})[r.step] = r.value
    return {k: Series(tuple(float(s) for s in sorted(p)), tuple(p[s] for s in sorted(p)), *k) for k, p in points.items()}


def step_panels(rows: list[Row]) -> list[Panel]:
    """The per-step panels that have data, in :data:`STEP_PANELS` order, then one per unclaimed prefix."""
    series = step_series(rows)
    roles = len({s for s, _ in series if s.startswith("learner/")})
    claimed: set[tuple[str, str]] = set()
    panels = []
    for title, ylabel, match in STEP_PANELS:
        keys = [k for k in sorted(series) if k not in claimed and match(*k)]
        claimed.update(keys)
        if keys:
            panels.append(Panel(title, "step", ylabel, dict(zip(_labels(keys, roles), (series[k] for k in keys)))))
    rest: dict[str, list[tuple[str, str]]] = {}
    for k in sorted(set(series) - claimed):
        rest.setdefault(k[1].split("/", 1)[0] if "/" in k[1] else "other", []).append(k)
    return panels + [Panel(f"Other: {p}", "step", "value", dict(zip(_labels(ks, roles), (series[k] for k in ks))))
                     for p, ks in sorted(rest.items())]


def sync_panels(rows: list[Row]) -> list[Panel]:
    """Latency, proven workers and probe gap of every adapter sync, x = the version synced."""
    by_role: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.step < 0 and r.scope.startswith("sync/"):
            by_role.setdefault(r.scope.split("/", 1)[1], {}).setdefault(r.name, []).append(r.value)
    panels = []
    for title, ylabel, name in SYNC_PANELS:
        series = {role: Series(tuple(m.get("version", [])), tuple(m[name]), f"sync/{role}", name)
                  for role, m in sorted(by_role.items()) if name in m and len(m[name]) == len(m.get("version", []))}
        if series:
            panels.append(Panel(title, "adapter version", ylabel, series))
    return panels


def evaluations(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Evaluation label -> its figures (success, reward, episodes, reward/<component>), in the order
    the evaluations ran."""
    out: dict[str, dict[str, float]] = {}
    for r in sorted((r for r in rows if r.step < 0 and r.scope.startswith("eval/")), key=lambda r: r.time_s):
        out.setdefault(r.scope.split("/", 1)[1], {})[r.name] = r.value
    return out


def eval_panels(rows: list[Row]) -> list[Panel]:
    """Held-out success and held-out reward at every evaluation (x = evaluation, in the order they
    ran); two panels, as an environment's return is not on success's 0..1 scale."""
    evals = evaluations(rows)
    labels = tuple(evals)
    panels = []
    for name in ("success", "reward"):
        idx = [i for i, lab in enumerate(labels) if name in evals[lab]]
        if idx:
            s = Series(tuple(float(i) for i in idx), tuple(evals[labels[i]][name] for i in idx), "eval/*", name)
            panels.append(Panel(f"Held-out {name}", "evaluation", name, {f"held-out {name}": s}, labels))
    return panels


def events(rows: list[Row]) -> list[tuple[float, str]]:
    """(seconds since start, text) of every event row."""
    return [(r.time_s, r.name) for r in rows if r.scope == "event"]


def report_panels(rows: list[Row]) -> dict[str, Panel]:
    """Every panel the report draws, by title: evaluations, per-step panels, sync panels."""
    return {p.title: p for p in [*eval_panels(rows), *step_panels(rows), *sync_panels(rows)]}
