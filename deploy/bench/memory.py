"""Peak resident memory per role (issue 6, item 5), read from the processes themselves.

Linux keeps each process's peak resident set size as ``VmHWM`` in ``/proc/<pid>/status``. A
background thread (:class:`PeakSampler`) lists the benchmark process's descendants every
``interval_s`` (Ray's raylets and their worker processes are started by ``ray.init`` in this
process, so they are descendants; other users' Ray processes on the machine are not), names each
one's role from its process title (Ray sets ``ray::<ActorClass>.<method>``), and keeps the largest
``VmHWM`` seen per process. A process that exits between two samples loses at most its last
interval's growth. The driver's own figure is this process's ``VmHWM``.

``psutil`` (installed with ``ray[default]``) lists the descendants; the parsing is pure.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

ROLE_TITLES = (
    ("ray::RolloutWorkerHost", "rollout worker"),
    ("ray::BenchWorkerHost", "rollout worker"),
    ("ray::RankActor", "learner rank"),
    ("ray::WeightSyncService", "weight-sync service"),
)
"""Process-title prefix -> role (Ray titles an actor's process ``ray::<class>[.<method>]``)."""


def vm_hwm_kib(status: str) -> int | None:
    """``VmHWM`` (peak resident set size, kB) of a ``/proc/<pid>/status`` text; None if absent."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def role_of(title: str) -> str | None:
    """The role of a process from its title/command line (:data:`ROLE_TITLES`); None for others."""
    for prefix, role in ROLE_TITLES:
        if title.startswith(prefix):
            return role
    return None


@dataclass(frozen=True)
class RolePeak:
    """Peak resident memory of the processes of one role."""

    role: str
    processes: int
    max_mib: float
    """Largest peak of one process of the role."""
    total_mib: float
    """Sum of the processes' peaks (an upper bound of the role's simultaneous use)."""


def role_peaks(peaks_kib: Mapping[int, tuple[str, int]]) -> list[RolePeak]:
    """Group per-process peaks ``pid -> (role, VmHWM kB)`` into one :class:`RolePeak` per role, sorted."""
    by_role: dict[str, list[int]] = {}
    for role, kib in peaks_kib.values():
        by_role.setdefault(role, []).append(kib)
    return [RolePeak(role, len(v), max(v) / 1024, sum(v) / 1024) for role, v in sorted(by_role.items())]


def own_peak_mib() -> float:
    """This process's ``VmHWM`` in MiB."""
    return (vm_hwm_kib(Path("/proc/self/status").read_text()) or 0) / 1024


class PeakSampler:
    """Background sampler of the roles' peaks (see the module doc); use as a context manager."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-sampler", daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        for pid, title in _descendants():
            role = role_of(title)
            if role is None:
                continue
            kib = _hwm(pid)
            if kib is not None and kib > self.peaks.get(pid, (role, 0))[1]:
                self.peaks[pid] = (role, kib)

    def result(self) -> list[RolePeak]:
        return role_peaks(self.peaks)


def _descendants() -> Iterable[tuple[int, str]]:
    import psutil

    try:
        children = psutil.Process(os.getpid()).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in children:
        try:
            out.append((p.pid, " ".join(p.cmdline()) or p.name()))
        except psutil.Error:
            continue
    return out


def _hwm(pid: int) -> int | None:
    try:
        return vm_hwm_kib(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


MEMORY_TITLE = "5. Memory: peak resident set (VmHWM) per role"


def memory_section(run: Any, trl: Mapping[int, Mapping[str, Any]] | None = None) -> Any:
    """The memory :class:`deploy.bench.report.Section` of a :class:`deploy.bench.duet_run.DuetRun`
    (plus the TRL processes' peaks, when given)."""
    from deploy.bench.report import Section

    rows = [(p.role, p.processes, p.max_mib, p.total_mib) for p in run.memory]
    rows.append(("driver (the benchmark process)", 1, run.driver_peak_mib, run.driver_peak_mib))
    for threads, result in sorted((trl or {}).items()):
        rows.append((f"TRL GRPOTrainer process ({threads} thread(s))", 1, result["peak_mib"], result["peak_mib"]))
    return Section(
        "memory", MEMORY_TITLE, ("role", "processes", "peak per process MiB", "sum of peaks MiB"), tuple(rows),
        notes=("duet-rl figures from the end-to-end run (1 learner rank, 1 rollout worker): `VmHWM` of "
               "/proc/<pid>/status of every descendant process of the benchmark, sampled every 0.5 s and named by its "
               "Ray process title; the driver's is its own. Ray's own processes (GCS, raylet, dashboard agents) are "
               "not counted. More processes than actors of a role means an actor process was replaced (a restart, "
               f"e.g. during start-up); each is listed in the JSON. Driver counters: {dict(run.counters)}.",
               "No target in the issue for this figure."),
        data={"roles": [asdict(p) for p in run.memory], "driver_mib": run.driver_peak_mib,
              "processes": [list(p) for p in run.processes], "counters": dict(run.counters),
              "trl_mib": {str(k): v["peak_mib"] for k, v in (trl or {}).items()}})
