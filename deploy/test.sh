#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run every test tier.
#   bash deploy/test.sh                 all tiers: unit, ray, integration, e2e, on two pytest-xdist
#                                       workers: one runs the e2e tests one after another (each a
#                                       real run of its own: they never overlap, tests/conftest.py),
#                                       the other the rest meanwhile (an e2e run keeps ~1 core busy)
#   bash deploy/test.sh -m unit         one tier, in one process (any pytest arguments pass through)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/deploy/setup.sh"
# headless Chromium for the run report's browser test (tests/test_e2e_report.py skips without it)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ $# -eq 0 ]; then set -- -n 2 --dist loadgroup tests; fi
exec "$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider --timeout=900 --durations=30 "$@"
