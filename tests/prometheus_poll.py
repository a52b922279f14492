"""Test helper (not a test module): poll a Prometheus metrics endpoint in a thread while a run goes on,
and compare what it showed with the run's ``metrics.parquet``.

Ray's metrics agent shows a gauge only while its process keeps exporting it (it evicts a series about
two report intervals after the last export), so a scrape after a run has ended may miss the gauges:
the poller keeps every page it read, and :func:`last_values` gives each series' last value seen.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import pyarrow.parquet as pq

from cluster.metrics import SPECS, Sample, exported_names, parse_prometheus, row_of


class Poller(threading.Thread):
    """Reads ``url`` every ``period_s`` until :meth:`stop`; ``pages`` holds (time, duet samples)."""

    def __init__(self, url: str, period_s: float = 1.0, token_file: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.period_s, self.token_file = url, period_s, token_file
        self.pages: list[tuple[float, list[Sample]]] = []
        self.errors = 0
        self._halt = threading.Event()

    def scrape(self) -> list[Sample] | None:
        headers = {}
        if self.token_file is not None and self.token_file.is_file():  # Ray's token, once the run made one
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url, headers=headers), timeout=5) as r:
                text = r.read().decode()
        except OSError:
            self.errors += 1
            return None
        samples = [s for s in parse_prometheus(text) if s.name.startswith("ray_duet_")]
        self.pages.append((time.time(), samples))
        return samples

    def run(self) -> None:
        while not self._halt.is_set():
            self.scrape()
            self._halt.wait(self.period_s)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)


def series_key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(name, the duet tags of the sample): Ray's own labels (SessionName, NodeAddress, ...) dropped."""
    spec = SPECS.get(_spec_name(sample.name))
    keys = set(spec.tag_keys) if spec else set()
    if sample.name.endswith("_bucket"):
        keys.add("le")
    return sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k in keys))


def _spec_name(series: str) -> str:
    for name, spec in SPECS.items():
        if series in exported_names(spec):
            return name
    return ""


def last_values(pages: Iterable[tuple[float, list[Sample]]]) -> dict[tuple[str, tuple], float]:
    """Each series' value on the last page that showed it, by its duet tags. Ray labels every series
    with its process (WorkerId): counters and histograms of several processes (two jobs' drivers) are
    summed, as Prometheus' ``sum by (tags)`` would; of a gauge shown by several processes at once (a
    finished job's series lingers for about two report intervals) the newest process's value counts."""
    out: dict[tuple[str, tuple], float] = {}
    first_seen: dict[tuple, int] = {}
    for i, (_, samples) in enumerate(pages):
        page: dict[tuple[str, tuple], float] = {}
        newest: dict[tuple[str, tuple], int] = {}
        for s in samples:
            key, full = series_key(s), (s.name, tuple(sorted(s.labels.items())))
            born = first_seen.setdefault(full, i)
            spec = SPECS.get(_spec_name(s.name))
            if spec is not None and spec.kind == "gauge":
                if born >= newest.get(key, -1):
                    page[key], newest[key] = s.value, born
            else:
                page[key] = page.get(key, 0.0) + s.value
        out |= page
    return out


def names_seen(pages: Iterable[tuple[float, list[Sample]]]) -> set[str]:
    return {s.name for _, samples in pages for s in samples}


def parquet_last(run_dir: Path) -> dict[tuple[str, str], float]:
    """(scope, name) -> the value of the last such row of the run's metrics.parquet; a step whose
    batch was empty (every episode dropped as stale) has no reward or success, so its rows are skipped."""
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    empty = {r["step"] for r in rows if (r["scope"], r["name"]) == ("rollout", "episodes") and r["value"] == 0}
    out: dict[tuple[str, str], float] = {}
    for r in rows:
        if r["scope"] == "rollout" and r["name"] in ("reward", "success") and r["step"] in empty:
            continue
        out[(r["scope"], r["name"])] = r["value"]
    return out


def gauge_mismatches(last: dict[tuple[str, tuple], float], rows: dict[tuple[str, str], float]) -> list[Any]:
    """Every gauge series seen whose last value differs from its metrics.parquet row's last value, as
    (series, scraped, file); [] when all agree."""
    bad = []
    for (name, tags), value in sorted(last.items()):
        spec = SPECS.get(_spec_name(name))
        if spec is None or spec.kind != "gauge" or spec.row is None:
            continue
        row = row_of(spec, dict(tags))
        if rows.get(row) is None or abs(rows[row] - value) > 1e-9 * max(1.0, abs(value)):
            bad.append(((name, tags), value, rows.get(row)))
    return bad


def gauges_seen(last: dict[tuple[str, tuple], float]) -> set[str]:
    return {name for name, _ in last}
