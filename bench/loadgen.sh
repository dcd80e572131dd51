#!/usr/bin/env bash
# fulcrum bench vs wrk: requests/s against the same fast target (a fulcrum worker with no CPU
# work), same connections, same threads, interleaved rounds. The generator must not be the
# bottleneck of anything it measures: goal ≥ 1.0× wrk.
#
#   bench/loadgen.sh [rounds=5] [seconds=5] [connections=50] [threads=1]
#
# Target on cpu $SERVER_CPU, generators on cpu $CLIENT_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5}
SECS=${2:-5}
CONNS=${3:-50}
THREADS=${4:-1}
need wrk taskset python3

build_release
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT

PORT=$(free_port)
start_pinned "$SERVER_CPU" "$WORK/worker.log" \
  target/release/fulcrum worker --cluster 1 --port "$PORT" --threads 1 --work-us 0
wait_http "http://127.0.0.1:$PORT/health"
URL="http://127.0.0.1:$PORT/cluster1"

fulcrum_rps() {
  # The closed model with enough requests to run about as long as wrk does.
  taskset -c "$CLIENT_CPU" target/release/fulcrum bench "$URL" -n "$1" -c "$CONNS" -t "$THREADS" --json -q |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["achieved_rate"]))'
}

echo "fulcrum bench vs wrk: $ROUNDS rounds x ~${SECS}s, $CONNS connections, $THREADS thread(s)"
: >"$WORK/f"; : >"$WORK/w"
for r in $(seq 1 "$ROUNDS"); do
  w=$(wrk_rps "$URL" "$CONNS" "$SECS" "$THREADS")
  f=$(fulcrum_rps $((w * SECS)))
  echo "round $r: fulcrum $f req/s   wrk $w req/s"
  echo "$f" >>"$WORK/f"
  echo "$w" >>"$WORK/w"
done
report_ratio "fulcrum bench" "$WORK/f" "wrk" "$WORK/w"
