#!/usr/bin/env bash
# Time for `fulcrum up` of the default topology (5 × t2.micro, 4 × t2.large, one balancer) to
# reach all-healthy: `up` returns only once every worker and the balancer answer /health.
#
#   bench/up.sh [rounds=5]
#
# Needs cgroups (root); each round brings the deployment up and down in a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${1:-5}
build_release
BIN=$PWD/target/release/fulcrum
WORK=$(mktemp -d)
trap '(cd "$WORK" && "$BIN" down >/dev/null 2>&1); rm -rf "$WORK"' EXIT
cd "$WORK"
: >times
for r in $(seq 1 "$ROUNDS"); do
  s=$(date +%s.%N)
  "$BIN" up >/dev/null
  e=$(date +%s.%N)
  python3 -c "print('%.3f' % ($e - $s))" | tee -a times | sed "s/^/round $r: up to all-healthy in /; s/$/ s/"
  "$BIN" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["balancer_healthy"] and all(i["healthy"] for i in d["instances"]), "not all healthy"'
  "$BIN" down >/dev/null
done
echo "median: $(median times) s (goal ≤ 3 s)"
