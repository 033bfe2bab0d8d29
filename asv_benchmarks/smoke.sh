#!/usr/bin/env bash
# CI smoke check of the asv benchmarks: every benchmark imports and runs once, in the
# current Python environment (numbanet installed there), on reduced grids
# (NUMBANET_ASV_SMOKE=1, see benchmarks/common.py). Nothing is saved. Exits non-zero if a
# benchmark fails. Prints its own wall time.
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)

# asv refuses to run without a machine description; write one non-interactively.
asv machine --yes >/dev/null

# asv run exits 2 when a benchmark fails; the log is also searched for "failed" (a
# failing parameter set shows there), so keep it.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Extra arguments go to asv run (e.g. -b MatmulSuite to smoke one suite).
set +e
NUMBANET_ASV_SMOKE=1 asv run --quick --dry-run --python=same --show-stderr "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

if [ "$status" -ne 0 ] || grep -qE '(^|[[:space:]])failed([[:space:]]|$)' "$log"; then
  echo "asv smoke check FAILED (status $status) after $(( $(date +%s) - start )) s" >&2
  grep -nE '(^|[[:space:]])failed([[:space:]]|$)' "$log" >&2 || true
  exit 1
fi
echo "asv smoke check passed in $(( $(date +%s) - start )) s"
