"""Training and system metrics: one typed front (:class:`DuetMetrics`), several sinks.

Every metric is declared once in :data:`SPECS` (name, kind, tag keys, description). Callers use the
typed methods of :class:`DuetMetrics` (``metrics.sync_latency("observer", 0.4)``), never metric
names as strings. Each call goes to every sink:

- :class:`RaySink` exports to Ray's metrics agent via ``ray.util.metrics`` (Prometheus endpoint,
  Ray dashboard "Metrics" tab; names are prefixed ``ray_`` by Ray). It is a no-op while Ray is not
  initialised in this process, and never imports Ray itself (it looks Ray up in ``sys.modules``),
  so unit tests and the local CLI stay Ray-free.
- :class:`Recorder` keeps points in memory for the local progress display (:meth:`Recorder.latest`)
  and the Parquet metrics file (:meth:`Recorder.drain` -> :class:`MetricRow` records, one fixed
  schema; :func:`rows_to_columns` gives the columns for ``pyarrow.table``).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence

Kind = Literal["gauge", "counter", "histogram"]

LATENCY_BOUNDARIES_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class MetricSpec:
    """Declaration of one metric."""

    name: str
    """Prometheus-safe name (``[a-z_]+``), prefixed ``duet_``."""
    kind: Kind
    description: str
    tag_keys: tuple[str, ...] = ()
    """Every record of this metric carries exactly these tags."""
    boundaries: tuple[float, ...] = ()
    """Histogram bucket upper bounds (histograms only)."""
    row: tuple[str, str] | None = None
    """Gauges: (scope, name) of the metrics.parquet row holding the same value ("{role}", "{queue}"
    filled in from the tags); the last exported value equals the file's last such row."""


SPECS: dict[str, MetricSpec] = {s.name: s for s in (
    MetricSpec("duet_reward", "gauge", "Mean episode reward of the step's trained batch", (),
               row=("rollout", "reward")),
    MetricSpec("duet_success_rate", "gauge", "Fraction of the step's trained episodes that succeeded", (),
               row=("rollout", "success")),
    MetricSpec("duet_kl_ref", "gauge", "Mean token KL of pi to the reference (adapter disabled) in the last "
               "update; only with a KL term (algo.kl_coef > 0)", ("role",), row=("learner/{role}", "kl/ref")),
    MetricSpec("duet_approx_kl", "gauge", "PPO's approx-KL between pi_old and pi (mean k3 estimate) of the last "
               "update", ("role",), row=("learner/{role}", "policy/approx_kl")),
    MetricSpec("duet_entropy", "gauge", "Mean token entropy of the last update", ("role",),
               row=("learner/{role}", "policy/entropy")),
    MetricSpec("duet_adapter_version", "gauge", "Latest adapter version proven on the rollout workers", ("role",),
               row=("sync/{role}", "version")),
    MetricSpec("duet_staleness", "gauge", "Mean adapter version minus generating version over the step's trained "
               "episodes", ("role",), row=("rollout", "staleness/{role}")),
    MetricSpec("duet_sync_latency_s", "histogram", "Publish-to-last-ack time of an adapter sync", ("role",),
               LATENCY_BOUNDARIES_S),
    MetricSpec("duet_tokens_per_s", "gauge", "Generated tokens per second over the step's rollouts (all workers)",
               (), row=("rollout", "tokens_per_s")),
    MetricSpec("duet_queue_depth", "gauge", "Episodes in a queue while the learner trains (queue=in_flight: "
               "launched for the next step, not collected yet; 0 in sync mode)", ("queue",),
               row=("rollout", "queue_depth/{queue}")),
    MetricSpec("duet_episodes_produced", "counter", "Episodes collected from the rollout workers"),
    MetricSpec("duet_episodes_dropped", "counter", "Episodes dropped before training (reason=stale: older than "
               "train.max_staleness)", ("reason",)),
)}
"""Every metric of the system. Gauges with a ``row`` are set once per step (or per sync) to the value
of that metrics.parquet row; counters add up episodes; the histogram observes each sync."""


