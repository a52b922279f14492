"""Build the built-in models into a directory, once: each model directory carries a
``manifest.json`` with a hash of this package's source, the model's preset and the transformers
version; a directory whose manifest matches (and whose files are all there, with their sizes) is
reused, anything else is rebuilt. Builds go to a temporary sibling under a per-model file lock and
are renamed into place, so concurrent builders (set-up and a test session) never see half a model.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster.models import BUILTIN_PREFIX, MANIFEST  # the run reads the directories this module writes
from deploy.offline_models.presets import (
    PRESETS, TOKENIZER, GgufPreset, PretrainPreset, TextLmPreset, TokenizerPreset, VlmPreset,
)

MODEL_NAMES: tuple[str, ...] = tuple(PRESETS)
ON_REQUEST: tuple[str, ...] = tuple(n for n, p in PRESETS.items() if isinstance(p, PretrainPreset))
"""Models that take minutes to build (pretrained here on CPU): built only when named (``--only``,
:func:`ensure`), not by set-up's default build, so a first ``deploy/train.sh`` does not wait for them."""
DEFAULT_NAMES: tuple[str, ...] = tuple(n for n in MODEL_NAMES if n not in ON_REQUEST)
"""What :func:`build_all` and ``python -m deploy.offline_models build`` build by default (seconds)."""
_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuildResult:
    """One model directory after :func:`ensure`."""

    name: str
    path: Path
    parameters: int
    """Parameter count (tied weights counted once)."""
    built: bool
    """True if built by this call, False if an up-to-date directory was reused."""
    seconds: float
    """Wall time of this call (the build, or the manifest check)."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# The modules whose code decides each kind of model's bytes (presets enter through their repr);
# a pretrained VLM also depends on the environments that draw its training images.
_ENVS = tuple(f"../../rollout/envs/{m}.py" for m in ("base", "render", "numberline", "blackjack", "points"))
_SOURCES = {
    VlmPreset: ("corpus.py", "tokenizer.py", "random_init.py"),
    TextLmPreset: ("corpus.py", "tokenizer.py", "random_init.py"),
    GgufPreset: ("gguf_convert.py",),
    PretrainPreset: ("corpus.py", "tokenizer.py", "random_init.py", "captions.py", "pretrain.py", *_ENVS),
}


def builder_hash(name: str) -> str:
    """Hash of everything a model's bytes depend on: the source of the modules that build its kind,
    its preset, the tokenizer preset, the transformers version (it writes the config files) and,
    for a GGUF, the source file's size."""
    preset = PRESETS[name]
    parts = [(_PACKAGE_DIR / module).read_bytes() for module in _SOURCES[type(preset)]]
    parts += [repr(preset).encode(), repr(TOKENIZER).encode(), importlib.metadata.version("transformers").encode()]
    if isinstance(preset, GgufPreset):
        parts.append(str(preset.path().stat().st_size).encode())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def read_manifest(model_dir: Path) -> dict | None:
    """The manifest of ``model_dir`` if it is there and every file it lists has its recorded size."""
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
        sizes = {f: (model_dir / f).stat().st_size for f in manifest["files"]}
    except (OSError, ValueError, KeyError):
        return None
    return manifest if all(sizes[f] == manifest["files"][f]["bytes"] for f in sizes) else None


@functools.lru_cache(maxsize=2)
def _tokenizer(p: TokenizerPreset):
    from deploy.offline_models.tokenizer import build_tokenizer

    return build_tokenizer(p.vocab_size, p.seed, p.lines)


def _write_model(name: str, out: Path) -> int:
    """Write model ``name`` into the empty directory ``out``; returns its parameter count."""
    preset = PRESETS[name]
    if isinstance(preset, GgufPreset):
        from deploy.offline_models.gguf_convert import convert_gguf

        return convert_gguf(preset, out)
    from deploy.offline_models.random_init import build_text_lm, build_vlm

    if isinstance(preset, VlmPreset):
        return build_vlm(preset, _tokenizer(TOKENIZER), out)
    if isinstance(preset, PretrainPreset):
        from deploy.offline_models.pretrain import build_pretrained_vlm

        return build_pretrained_vlm(preset, _tokenizer(TOKENIZER), out)
    assert isinstance(preset, TextLmPreset)
    return build_text_lm(preset, _tokenizer(TOKENIZER), out)


def _manifest(name: str, out: Path, parameters: int, seconds: float) -> dict:
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    manifest = {
        "name": name, "builder_hash": builder_hash(name), "preset": repr(PRESETS[name]),
        "parameters": parameters, "build_seconds": round(seconds, 2),
        "files": {f: {"bytes": (out / f).stat().st_size, "sha256": file_sha256(out / f)} for f in files},
    }
    if (out / "pretrain.json").is_file():  # a pretrained model's held-out check (pretrain.REPORT)
        manifest["held_out"] = json.loads((out / "pretrain.json").read_text())["held_out"]
    return manifest


@contextmanager
def _locked(out_dir: Path, name: str) -> Iterator[None]:
    """An exclusive advisory lock on ``out_dir/.name.lock`` (released when the block ends)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, removing an old ``final`` first (callers hold the lock)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        shutil.rmtree(old)
    tmp.rename(final)


def ensure(name: str, out_dir: Path | str) -> BuildResult:
    """Model ``name`` in ``out_dir/name``: reused when its manifest is current, else (re)built."""
    if name not in PRESETS:
        raise ValueError(f"unknown built-in model {name!r}; known: {', '.join(MODEL_NAMES)}")
    out_dir, start = Path(out_dir), time.perf_counter()
    final = out_dir / name
    with _locked(out_dir, name):
        manifest = read_manifest(final)
        if manifest is not None and manifest["builder_hash"] == builder_hash(name):
            return BuildResult(name, final, manifest["parameters"], False, time.perf_counter() - start)
        tmp = out_dir / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        parameters = _write_model(name, tmp)
        manifest = _manifest(name, tmp, parameters, time.perf_counter() - start)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, final)
    return BuildResult(name, final, parameters, True, time.perf_counter() - start)


def build(name: str, out_dir: Path | str) -> Path:
    """Directory of built-in model ``name`` under ``out_dir``, built if missing or stale."""
    return ensure(name, out_dir).path


def build_all(out_dir: Path | str, names: Iterable[str] | None = None) -> dict[str, Path]:
    """The default built-in models (:data:`DEFAULT_NAMES`, or ``names``) under ``out_dir``: ``{name: directory}``."""
    return {name: build(name, out_dir) for name in (DEFAULT_NAMES if names is None else names)}


def resolve_model(ref: str | Path, models_dir: Path | str) -> Path:
    """A model reference -> its local directory, as :func:`cluster.models.resolve_model` resolves it
    (a local directory, a hub id from the hub cache), except that ``"builtin:NAME"`` is *built* here
    when missing or stale (set-up, tests, the GPU smoke script). The run itself never builds: it
    resolves with :func:`cluster.models.resolve_models` before Ray starts."""
    from cluster.models import resolve_model as resolve_built

    ref = str(ref)
    if ref.startswith(BUILTIN_PREFIX):
        return build(ref[len(BUILTIN_PREFIX):], models_dir)
    return resolve_built(ref, models_dir)
