#!/usr/bin/env bash
# What the access log costs: fulcrum balance with its access log off, on as JSON lines and on in
# the text format (both to a file), and nginx with `access_log off` and with its default
# `combined` log to a file, for reference; wrk on loopback, interleaved rounds (the order of the
# five rotates every round), medians over rounds.
#
#   bench/access-log.sh [rounds=5] [seconds=8] [connections=64]
#
# Every proxy runs one thread (nginx: one worker process) pinned to cpu $SERVER_CPU, in front of
# the same two fulcrum workers (`--work-us 0`) pinned with wrk -t1 to cpu $CLIENT_CPU, and is
# asked for GET /cluster1. Same per-request work as bench/proxy.sh (least-outstanding; nginx
# least_conn with keepalive and the same forwarded headers). It prints the median req/s of each
# and the cost of logging, 1 - (median req/s with the log / median req/s without), for fulcrum
# and for nginx; then checks that fulcrum's log holds one line per request it answered (the
# status document's `lines`, `dropped`).
#
# Environment: FULCRUM_BIN=path (see bench/lib.sh), SERVER_CPU / CLIENT_CPU (default 1 / 0),
# KEEP_WORK=1 keeps the temp dir (configs, logs, raw results).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5}
SECS=${2:-8}
CONNS=${3:-64}
need nginx wrk taskset python3 curl
fulcrum_bin
WORK=$(mktemp -d)
chmod 755 "$WORK"
trap 'stop_all; [ -n "${KEEP_WORK:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
mkdir -p "$WORK/res" "$WORK/tmp"

W1=$(free_port)
W2=$(free_port)
for p in $W1 $W2; do
  start_pinned "$CLIENT_CPU" "$WORK/worker-$p.log" \
    "$FULCRUM" worker --cluster 1 --port "$p" --threads 1 --work-us 0
done
wait_http "http://127.0.0.1:$W1/health"
wait_http "http://127.0.0.1:$W2/health"

# start_fulcrum NAME ENABLED FORMAT: a one-thread fulcrum; sets PORT_NAME and ADMIN_NAME.
start_fulcrum() {
  local name=$1 enabled=$2 format=$3 port admin
  port=$(free_port)
  admin=$(free_port)
  cat >"$WORK/$name.toml" <<EOF
threads = 1
[[listener]]
address = "127.0.0.1:$port"
[admin]
address = "127.0.0.1:$admin"
[access_log]
enabled = $enabled
format = "$format"
path = "$WORK/$name-access.log"
[[route]]
prefix = "/"
target_group = "w"
[[target_group]]
name = "w"
policy = "least-outstanding"
workers = ["127.0.0.1:$W1", "127.0.0.1:$W2"]
EOF
  start_pinned "$SERVER_CPU" "$WORK/$name.log" "$FULCRUM" balance --config "$WORK/$name.toml"
  printf -v "PORT_${name//-/_}" %s "$port"
  printf -v "ADMIN_${name//-/_}" %s "$admin"
}

# start_nginx NAME LOG_DIRECTIVE: a one-worker nginx; sets PORT_NAME.
start_nginx() {
  local name=$1 log=$2 port
  port=$(free_port)
  cat >"$WORK/$name.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/$name.pid;
error_log $WORK/$name.err warn;
events { worker_connections 4096; }
http {
  $log
  keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp/${name}_body;
  proxy_temp_path $WORK/tmp/${name}_proxy;
  fastcgi_temp_path $WORK/tmp/${name}_fastcgi;
  uwsgi_temp_path $WORK/tmp/${name}_uwsgi;
  scgi_temp_path $WORK/tmp/${name}_scgi;
  map \$http_x_request_id \$req_id {
    default \$http_x_request_id;
    ""      \$request_id;
  }
  upstream workers {
    zone workers 64k;
    least_conn;
    server 127.0.0.1:$W1;
    server 127.0.0.1:$W2;
    keepalive 256;
  }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Request-Id \$req_id;
  server {
    listen 127.0.0.1:$port;
    location / { proxy_pass http://workers; }
  }
}
EOF
  start_pinned "$SERVER_CPU" "$WORK/$name.log" nginx -c "$WORK/$name.conf" -e "$WORK/$name.err"
  printf -v "PORT_${name//-/_}" %s "$port"
}

start_fulcrum fulcrum-off false json
start_fulcrum fulcrum-json true json
start_fulcrum fulcrum-text true text
start_nginx nginx-off "access_log off;"
start_nginx nginx-on "access_log $WORK/nginx-on-access.log;"
NAMES=(fulcrum-off fulcrum-json fulcrum-text nginx-off nginx-on)
port_of() { local v="PORT_${1//-/_}"; echo "${!v}"; }
for n in "${NAMES[@]}"; do wait_http "http://127.0.0.1:$(port_of "$n")/cluster1"; done

echo "fulcrum: $("$FULCRUM" --version 2>/dev/null | head -1); nginx: $(nginx -v 2>&1 | cut -d/ -f2)"
echo "rounds=$ROUNDS seconds=$SECS connections=$CONNS; proxies on cpu $SERVER_CPU, wrk and workers on cpu $CLIENT_CPU"
for r in $(seq 1 "$ROUNDS"); do
  # Rotate the order every round so no proxy always runs first or last.
  order=("${NAMES[@]:$(((r - 1) % 5))}" "${NAMES[@]:0:$(((r - 1) % 5))}")
  line="round $r:"
  for n in "${order[@]}"; do
    res=$(wrk_full "http://127.0.0.1:$(port_of "$n")/cluster1" "$CONNS" "$SECS")
    read -r rps _ p99 errors <<<"$res"
    echo "$rps $p99 $errors" >>"$WORK/res/$n"
    line+=" $n $rps req/s (p99 $p99 ms, errors $errors);"
  done
  echo "$line"
done

python3 - "$WORK/res" <<'EOF'
import statistics, sys
res = sys.argv[1]
med = {}
for n in ["fulcrum-off", "fulcrum-json", "fulcrum-text", "nginx-off", "nginx-on"]:
    rows = [list(map(float, l.split())) for l in open(f"{res}/{n}") if l.strip()]
    med[n] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
              sum(r[2] for r in rows))
    print(f"median {n:13s} {med[n][0]:8.0f} req/s  p99 {med[n][1]:.3f} ms  errors {med[n][2]:.0f}")
for on, off in [("fulcrum-json", "fulcrum-off"), ("fulcrum-text", "fulcrum-off"), ("nginx-on", "nginx-off")]:
    print(f"cost of logging: {on} = {100 * (1 - med[on][0] / med[off][0]):+.1f}% req/s vs {off}")
EOF

# Every answered request has its line (wrk's requests are all answered when errors are 0).
for n in fulcrum-json fulcrum-text; do
  admin_var="ADMIN_${n//-/_}"
  curl -s "http://127.0.0.1:${!admin_var}/status" | python3 -c "
import json, sys
log = json.load(sys.stdin)['access_log']
lines = sum(1 for _ in open('$WORK/$n-access.log'))
print(f'$n: {lines} lines in the file; status: lines {log[\"lines\"]}, dropped {log[\"dropped\"]}')"
done
