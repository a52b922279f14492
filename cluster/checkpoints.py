"""Which checkpoint a resumed run loads, and how it knows that checkpoint's files are whole.

A checkpoint step ``checkpoints/step_NNNNNN/`` is committed by :func:`commit` once every file of it
is written (each role's learner files, ``driver.json``, the rollouts in flight): first a manifest,
``MANIFEST.json``, lists every file of the step with its size and sha256; only then does
``checkpoints/LATEST`` name the step (both files replaced atomically). :func:`usable_checkpoint`
walks the steps newest first and returns the first whose files match its manifest: a step with a
missing, truncated, changed or extra file is named in one log line and the previous step is tried.

Checkpoints written before manifests existed: the step ``LATEST`` names is accepted with a warning
that its files are not verified (those versions wrote ``LATEST`` only after the whole step was
saved); any other step without a manifest is an interrupted save and is skipped.

Checksums catch damage, not malice (whoever can write the files can rewrite the manifest): that no
checkpoint file can run code on load is :mod:`learner.checkpoint`'s restricted unpickling.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

__all__ = ["MANIFEST", "LATEST", "commit", "write_manifest", "verify", "usable_checkpoint"]

MANIFEST = "MANIFEST.json"
LATEST = "LATEST"
STEP_DIR = re.compile(r"^step_(\d+)$")


def sha256_of(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def files_of(directory: Path) -> list[str]:
    """Every regular file under ``directory`` but the manifest, as sorted POSIX relative paths."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.name != MANIFEST)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(directory: Path) -> Path:
    """Write ``directory/MANIFEST.json``: relative path -> {size, sha256} of every file under it."""
    entries = {rel: {"size": (directory / rel).stat().st_size, "sha256": sha256_of(directory / rel)}
               for rel in files_of(directory)}
    path = directory / MANIFEST
    write_atomically(path, json.dumps({"files": entries}, indent=1, sort_keys=True))
    return path


def commit(run_dir: Path, directory: Path) -> None:
    """Seal checkpoint ``directory`` (all its files written): its manifest, then ``LATEST`` -> it."""
    write_manifest(directory)
    write_atomically(run_dir / "checkpoints" / LATEST, directory.name)


def verify(directory: Path) -> str | None:
    """None when every file of ``directory`` matches its manifest, else what is wrong (one phrase:
    the first file missing, truncated, changed or not listed)."""
    try:
        listed = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} unreadable ({type(err).__name__}: {err})"
    for rel, want in sorted(listed.items()):
        path = directory / rel
        if not path.is_file():
            return f"{rel} missing"
        size = path.stat().st_size
        if size != want["size"]:
            return f"{rel} has {size} bytes, the manifest says {want['size']}"
        if sha256_of(path) != want["sha256"]:
            return f"{rel} checksum mismatch (sha256 differs from the manifest)"
    extra = sorted(set(files_of(directory)) - set(listed))
    return f"{extra[0]} not in the manifest" if extra else None


def steps_newest_first(checkpoints: Path) -> list[Path]:
    """The ``step_N`` directories under ``checkpoints``, highest N first."""
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def at_or_before(steps: list[Path], named: str) -> list[Path]:
    """``steps`` (newest first) from the one ``LATEST`` names on: a step above it was left by an
    earlier run in the same directory (a fresh run does not delete old checkpoints), never this run's."""
    m = STEP_DIR.match(named)
    bound = int(m.group(1)) if m else None
    return [d for d in steps if bound is None or int(STEP_DIR.match(d.name).group(1)) <= bound]


def usable_checkpoint(run_dir: Path, log: Callable[[str], None]) -> Path:
    """The newest checkpoint step of ``run_dir``, at or below the one ``LATEST`` names, whose files
    are whole (see the module docstring);
    each step passed over, and an unverified legacy step, is named through ``log``. Raises
    FileNotFoundError when the run has no checkpoint, or none usable (naming what is wrong with each)."""
    checkpoints = run_dir / "checkpoints"
    latest = checkpoints / LATEST
    if not latest.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {checkpoints}")
    named, problems = latest.read_text().strip(), []
    steps = steps_newest_first(checkpoints)
    for directory in steps[: len(steps) - len(at_or_before(steps, named))]:
        log(f"checkpoint {directory} is newer than LATEST ({named}): an interrupted save or an earlier run's; not used")
    for directory in at_or_before(steps, named):
        if not (directory / MANIFEST).exists() and directory.name == named:
            log(f"checkpoint {directory} has no {MANIFEST} (written by an older version): its files are not verified")
            return directory
        problem = "no manifest (an interrupted save)" if not (directory / MANIFEST).exists() else verify(directory)
        if problem is None:
            return directory
        problems.append(f"{directory.name}: {problem}")
        log(f"checkpoint {directory} is not usable: {problem}; trying the previous one")
    raise FileNotFoundError(f"--resume: no usable checkpoint in {checkpoints} ({'; '.join(problems) or 'none'})")
