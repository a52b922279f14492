"""Model references -> local directories, resolved on the driver before Ray starts; never built here.

A recipe names each role's base model (``roles.<r>.model``) as one of:

* ``"builtin:NAME"``: ``MODELS_DIR/NAME``, a model built offline by set-up (``deploy/setup.sh``) or
  by the explicit step ``python -m deploy.offline_models build --out MODELS_DIR [--only NAME]``;
  it must already be there (a directory with the builder's ``manifest.json``, written last);
* an existing local directory: itself;
* a Hugging Face hub id (``"Qwen/Qwen2.5-VL-3B-Instruct"``, optionally ``"@revision"``): its snapshot
  in the local hub cache, downloaded first unless ``HF_HUB_OFFLINE=1`` (then it must already be
  cached; set ``HF_HOME`` to storage every node sees so one download serves the whole cluster).

:func:`resolve_models` resolves every role once, so the actors receive directories (a model is
never built or fetched inside an actor's constructor) and a missing model fails in one line that
names the recipe field and the command that makes it, before any placement group or actor exists.
A directory must be at the same path on every node that hosts the role's actors (the built-in
models are built into ``DUET_MODELS`` by set-up on each node or in the image; the manifests put
``HF_HOME`` on shared storage).
Building lives in :mod:`deploy.offline_models` (which imports this module, not the other way).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the offline builder imports this module: it stays free of the config tree
    from cluster.config import Recipe

BUILTIN_PREFIX = "builtin:"
MANIFEST = "manifest.json"
"""The file the offline builder writes last into a finished model directory."""


class ModelNotFound(FileNotFoundError):
    """A model reference names nothing usable on this machine; the message is one line."""


def build_command(models_dir: Path | str, name: str) -> str:
    """The explicit set-up step that builds built-in model ``name`` into ``models_dir``."""
    return f"python -m deploy.offline_models build --out {models_dir} --only {name}"


def builtin_dir(name: str, models_dir: Path | str) -> Path:
    """``models_dir/name`` when the offline builder finished it there, else :class:`ModelNotFound`."""
    path = Path(models_dir) / name
    if (path / MANIFEST).is_file():
        return path
    built = sorted(p.parent.name for p in Path(models_dir).glob(f"*/{MANIFEST}"))
    raise ModelNotFound(
        f"built-in model {name!r} is not built in {models_dir} (built there: {', '.join(built) or 'none'}); "
        f"build it with `{build_command(models_dir, name)}` (or `bash deploy/setup.sh`)")


def resolve_model(ref: str | Path, models_dir: Path | str) -> Path:
    """The local directory of one model reference (see the module docstring); never builds."""
    ref = str(ref)
    if ref.startswith(BUILTIN_PREFIX):
        return builtin_dir(ref[len(BUILTIN_PREFIX):], models_dir)
    path = Path(ref).expanduser()
    if path.exists():
        return path
    if not is_hub_id(ref):
        raise ModelNotFound(
            f"model {ref!r} is neither a local path that exists, a Hugging Face hub id (org/name) nor "
            f"'{BUILTIN_PREFIX}NAME' (a model built by `python -m deploy.offline_models build`)")
    return hub_snapshot(ref)


def resolve_models(recipe: Recipe, models_dir: Path | str) -> dict[str, Path]:
    """Every role's model directory, ``{role: directory}``, in role order; a reference that resolves
    to nothing raises :class:`ModelNotFound` whose one-line message starts ``roles.<r>.model: ``."""
    out: dict[str, Path] = {}
    for role, runtime in sorted(recipe.roles.items()):
        try:
            out[role] = resolve_model(runtime.model, models_dir)
        except ModelNotFound as err:
            raise ModelNotFound(f"roles.{role}.model: {err}") from None
    return out


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_hub_id(ref: str) -> bool:
    """True for ``org/name`` (optionally ``@revision``) that is not an absolute or relative path."""
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def hub_snapshot(ref: str) -> Path:
    """The local snapshot directory of hub id ``ref`` (downloaded unless the hub is offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, _, revision = ref.partition("@")
    try:
        return Path(snapshot_download(repo, revision=revision or None))
    except LocalEntryNotFoundError as e:
        raise ModelNotFound(
            f"model {ref!r}: not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1); "
            f"download it first (huggingface-cli download {repo}) or give a local directory") from e
