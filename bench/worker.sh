#!/usr/bin/env bash
# Worker throughput vs nginx, same machine, same run.
#
# fulcrum worker (`/cluster1`, work_us=0, one runtime thread) against nginx (one worker process,
# `return 200` with a JSON body of the same size), both pinned to the same core, wrk pinned to
# the other. Rounds are interleaved so drift on a shared machine hits both alike.
#
#   bench/worker.sh [rounds=5] [seconds=8] [connections=50]
#
# Prints requests/s per round and the ratio fulcrum / nginx of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5}
SECS=${2:-8}
CONNS=${3:-50}
need nginx wrk taskset

build_release
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT

WPORT=$(free_port)
NPORT=$(free_port)

start_pinned "$SERVER_CPU" "$WORK/worker.log" \
  target/release/fulcrum worker --cluster 1 --port "$WPORT" --threads 1 --work-us 0 \
  --instance-id i-0bench0000000000
wait_http "http://127.0.0.1:$WPORT/health"

# The body nginx returns is the worker's own answer, so both send the same bytes.
BODY=$(curl -s "http://127.0.0.1:$WPORT/cluster1")
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NPORT;
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
EOF
start_pinned "$SERVER_CPU" "$WORK/nginx.log" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err"
wait_http "http://127.0.0.1:$NPORT/cluster1"

echo "worker vs nginx: $ROUNDS rounds x ${SECS}s, $CONNS connections, wrk -t1 on cpu $CLIENT_CPU, servers on cpu $SERVER_CPU"
for r in $(seq 1 "$ROUNDS"); do
  f=$(wrk_rps "http://127.0.0.1:$WPORT/cluster1" "$CONNS" "$SECS")
  n=$(wrk_rps "http://127.0.0.1:$NPORT/cluster1" "$CONNS" "$SECS")
  echo "round $r: fulcrum $f req/s   nginx $n req/s"
  echo "$f" >>"$WORK/f"
  echo "$n" >>"$WORK/n"
done
report_ratio "fulcrum worker" "$WORK/f" "nginx" "$WORK/n"
