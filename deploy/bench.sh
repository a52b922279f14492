#!/usr/bin/env bash
# The benchmark suite (issues 6 and 13): set up (idempotent), then every benchmark; writes
# deploy/bench/results/latest.md (tables) and latest.json (raw figures, machine, load averages).
#   bash deploy/bench.sh                  the whole suite (about 45 minutes on a 2-core CPU: 2704 s on 2026-12-01)
#   bash deploy/bench.sh sync overlap     some benchmarks (e2e e2e-smollm2 rollout sync overlap memory profile),
#                                         printed only
#   bash deploy/bench.sh --quick          a smoke run of the same code paths with less work
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m deploy.bench "$@"
