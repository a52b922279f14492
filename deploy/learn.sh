#!/usr/bin/env bash
# The learning benchmark: set up (idempotent), then run each seed recipe end to end at 2 seeds and
# write deploy/learning/results/latest.{md,json} and a PNG per recipe (python -m deploy.learning).
#   bash deploy/learn.sh                          every row of deploy/learning/targets.py
#   bash deploy/learn.sh numberline_ppo default   these recipes only
#   bash deploy/learn.sh smoke --seeds 0 --out /tmp/learn   one seed, results elsewhere
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m deploy.learning "$@"
