#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run every test tier.
#   bash deploy/test.sh                 all tiers: unit, ray, integration, e2e
#   bash deploy/test.sh -m unit         one tier (any pytest arguments pass through)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
# headless Chromium for the run report's browser test (tests/test_e2e_report.py skips without it)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider --timeout=900 --durations=30 "${@:-tests}"