def exported_names(spec: MetricSpec) -> tuple[str, ...]:
    """The series names Prometheus shows for ``spec`` (Ray prefixes ``ray_``; counters get ``_total``,
    histograms ``_bucket``/``_count``/``_sum``)."""
    base = f"ray_{spec.name}"
    if spec.kind == "counter":
        return (f"{base}_total",)
    if spec.kind == "histogram":
        return tuple(f"{base}_{s}" for s in ("bucket", "count", "sum"))
    return (base,)


def all_exported_names() -> set[str]:
    """Every series name the run exports (see :func:`exported_names`)."""
    return {n for spec in SPECS.values() for n in exported_names(spec)}


def row_of(spec: MetricSpec, tags: Mapping[str, str]) -> tuple[str, str] | None:
    """(scope, name) of the metrics.parquet row a gauge record mirrors, its tags filled in."""
    if spec.row is None:
        return None
    return spec.row[0].format(**tags), spec.row[1].format(**tags)


_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One line of a Prometheus text exposition: ``name{labels} value``."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """The samples of a Prometheus text-format page (comments and blank lines skipped)."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or line.startswith("#"):
            continue
        labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(m.group(2) or "")}
        out.append(Sample(m.group(1), labels, float(m.group(3))))
    return out


def mean_staleness(episodes: Sequence[Any], versions: Mapping[str, int],
                   adapters: Mapping[str, str]) -> dict[str, float]:
    """Role -> mean over ``episodes`` of (the adapter's current version minus the version that generated
    the role's turns), for the roles in ``adapters`` (role -> adapter name); roles no episode has are
    absent (an empty batch has no staleness)."""
    lags: dict[str, list[int]] = {}
    for e in episodes:
        for role, v in e.policy_versions.items():
            if role in adapters:
                lags.setdefault(role, []).append(versions.get(adapters[role], 0) - v)
    return {r: sum(v) / len(v) for r, v in sorted(lags.items())}


def report_interval_s() -> float:
    """Ray's metrics export interval in this process (``RAY_metrics_report_interval_ms``, 10 s by
    default, never under 1 s); 10.0 when Ray is not loaded."""
    ray = sys.modules.get("ray")
    try:
        return max(ray._config.metrics_report_interval_ms(), 1000) / 1000.0
    except Exception:  # Ray not imported (unit tests) or a build without the accessor
        return 10.0


