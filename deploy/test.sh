#!/usr/bin/env bash
# The README's test command: set up (idempotent), then run every test tier.
#   bash deploy/test.sh                 all tiers, as two pytest processes side by side: the e2e
#                                       tests one after another (each is a real run with its own
#                                       local Ray and dashboard on Ray's default port, and some kill
#                                       processes of their own run, so no two may overlap), and
#                                       meanwhile the unit, ray and integration tiers (an e2e run
#                                       keeps about one core busy); the second one's output follows
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
PYTEST=("$ROOT/.venv/bin/python" -m pytest -p no:cacheprovider --timeout=900 --durations=30)
if [ $# -gt 0 ]; then exec "${PYTEST[@]}" "$@"; fi

scratch=$(mktemp -d -t duet-tests-XXXXXX)  # each process its own pytest temp root (--basetemp)
"${PYTEST[@]}" -m "not e2e" --basetemp="$scratch/tiers" tests > "$scratch/tiers.log" 2>&1 &
tiers=$!
trap 'kill "$tiers" 2>/dev/null || true' INT TERM
set +e
"${PYTEST[@]}" -m e2e --basetemp="$scratch/e2e" tests
e2e_status=$?
wait "$tiers"
tiers_status=$?
set -e
echo
echo "================ unit, ray and integration tiers (ran alongside the e2e tier) ================"
cat "$scratch/tiers.log"
echo "deploy/test.sh: e2e tier exit $e2e_status, other tiers exit $tiers_status"
rm -rf "$scratch"
[ "$e2e_status" -eq 0 ] && [ "$tiers_status" -eq 0 ]
