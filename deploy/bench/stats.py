"""Summary statistics of measured timings: percentiles, steady-state trimming, ratios.

Pure functions over plain sequences of floats (numpy only), so the benchmark's arithmetic is unit
tested without any of the systems it measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` with linear interpolation between order
    statistics (numpy's default "linear" method, Hyndman & Fan type 7, as Excel's PERCENTILE.INC).
    Raises ValueError on an empty sequence."""
    if len(values) == 0:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class Summary:
    """Distribution of ``n`` timings (seconds, or any unit)."""

    n: int
    mean: float
    p50: float
    p95: float
    min: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "p50": self.p50, "p95": self.p95, "min": self.min, "max": self.max}


def summarize(values: Sequence[float]) -> Summary:
    """Mean, median, 95th percentile, min and max of ``values`` (non-empty)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("summarize: no values")
    return Summary(int(arr.size), float(arr.mean()), percentile(arr, 50), percentile(arr, 95),
                   float(arr.min()), float(arr.max()))


def steady(values: Sequence[float], warmup: int) -> list[float]:
    """``values`` without the first ``warmup`` entries (start-up: first requests, caches, compiles).
    Raises ValueError when nothing would remain, so a too-short run is never summarised silently."""
    if warmup < 0:
        raise ValueError(f"steady: warmup must be >= 0, got {warmup}")
    kept = list(values)[warmup:]
    if not kept:
        raise ValueError(f"steady: {len(values)} values, all inside the warm-up of {warmup}")
    return kept


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def throughput(units: float, seconds: Sequence[float]) -> float:
    """Units per second when each of the timed intervals ``seconds`` processed ``units``:
    ``units * len(seconds) / sum(seconds)`` (total work over total time, not a mean of rates)."""
    total = float(np.sum(seconds))
    if len(seconds) == 0 or total <= 0:
        raise ValueError("throughput: need at least one positive interval")
    return units * len(seconds) / total


@dataclass(frozen=True)
class Spread:
    """One figure over interleaved repetitions: its median and range (issue 13, item 1)."""

    n: int
    """Repetitions."""
    median: float
    """Median over the repetitions (the mean of the middle two for an even ``n``)."""
    low: float
    """Smallest value of a repetition."""
    high: float
    """Largest value of a repetition."""

    def text(self, unit: str = "x", digits: int = 2) -> str:
        """E.g. ``"2.10x (1.90-2.40x, 3 reps)"``."""
        f = f"{{:.{digits}f}}"
        return f"{f.format(self.median)}{unit} ({f.format(self.low)}-{f.format(self.high)}{unit}, {self.n} reps)"


def spread(values: Sequence[float]) -> Spread:
    """Median, min and max of ``values`` (non-empty)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("spread: no values")
    return Spread(int(arr.size), float(np.median(arr)), float(arr.min()), float(arr.max()))


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """``numerators[i] / denominators[i]`` for each repetition ``i``: a ratio is only ever taken
    between the two figures of the same repetition (measured back to back on the same machine
    state), never between figures of different repetitions. Raises ValueError on unequal lengths
    or a non-positive denominator."""
    if len(numerators) != len(denominators):
        raise ValueError(f"paired_ratios: {len(numerators)} numerators, {len(denominators)} denominators")
    if any(d <= 0 for d in denominators):
        raise ValueError(f"paired_ratios: a denominator is not positive: {list(denominators)}")
    return [float(n) / float(d) for n, d in zip(numerators, denominators)]


def ratio_spread(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """:func:`spread` of the :func:`paired_ratios`: median and range of the per-repetition ratio
    (not the ratio of the medians)."""
    return spread(paired_ratios(numerators, denominators))
