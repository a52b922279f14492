#!/usr/bin/env bash
# GPU smoke checks of duet-rl's CUDA path, prepared for the day a GPU machine is lent (issue 10,
# part 5). Under 8 minutes on one GPU; each stage in its own process under `timeout`, printing one
# line `[smoke] stage N: OK|FAIL ...` with its figures and seconds; a failed stage does not stop the
# next; the exit status is non-zero if any stage failed.
#
#   1 CUDA import (torch.cuda, device, NCCL, vllm)      4 two learner ranks on one GPU (0.5 each, Ray)
#   2 one vLLM engine on one GPU with a LoRA adapter    5 two engines on one GPU (0.3 memory each)
#   3 the bf16 probe gap, vLLM vs the learner           6 a short default-recipe run in bf16
# (details: deploy/gpu_smoke.py)
#
#   bash deploy/gpu_smoke.sh                  all six stages on the GPU
#   bash deploy/gpu_smoke.sh 2 3              some stages
#   bash deploy/gpu_smoke.sh --cpu-dry-run    stages 2 and 3 on CPU (float32, gloo): checks the
#                                             script's plumbing here (tests/test_gpu_smoke.py);
#                                             `--cpu-dry-run 4 5 6` runs those on CPU too
#
# ASSUMES THE REPOSITORY IS SET UP and downloads nothing (the device machine has no network): run
# `DUET_ENGINE=gpu bash deploy/setup.sh` (or use the Dockerfile's image) beforehand; the models are
# the offline ones in $DUET_MODELS (default .cache/models). Python: $DUET_PY, else .venv/bin/python,
# else `python` on PATH (the image). Scratch files go to a temporary directory, removed at the end
# (SMOKE_KEEP=1 keeps it). Stage 4 uses the learner's backend "auto" (gloo for ranks sharing a GPU:
# NCCL refuses two ranks of one world on one device, "Duplicate GPU detected");
# SMOKE_LEARNER_BACKEND=nccl shows the project refusing that at start instead.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${DUET_PY:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1

CPU=()
STAGES=()
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) CPU=(--cpu) ;;
    [1-6]) STAGES+=("$arg") ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_smoke.sh: unknown argument '$arg' (stages 1-6, --cpu-dry-run)" >&2; exit 2 ;;
  esac
done
if [ ${#STAGES[@]} -eq 0 ]; then
  if [ ${#CPU[@]} -gt 0 ]; then STAGES=(2 3); else STAGES=(1 2 3 4 5 6); fi
fi

# Per-stage time limits (s); together with the overall budget they keep the run under 8 minutes.
declare -A LIMIT=([1]=60 [2]=120 [3]=120 [4]=150 [5]=120 [6]=240)
if [ ${#CPU[@]} -gt 0 ]; then LIMIT=([1]=60 [2]=240 [3]=240 [4]=300 [5]=240 [6]=600); fi
BUDGET=${SMOKE_BUDGET_S:-470}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/duet-smoke.XXXXXX")
[ "${SMOKE_KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
echo "[smoke] python $PY, stages ${STAGES[*]}${CPU:+ (cpu dry run)}, work dir $WORK, budget ${BUDGET}s"

failed=()
start=$SECONDS
for n in "${STAGES[@]}"; do
  left=$((BUDGET - (SECONDS - start)))
  limit=${LIMIT[$n]}
  [ ${#CPU[@]} -gt 0 ] || { [ "$left" -lt "$limit" ] && limit=$left; }
  if [ "$limit" -lt 10 ]; then
    echo "[smoke] stage $n: FAIL not run: the ${BUDGET}s budget is spent"
    failed+=("$n"); continue
  fi
  log="$WORK/stage$n.out"
  t0=$SECONDS
  timeout --signal=TERM --kill-after=15 "$limit" \
    "$PY" "$ROOT/deploy/gpu_smoke.py" "$n" "${CPU[@]}" --work "$WORK/stage$n" >"$log" 2>&1
  rc=$?
  line=$(grep -E "^\[smoke\] stage $n: (OK|FAIL)" "$log" | tail -n 1)
  if [ "$rc" -ne 0 ]; then
    echo "[smoke] stage $n: output tail ----------------------------------------"
    tail -n 25 "$log" | grep -v "^\[smoke\] stage $n: " | sed 's/^/[smoke]   /'
  fi
  if [ "$rc" -eq 0 ] && [ -n "$line" ]; then
    echo "$line"
  elif [ -n "$line" ]; then
    echo "$line"; failed+=("$n")
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "[smoke] stage $n: FAIL timed out after ${limit}s"; failed+=("$n")
  else
    echo "[smoke] stage $n: FAIL exited $rc without a result line ($((SECONDS - t0))s)"; failed+=("$n")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "[smoke] done in $((SECONDS - start))s: FAILED stages ${failed[*]}"
  exit 1
fi
echo "[smoke] done in $((SECONDS - start))s: all stages OK (${STAGES[*]})"
