"""LoRA adapter payloads and their node-local directories.

The learner exports one adapter version as an :class:`AdapterPayload` (the two PEFT files as bytes);
each rollout worker turns it into a PEFT directory on its node's disk with :func:`materialize` and
hands the resulting :class:`~rollout.engine.base.AdapterRef` to its engine.

Directory layout (one per node, shared by every worker on it)::

    root/<role>/v<version>-<sha12>/adapter_config.json
                                   adapter_model.safetensors
                                   STABLE

A version directory appears all at once: the files are written and fsynced in a private temporary
directory, a ``STABLE`` marker is written last, and the directory is renamed into place (rename is
atomic on POSIX file systems). Readers therefore never see half an adapter; the marker is the same
guard as prime-rl's filesystem LoRA transport (``transports/weights``), kept for file systems where
a reader lists a directory while a writer is still inside it. Several workers materializing the
same payload at once each build their own temporary directory; the first rename wins and the others
discard theirs, so the result is one directory with identical bytes.

Only the standard library is imported here (no Ray): unit tests use it directly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from rollout.engine.base import AdapterRef, AdapterRejected
from rollout.types import ROLES

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "manifest.json"
STABLE = "STABLE"
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
_VERSION_DIR = re.compile(r"^v(\d+)-([0-9a-f]{12})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class AdapterPayload:
    """One adapter version as published by the learner: PEFT files as bytes, plus their identity.

    ``sha256`` is the checksum of ``files["adapter_model.safetensors"]`` computed by the learner at
    export; :meth:`verify` recomputes it where the bytes land (end-to-end check), so corruption in
    transit or a wrong export is refused before anything is written or loaded.
    """

    role: str
    """Adapter slot: one of :data:`rollout.types.ROLES`; each role is versioned independently."""
    version: int
    """Learner's version counter for this role, >= 1 (0 is the base model)."""
    sha256: str
    """Hex sha256 of the safetensors bytes, as computed by the exporter."""
    base_model: str
    """Name or path of the base model the adapter was trained on (engines check it)."""
    files: Mapping[str, bytes]
    """File name -> bytes; at least adapter_config.json and adapter_model.safetensors."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"AdapterPayload.role: expected one of {ROLES}, got {self.role!r}")
        if self.version < 1:
            raise ValueError(f"AdapterPayload.version: must be >= 1, got {self.version}")
        if not _HEX64.match(self.sha256):
            raise ValueError(f"AdapterPayload.sha256: expected 64 lowercase hex digits, got {self.sha256!r}")
        missing = [f for f in REQUIRED_FILES if f not in self.files]
        if missing:
            raise ValueError(f"AdapterPayload.files: missing {missing} (have {sorted(self.files)})")
        bad = [f for f in self.files if not f or "/" in f or f.startswith(".") or f == STABLE]
        if bad:
            raise ValueError(f"AdapterPayload.files: names must be plain file names, got {bad}")
        object.__setattr__(self, "files", dict(self.files))

    @classmethod
    def build(cls, role: str, version: int, base_model: str, files: Mapping[str, bytes]) -> AdapterPayload:
        """Payload whose checksum is computed from ``files`` (what an exporter calls)."""
        return cls(role, version, sha256_hex(files[ADAPTER_WEIGHTS]), base_model, files)

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> AdapterPayload:
        """Payload of the learner's export (``learner.export.adapter_files``: PEFT files plus
        ``manifest.json`` naming role, version, base_model and sha256). The manifest's checksum is
        taken as claimed; :meth:`verify` checks it against the bytes where they land."""
        if MANIFEST not in files:
            raise ValueError(f"AdapterPayload.from_files: no {MANIFEST} in {sorted(files)}")
        m = json.loads(files[MANIFEST])
        return cls(m["role"], int(m["version"]), m["sha256"], m["base_model"], files)

    @property
    def dirname(self) -> str:
        """Version directory name ``v<version>-<first 12 hex of sha256>``."""
        return f"v{self.version}-{self.sha256[:12]}"

    @property
    def nbytes(self) -> int:
        """Total size of the files in bytes."""
        return sum(len(b) for b in self.files.values())

    def verify(self) -> None:
        """Raise :class:`AdapterRejected` unless the safetensors bytes hash to ``sha256``."""
        got = sha256_hex(self.files[ADAPTER_WEIGHTS])
        if got != self.sha256:
            raise AdapterRejected(
                f"adapter {self.role} v{self.version}: sha256 of {ADAPTER_WEIGHTS} is {got[:12]}..., "
                f"expected {self.sha256[:12]}... (corrupt payload)"
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_tree(payload: AdapterPayload, tmp: Path) -> None:
    """Write the files, then the STABLE marker, each fsynced, then fsync the directory."""
    tmp.mkdir(parents=True)
    for name, data in payload.files.items():
        _write_file(tmp / name, data)
    marker = {"role": payload.role, "version": payload.version, "sha256": payload.sha256,
              "base_model": payload.base_model}
    _write_file(tmp / STABLE, json.dumps(marker).encode())
    _fsync_dir(tmp)


def _discard(path: Path) -> None:
    """Remove a directory so that readers see it vanish at once: rename aside, then delete."""
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _is_complete(final: Path, payload: AdapterPayload) -> bool:
    """True if ``final`` is a STABLE directory whose weights hash to the payload's checksum."""
    try:
        data = (final / ADAPTER_WEIGHTS).read_bytes()
    except FileNotFoundError:
        return False
    return (final / STABLE).is_file() and sha256_hex(data) == payload.sha256


