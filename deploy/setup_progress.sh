# Sourced by deploy/setup.sh. `timed LABEL CMD...` runs CMD; when stderr is a terminal it also keeps
# one line "[setup] LABEL: 42s" up to date while CMD runs, and ends it with "[setup] LABEL: done in
# 84s". Elsewhere (CI, job logs, a pipe) it runs CMD alone, so that output stays as it was.
# CMD's exit status is returned (under `set -e` a failure still stops set-up).

timed() {
  local label=$1
  shift
  if [ ! -t 2 ]; then
    "$@"
    return
  fi
  local start=$SECONDS rc=0 ticker
  ( while sleep 1; do printf '\r\033[K[setup] %s: %ds' "$label" $((SECONDS - start)) >&2; done ) &
  ticker=$!
  "$@" || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  printf '\r\033[K[setup] %s: %s in %ds\n' "$label" "$([ "$rc" = 0 ] && echo done || echo "failed (exit $rc)")" \
    $((SECONDS - start)) >&2
  return "$rc"
}
