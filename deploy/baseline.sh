#!/usr/bin/env bash
# RL4VLM's CNN+RL baseline on RLlib (deploy/baselines): set up (idempotent), then run it on local Ray.
#   bash deploy/baseline.sh                         one run: deploy/baselines/cnn_ppo.toml (NumberLine, seed 0)
#   bash deploy/baseline.sh --table                 4 envs x 2 seeds, then deploy/learning/results/cnn_baseline.{md,json,png}
#   bash deploy/baseline.sh --set env.name=blackjack --set seed=1     any field, validated (exit 2 naming it)
# Under `ray job submit` run `python -m deploy.baselines ...` as the entrypoint: it joins the cluster.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m deploy.baselines "$@"