class Sink(Protocol):
    """Where metric values go."""

    def record(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        """Gauge: set; counter: add ``value``; histogram: observe ``value``."""
        ...


@dataclass(frozen=True)
class MetricRow:
    """One recorded value, as a row of the Parquet metrics file."""

    step: int
    """Training step at which the row was drained (stamped by the caller of :meth:`Recorder.drain`)."""
    name: str
    tags: str
    """Sorted ``key=value`` pairs joined by commas ("" when untagged)."""
    value: float
    time_s: float
    """Wall-clock time of the record (seconds since the epoch)."""


def format_tags(tags: Mapping[str, str]) -> str:
    """``{"role": "policy", "a": "b"}`` -> ``"a=b,role=policy"``."""
    return ",".join(f"{k}={tags[k]}" for k in sorted(tags))


def rows_to_columns(rows: list[MetricRow]) -> dict[str, list]:
    """Column dict (``pyarrow.table(...)``-ready) of the rows, one column per field."""
    return {f: [getattr(r, f) for r in rows] for f in ("step", "name", "tags", "value", "time_s")}


class Recorder:
    """In-memory sink: latest value per (metric, tags) and a list of pending rows.

    ``latest`` of a counter is its running total; of a histogram, the last observation.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._latest: dict[tuple[str, str], float] = {}
        self._pending: list[tuple[str, str, float, float]] = []

    def record(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        key = (spec.name, format_tags(tags))
        prev = self._latest.get(key, 0.0)
        self._latest[key] = prev + value if spec.kind == "counter" else float(value)
        self._pending.append((spec.name, key[1], float(value), self._clock()))

    def latest(self, name: str, **tags: str) -> float | None:
        """Latest value of ``name`` with exactly these tags, None if never recorded."""
        return self._latest.get((name, format_tags(tags)))

    def drain(self, step: int) -> list[MetricRow]:
        """Rows recorded since the last drain, stamped with ``step``; clears them."""
        rows = [MetricRow(step, n, t, v, ts) for n, t, v, ts in self._pending]
        self._pending.clear()
        return rows


class RaySink:
    """Exports through ``ray.util.metrics``; a no-op unless Ray is initialised in this process.

    Ray metric objects are created lazily on first use (they need a connected worker); Ray itself
    is only looked up in ``sys.modules``, so this module never triggers a Ray import.
    """

    def __init__(self) -> None:
        self._objects: dict[str, object] = {}

    @staticmethod
    def _ray():
        ray = sys.modules.get("ray")
        return ray if ray is not None and ray.is_initialized() else None

    def _metric(self, ray, spec: MetricSpec):
        if spec.name not in self._objects:
            from ray.util import metrics as m

            if spec.kind == "gauge":
                obj = m.Gauge(spec.name, spec.description, tag_keys=spec.tag_keys)
            elif spec.kind == "counter":
                obj = m.Counter(spec.name, spec.description, tag_keys=spec.tag_keys)
            else:
                obj = m.Histogram(spec.name, spec.description, list(spec.boundaries), tag_keys=spec.tag_keys)
            self._objects[spec.name] = obj
        return self._objects[spec.name]

    def record(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        ray = self._ray()
        if ray is None:
            return
        obj = self._metric(ray, spec)
        if spec.kind == "gauge":
            obj.set(value, tags=dict(tags))
        elif spec.kind == "counter":
            if value > 0:  # Ray refuses inc(0); a counter never incremented has no series
                obj.inc(value, tags=dict(tags))
        else:
            obj.observe(value, tags=dict(tags))


class DuetMetrics:
    """Typed front for every metric of the system; each call goes to all sinks."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def _emit(self, name: str, value: float, **tags: str) -> None:
        spec = SPECS[name]
        if set(tags) != set(spec.tag_keys):
            raise ValueError(f"metric {name}: tags {sorted(tags)} != declared {sorted(spec.tag_keys)}")
        for sink in self.sinks:
            sink.record(spec, float(value), tags)

    def reward(self, value: float) -> None:
        self._emit("duet_reward", value)

    def success_rate(self, value: float) -> None:
        self._emit("duet_success_rate", value)

    def kl_ref(self, role: str, value: float) -> None:
        self._emit("duet_kl_ref", value, role=role)

    def approx_kl(self, role: str, value: float) -> None:
        self._emit("duet_approx_kl", value, role=role)

    def entropy(self, role: str, value: float) -> None:
        self._emit("duet_entropy", value, role=role)

    def adapter_version(self, role: str, version: int) -> None:
        self._emit("duet_adapter_version", version, role=role)

    def staleness(self, role: str, steps: float) -> None:
        self._emit("duet_staleness", steps, role=role)

    def sync_latency(self, role: str, seconds: float) -> None:
        self._emit("duet_sync_latency_s", seconds, role=role)

    def tokens_per_s(self, value: float) -> None:
        self._emit("duet_tokens_per_s", value)

    def queue_depth(self, queue: str, depth: int) -> None:
        self._emit("duet_queue_depth", depth, queue=queue)

    def episodes_produced(self, count: int = 1) -> None:
        self._emit("duet_episodes_produced", count)

    def episodes_dropped(self, reason: str, count: int = 1) -> None:
        self._emit("duet_episodes_dropped", count, reason=reason)

    def learner_update(self, role: str, update: Mapping[str, float]) -> None:
        """The gauges of one learner update: entropy and approx-KL when it trained on something, KL to
        the reference when the update computed one (a KL term is configured)."""
        for key, method in (("policy/entropy", self.entropy), ("policy/approx_kl", self.approx_kl),
                            ("kl/ref", self.kl_ref)):
            if key in update:
                method(role, update[key])


def hold_for_export(seconds: float | None, exported: bool, sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait so that Ray's metrics agent receives the values recorded last (each process exports every
    report interval; a process that exits first loses them). ``seconds`` None: one report interval
    plus 1 s when ``exported`` (someone can scrape this run), else no wait. Returns the wait."""
    wait = (report_interval_s() + 1.0 if exported else 0.0) if seconds is None else float(seconds)
    if wait > 0:
        sleep(wait)
    return wait
