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

import sys
import time
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Protocol

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


SPECS: dict[str, MetricSpec] = {s.name: s for s in (
    MetricSpec("duet_reward", "gauge", "Mean episode reward of the last batch", ("role",)),
    MetricSpec("duet_success_rate", "gauge", "Fraction of episodes of the last batch that succeeded", ("role",)),
    MetricSpec("duet_kl", "gauge", "Mean KL(pi_old || pi) estimate of the last update", ("role",)),
    MetricSpec("duet_entropy", "gauge", "Mean token entropy of the last update", ("role",)),
    MetricSpec("duet_adapter_version", "gauge", "Adapter version published for a role", ("role",)),
    MetricSpec("duet_staleness", "gauge", "Mean learner version minus generating version of trained episodes",
               ("role",)),
    MetricSpec("duet_sync_latency_s", "histogram", "Publish-to-last-ack time of an adapter sync", ("role",),
               LATENCY_BOUNDARIES_S),
    MetricSpec("duet_tokens_per_s", "gauge", "Generated tokens per second over the last batch", ("role",)),
    MetricSpec("duet_queue_depth", "gauge", "Episodes waiting in a queue", ("queue",)),
    MetricSpec("duet_episodes_produced", "counter", "Episodes produced by rollout workers"),
    MetricSpec("duet_episodes_dropped", "counter", "Episodes dropped before training", ("reason",)),
)}


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

    def reward(self, role: str, value: float) -> None:
        self._emit("duet_reward", value, role=role)

    def success_rate(self, role: str, value: float) -> None:
        self._emit("duet_success_rate", value, role=role)

    def kl(self, role: str, value: float) -> None:
        self._emit("duet_kl", value, role=role)

    def entropy(self, role: str, value: float) -> None:
        self._emit("duet_entropy", value, role=role)

    def adapter_version(self, role: str, version: int) -> None:
        self._emit("duet_adapter_version", version, role=role)

    def staleness(self, role: str, steps: float) -> None:
        self._emit("duet_staleness", steps, role=role)

    def sync_latency(self, role: str, seconds: float) -> None:
        self._emit("duet_sync_latency_s", seconds, role=role)

    def tokens_per_s(self, role: str, value: float) -> None:
        self._emit("duet_tokens_per_s", value, role=role)

    def queue_depth(self, queue: str, depth: int) -> None:
        self._emit("duet_queue_depth", depth, queue=queue)

    def episodes_produced(self, count: int = 1) -> None:
        self._emit("duet_episodes_produced", count)

    def episodes_dropped(self, reason: str, count: int = 1) -> None:
        self._emit("duet_episodes_dropped", count, reason=reason)
