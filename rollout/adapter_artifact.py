"""The adapter artifact: one LoRA adapter version as files, defined once for the learner, the
weight-sync service, the node-local store and the engines.

An artifact is a PEFT directory plus a manifest::

    adapter_config.json        PEFT LoRA config (rank, alpha, target modules, base model)
    adapter_model.safetensors  the LoRA weights
    manifest.json              format, role, version, base model, sha256 of the weights, extras
    STABLE                     written last; holds the weights' sha256 (hex)

In memory it is an :class:`AdapterArtifact` (the files as bytes and their identity); the learner
builds it (:meth:`AdapterArtifact.build`), the object store carries it, and a rollout worker checks it
once where the bytes land (:meth:`AdapterArtifact.verify`) before anything is written or loaded.

On disk a directory appears all at once (:func:`write_artifact`): the files are written and fsynced
in a private temporary sibling, the ``STABLE`` marker last, and the directory is renamed into place
(atomic on POSIX). Readers therefore never see half an adapter; the marker is prime-rl's filesystem
LoRA transport guard (``transports/weights``), kept for file systems where a reader lists a
directory while a writer is still inside it. :func:`read_artifact` reads a directory back and checks
the checksum.

Standard library only (no torch, no Ray): unit tests build artifacts from hand-made bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from rollout.engine.base import AdapterRejected

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MANIFEST = "manifest.json"
STABLE = "STABLE"
FORMAT = "duet-rl-adapter/1"
REQUIRED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
IDENTITY = ("role", "version", "base_model", "sha256")
"""Manifest keys that must agree with the artifact's fields."""
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class AdapterArtifact:
    """One adapter version: its files as bytes and their identity.

    ``files`` always holds ``manifest.json`` (added from the fields when the given files lack it, and
    checked against them when present), so every copy of an artifact, in memory or on disk, carries
    the same identity. ``sha256`` is computed by the exporter; :meth:`verify` recomputes it where
    the bytes land.
    """

    role: str
    """Adapter slot (an identifier, e.g. "policy"; it names a directory); each is versioned independently."""
    version: int
    """Learner's version counter for this role, >= 1 (0 is the base model)."""
    sha256: str
    """Hex sha256 of the safetensors bytes, as computed by the exporter."""
    base_model: str
    """Name or path of the base model the adapter was trained on."""
    files: Mapping[str, bytes]
    """File name -> bytes: adapter_config.json, adapter_model.safetensors, manifest.json."""

    def __post_init__(self) -> None:
        _check_identity(self.role, self.version, self.sha256)
        _check_names(self.files)
        files = dict(self.files)
        if MANIFEST in files:
            _check_manifest(json.loads(files[MANIFEST]), self)
        else:
            files[MANIFEST] = _manifest_bytes({k: getattr(self, k) for k in IDENTITY}, {})
        object.__setattr__(self, "files", files)

    @classmethod
    def build(cls, role: str, version: int, base_model: str, files: Mapping[str, bytes],
              **extra: Any) -> AdapterArtifact:
        """Artifact whose checksum is computed from ``files`` (what an exporter calls); ``extra``
        (e.g. ``learner_step``) goes into the manifest."""
        sha = sha256_hex(files[ADAPTER_WEIGHTS])
        identity = {"role": role, "version": version, "base_model": base_model, "sha256": sha}
        return cls(role, version, sha, base_model, {**files, MANIFEST: _manifest_bytes(identity, extra)})

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> AdapterArtifact:
        """Artifact of files that include ``manifest.json``; its checksum is taken as claimed
        (:meth:`verify` checks it against the bytes)."""
        if MANIFEST not in files:
            raise ValueError(f"AdapterArtifact.from_files: no {MANIFEST} in {sorted(files)}")
        m = json.loads(files[MANIFEST])
        return cls(m["role"], int(m["version"]), m["sha256"], m["base_model"], files)

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed ``manifest.json`` (identity plus the exporter's extras)."""
        return json.loads(self.files[MANIFEST])

    @property
    def dirname(self) -> str:
        """Version directory name ``v<version>-<first 12 hex of sha256>``."""
        return f"v{self.version}-{self.sha256[:12]}"

    @property
    def nbytes(self) -> int:
        """Total size of the files in bytes."""
        return sum(len(b) for b in self.files.values())

    def verify(self, where: str = "") -> None:
        """Raise :class:`AdapterRejected` unless the safetensors bytes hash to ``sha256``
        (``where``: the directory they came from, named in the error)."""
        got = sha256_hex(self.files[ADAPTER_WEIGHTS])
        if got != self.sha256:
            name = f"{where}/{ADAPTER_WEIGHTS}" if where else ADAPTER_WEIGHTS
            raise AdapterRejected(f"adapter {self.role} v{self.version}: sha256 of {name} is {got[:12]}..., "
                                  f"expected {self.sha256[:12]}... (corrupt artifact)")


def _check_identity(role: str, version: int, sha256: str) -> None:
    if not role.isidentifier():
        raise ValueError(f"AdapterArtifact.role: expected an identifier (an adapter name), got {role!r}")
    if version < 1:
        raise ValueError(f"AdapterArtifact.version: must be >= 1, got {version}")
    if not _HEX64.match(sha256):
        raise ValueError(f"AdapterArtifact.sha256: expected 64 lowercase hex digits, got {sha256!r}")


def _check_names(files: Mapping[str, bytes]) -> None:
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise ValueError(f"AdapterArtifact.files: missing {missing} (have {sorted(files)})")
    bad = [f for f in files if not f or "/" in f or f.startswith(".") or f == STABLE]
    if bad:
        raise ValueError(f"AdapterArtifact.files: names must be plain file names, got {bad}")


def _check_manifest(manifest: dict, artifact: AdapterArtifact) -> None:
    wrong = [k for k in IDENTITY if manifest.get(k) != getattr(artifact, k)]
    if wrong:
        raise ValueError(f"AdapterArtifact: {MANIFEST} disagrees with the artifact on {wrong}")


def _manifest_bytes(identity: Mapping[str, Any], extra: Mapping[str, Any]) -> bytes:
    """``manifest.json``: the format tag, the exporter's extras and the identity (which wins)."""
    return json.dumps({"format": FORMAT, **extra, **identity}, indent=2, sort_keys=True).encode()


# ---- on disk ------------------------------------------------------------------------------------


def fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory (makes the names created or renamed in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tree(artifact: AdapterArtifact, tmp: Path) -> None:
    """Write the files, then the STABLE marker, each fsynced, then fsync the directory."""
    tmp.mkdir(parents=True)
    for name, data in artifact.files.items():
        fsync_write(tmp / name, data)
    fsync_write(tmp / STABLE, artifact.sha256.encode())
    fsync_dir(tmp)


def is_complete(path: str | os.PathLike, artifact: AdapterArtifact) -> bool:
    """True if ``path`` holds ``artifact``: its STABLE marker names the artifact's checksum and every
    file has the artifact's size. Nothing is hashed (the bytes were verified before they were
    written, and the engine checks the weights file's structure when it loads it)."""
    p = Path(path)
    try:
        if (p / STABLE).read_text() != artifact.sha256:
            return False
        return all((p / n).stat().st_size == len(b) for n, b in artifact.files.items())
    except (FileNotFoundError, NotADirectoryError):
        return False


def write_artifact(artifact: AdapterArtifact, out_dir: str | os.PathLike) -> Path:
    """Write ``artifact`` to ``out_dir`` atomically (temporary sibling, STABLE last, rename).

    Idempotent and safe under concurrent writers (threads or processes): each builds its own
    temporary directory and the first rename wins (POSIX refuses to rename a directory onto a
    non-empty one: ENOTEMPTY/EEXIST); an existing directory holding the same artifact is kept.
    Raises FileExistsError if ``out_dir`` holds anything else.
    """
    out = Path(out_dir)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            _write_tree(artifact, tmp)
            os.rename(tmp, out)
            fsync_dir(out.parent)
            return out
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if not is_complete(out, artifact):
        raise FileExistsError(f"{out} already holds another or an incomplete adapter "
                              f"(not {artifact.role} v{artifact.version} {artifact.sha256[:12]})")
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete artifact directory (ValueError if it has no STABLE marker)."""
    p = Path(path)
    if not (p / STABLE).is_file():
        raise ValueError(f"{p}: no {STABLE} marker (incomplete adapter)")
    return json.loads((p / MANIFEST).read_text())


def read_artifact(path: str | os.PathLike) -> AdapterArtifact:
    """Read a complete artifact directory back and verify its checksum (AdapterRejected, a
    ValueError, naming the weights file, if the bytes do not hash to the manifest's sha256)."""
    p = Path(path)
    read_manifest(p)
    files = {f.name: f.read_bytes() for f in sorted(p.iterdir()) if f.is_file() and f.name != STABLE}
    artifact = AdapterArtifact.from_files(files)
    artifact.verify(str(p))
    return artifact