def materialize(payload: AdapterPayload, root: str | os.PathLike) -> AdapterRef:
    """Write ``payload`` to ``root/<role>/v<version>-<sha12>/`` (atomically) and return its ref.

    Verifies the checksum first (:class:`AdapterRejected` on mismatch; nothing is written).
    Idempotent: if a complete directory is already there (another worker on this node won), it is
    reused; a damaged one (no STABLE, or weights that no longer hash right) is replaced.
    Safe under concurrent calls from threads and processes: each builds a private temporary
    directory and the first ``rename`` into place wins (POSIX rename of a directory onto a non-empty
    one fails with ENOTEMPTY/EEXIST, which the losers take as "already there").
    """
    payload.verify()
    final = Path(root) / payload.role / payload.dirname
    for _ in range(3):
        if final.exists():
            if _is_complete(final, payload):
                return _ref(payload, final)
            _discard(final)  # damaged (our own writes are atomic): rebuild it
        tmp = final.with_name(f".tmp-{payload.dirname}-{os.getpid()}-{uuid.uuid4().hex}")
        _write_tree(payload, tmp)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        _fsync_dir(final.parent)
        return _ref(payload, final)
    raise AdapterRejected(f"adapter {payload.role} v{payload.version}: could not materialize at {final}")


def _ref(payload: AdapterPayload, path: Path) -> AdapterRef:
    return AdapterRef(name=payload.role, version=payload.version, path=str(path), sha256=payload.sha256)


def stable_versions(root: str | os.PathLike, role: str) -> list[tuple[int, Path]]:
    """(version, directory) of every complete version directory of ``role``, oldest first
    (ties between two payloads of one version broken by the STABLE marker's mtime)."""
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


def gc_versions(root: str | os.PathLike, role: str, keep: int, stale_s: float = 600.0) -> list[str]:
    """Delete all but the ``keep`` newest complete versions of ``role``; return the names removed.

    Also removes leftover ``.tmp-*``/``.trash-*`` directories older than ``stale_s`` (a writer
    that crashed mid-way). Keep at least 2 when several workers share a node, so a worker that is
    still loading the previous version does not lose its files (vLLM reads them at load time only).
    """
    if keep < 1:
        raise ValueError(f"gc_versions: keep must be >= 1, got {keep}")
    doomed = [p for _, p in stable_versions(root, role)[:-keep]]
    base = Path(root) / role
    now = time.time()
    leftovers = [e for e in base.iterdir() if e.name.startswith((".tmp-", ".trash-"))] if base.is_dir() else []
    for entry in leftovers:
        try:
            if now - entry.stat().st_mtime > stale_s:
                doomed.append(entry)
        except FileNotFoundError:
            continue
    for path in doomed:
        _discard(path)
    return [p.name for p in doomed]
