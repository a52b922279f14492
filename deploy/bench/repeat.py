"""Interleaved repetitions (issue 13, item 1): A B A B A B on the same machine, load averages beside.

One pair of runs cannot carry a ratio on a shared machine (issue 13 saw TRL's step move from 1.36 s
to 0.49 s between two runs). :func:`interleave` runs each system once per repetition, in a fixed
order, the repetitions one after the other, and records the load averages when each run starts and
ends; the ratio is then taken inside each repetition (:func:`deploy.bench.stats.paired_ratios`) and
reported as median and range. Pure control flow: the systems and the load reader are passed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Side(Generic[T]):
    """One system's run inside one repetition."""

    name: str
    """The system, e.g. "duet-rl" or "TRL 2 threads"."""
    rep: int
    """Repetition index, from 0."""
    result: T
    """What the run returned."""
    load_start: tuple[float, ...]
    """1, 5 and 15 minute load averages when the run started."""
    load_end: tuple[float, ...]
    """The same when it ended."""
    wall_s: float
    """Wall time of the whole run (start-up included)."""


def interleave(repetitions: int, systems: Sequence[tuple[str, Callable[[int], T]]],
               load: Callable[[], Sequence[float]]) -> list[list[Side[T]]]:
    """``repetitions`` rounds of every ``(name, run)`` of ``systems`` in order (``run(rep)``);
    returns one list of :class:`Side` per repetition, in the systems' order."""
    if repetitions < 1 or not systems:
        raise ValueError(f"interleave: need >= 1 repetition and a system, got {repetitions}, {len(systems)}")
    reps = []
    for rep in range(repetitions):
        sides = []
        for name, run in systems:
            start, t0 = tuple(load()), time.perf_counter()
            result = run(rep)
            sides.append(Side(name, rep, result, start, tuple(load()), time.perf_counter() - t0))
        reps.append(sides)
    return reps


def column(reps: Sequence[Sequence[Side[T]]], name: str) -> list[Side[T]]:
    """The runs of system ``name``, one per repetition (KeyError if a repetition lacks it)."""
    out = []
    for sides in reps:
        found = [s for s in sides if s.name == name]
        if not found:
            raise KeyError(f"repetition {sides[0].rep if sides else '?'} has no run of {name!r}")
        out.append(found[0])
    return out


def load_cell(load: Sequence[float]) -> str:
    """Load averages as a table cell: ``"1.20 / 1.45 / 1.50"``."""
    return " / ".join(f"{x:.2f}" for x in load)
