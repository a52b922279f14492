"""One storage location per run: where it is, and proof that every node that writes sees it.

A run writes its checkpoints (every learner rank writes its optimizer partition), its adapters
(every rollout worker materializes them under ``adapters/<node>/``), its metrics and transcripts
(the driver) under one directory, ``output.dir``. On one machine any directory will do; on a
cluster it must be on storage that every node mounts at the same path (NFS, EFS, a PVC, ...),
or the run's files end up scattered over the nodes and ``--resume`` cannot find them.

* :func:`under_ray_job` tells whether this process is the entrypoint of a ``ray job submit``
  (the Jobs API sets ``RAY_JOB_CONFIG_JSON_ENV_VAR`` for it, ray/dashboard/modules/job/job_supervisor.py).
  Such a job runs in a temporary copy of the uploaded working dir on whichever node hosts it, so a
  relative ``output.dir`` would land in that copy: :func:`resolve_run_dir` refuses it.
* :func:`check_shared` (Ray) writes a marker with a fresh token into the run directory and reads
  it back with a zero-CPU task on each node that hosts the run's actors; :func:`storage_problems`
  (pure) judges the answers. A node that does not see the marker, or sees another one, fails the
  run before any model is loaded, naming the node and the path.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping, Sequence

JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in the environment of a submitted job's entrypoint."""

MARKER_DIR = ".duet"
MARKER = "storage-check"


class StorageError(ValueError):
    """The run directory is not usable: relative under a job, or not shared by every node."""


def under_ray_job(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process is the entrypoint of a ``ray job submit`` job."""
    return JOB_ENV_VAR in (os.environ if environ is None else environ)


def resolve_run_dir(formatted: str, in_job: bool, cwd: Path | None = None) -> Path:
    """The run directory as an absolute path; a relative one is refused inside a Ray job.

    ``formatted`` is ``output.dir`` with ``{name}`` already filled in. Outside a job a relative path
    is taken against ``cwd`` (the user's working directory), as any command line tool does.
    """
    path = Path(formatted).expanduser()
    if path.is_absolute():
        return path
    if in_job:
        raise StorageError(
            f"output.dir: {formatted!r} is relative, and under `ray job submit` the job runs in a "
            f"temporary copy of the working dir on one node, so the run's files would be lost with it. "
            f"Give an absolute path on storage every node mounts, e.g. --set output.dir=/mnt/shared/runs/{{name}}")
    return (cwd or Path.cwd()) / path


def write_marker(run_dir: Path) -> tuple[Path, str]:
    """Write a fresh token to ``run_dir/.duet/storage-check``; returns (marker path, token)."""
    token = secrets.token_hex(16)
    marker = run_dir / MARKER_DIR / MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".{token}.tmp")
    tmp.write_text(token)
    os.replace(tmp, marker)
    return marker, token


def read_marker(path: str) -> str | None:
    """What a node reads at ``path`` (None when the file is not there)."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        return None


def storage_problems(marker: str, token: str, seen: Mapping[str, str | None]) -> list[str]:
    """One line per node (node id -> what it read at ``marker``) that does not see ``token``."""
    problems = []
    for node, value in sorted(seen.items()):
        if value is None:
            problems.append(f"node {node[:12]} does not see {marker}")
        elif value != token:
            problems.append(f"node {node[:12]} sees a different {marker} (another file system mounted there)")
    return problems


def check_shared(run_dir: Path, node_ids: Sequence[str], timeout_s: float = 60.0) -> None:
    """Raise :class:`StorageError` unless every node in ``node_ids`` sees ``run_dir`` as this process does."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker, token = write_marker(run_dir)
    reader = ray.remote(num_cpus=0, max_retries=0)(read_marker)
    nodes = sorted(set(node_ids))
    refs = [reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(str(marker))
            for n in nodes]
    seen = dict(zip(nodes, ray.get(refs, timeout=timeout_s)))
    problems = storage_problems(str(marker), token, seen)
    if problems:
        raise StorageError(f"output.dir {run_dir} is not shared by every node of the run: " + "; ".join(problems)
                           + ". Mount the same storage at the same path on every node.")
