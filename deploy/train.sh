#!/usr/bin/env bash
# The README's main command: set up (idempotent), then run a local training job on single-node Ray.
#   bash deploy/train.sh                      the embedded default recipe
#   bash deploy/train.sh recipes/x.toml ...   any `duet train` arguments pass through
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$ROOT/.venv/bin/duet" train "$@"
