"""Node-local adapter directories: one version directory per artifact, shared by the workers of a node.

Each rollout worker turns an incoming :class:`~rollout.adapter_artifact.AdapterArtifact` into a
directory on its node's disk with :func:`materialize` and hands the resulting
:class:`~rollout.engine.base.AdapterRef` to its engines; :func:`gc_versions` keeps the newest few.

Directory layout (one per node)::

    root/<role>/v<version>-<sha12>/   an artifact directory (rollout.adapter_artifact: the PEFT files,
                                      manifest.json, STABLE written last)

The format, the checksum and the atomic writer are :mod:`rollout.adapter_artifact`'s; this module
only names the directories, replaces damaged ones and removes old ones. Several workers
materializing the same artifact at once each build their own temporary directory; the first rename
wins, so the result is one directory with identical bytes.

Only the standard library is imported here (no Ray): unit tests use it directly.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

from rollout.adapter_artifact import STABLE, AdapterArtifact, is_complete, write_artifact
from rollout.engine.base import AdapterRef, AdapterRejected

_VERSION_DIR = re.compile(r"^v(\d+)-([0-9a-f]{12})$")


def _discard(path: Path) -> None:
    """Remove a directory so that readers see it vanish at once: rename aside, then delete."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def materialize(artifact: AdapterArtifact, root: str | os.PathLike) -> AdapterRef:
    """Verify ``artifact`` and write it to ``root/<role>/v<version>-<sha12>/``; return its ref.

    The checksum is verified here, once, on the bytes as they arrived (:class:`AdapterRejected` on
    mismatch; nothing is written). The ref therefore carries no ``sha256``: engines would only hash
    the same bytes again. Idempotent: a complete directory already there (another worker on this
    node won) is reused; a damaged one (no STABLE, or files of the wrong size) is replaced.
    """
    artifact.verify()
    final = Path(root) / artifact.role / artifact.dirname
    for _ in range(3):
        if final.exists() and not is_complete(final, artifact):
            _discard(final)  # damaged (our own writes are atomic): rebuild it
        try:
            write_artifact(artifact, final)
        except FileExistsError:  # damaged between our check and our rename: try again
            continue
        return AdapterRef(name=artifact.role, version=artifact.version, path=str(final))
    raise AdapterRejected(f"adapter {artifact.role} v{artifact.version}: could not materialize at {final}")


def stable_versions(root: str | os.PathLike, role: str) -> list[tuple[int, Path]]:
    """(version, directory) of every complete version directory of ``role``, oldest first
    (ties between two artifacts of one version broken by the STABLE marker's mtime)."""
    base = Path(root) / role
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        m = _VERSION_DIR.match(entry.name)
        marker = entry / STABLE
        try:
            if m and marker.is_file():
                found.append((int(m.group(1)), marker.stat().st_mtime, entry))
        except FileNotFoundError:  # removed by a concurrent gc
            continue
    return [(v, p) for v, _, p in sorted(found)]


def _leftovers(base: Path, stale_s: float) -> list[Path]:
    """``.tmp-*``/``.trash-*`` directories under ``base`` older than ``stale_s`` (a crashed writer's)."""
    if not base.is_dir():
        return []
    now, old = time.time(), []
    for entry in base.iterdir():
        try:
            if entry.name.startswith((".tmp-", ".trash-")) and now - entry.stat().st_mtime > stale_s:
                old.append(entry)
        except FileNotFoundError:
            continue
    return old


def gc_versions(root: str | os.PathLike, role: str, keep: int, stale_s: float = 600.0) -> list[str]:
    """Delete all but the ``keep`` newest complete versions of ``role``; return the names removed.

    Also removes leftover temporary directories older than ``stale_s``. Keep at least 2 when several
    workers share a node, so a worker that is still loading the previous version does not lose its
    files (vLLM reads them at load time only).
    """
    if keep < 1:
        raise ValueError(f"gc_versions: keep must be >= 1, got {keep}")
    doomed = [p for _, p in stable_versions(root, role)[:-keep]] + _leftovers(Path(root) / role, stale_s)
    for path in doomed:
        _discard(path)
    return [p.name for p in doomed]
