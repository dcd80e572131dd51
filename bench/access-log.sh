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
# and the cost of logging, 1 - (median with the log / median without), for fulcrum and for
# nginx, in req/s and in requests per proxy core-second (req/s over the proxy's own CPU time in
# the round, user + system from /proc, its access-log writer thread included; the steadier of
# the two on a shared machine, since a neighbour's load moves req/s more than CPU per request);
# then checks that fulcrum's log holds one line per request it answered (the
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
need nginx wrk taskset python3 curl getconf
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
  printf -v "PID_${name//-/_}" %s "${PIDS[-1]}"
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
  printf -v "PID_${name//-/_}" %s "${PIDS[-1]}"
  printf -v "PORT_${name//-/_}" %s "$port"
}

start_fulcrum fulcrum-off false json
start_fulcrum fulcrum-json true json
start_fulcrum fulcrum-text true text
start_nginx nginx-off "access_log off;"
start_nginx nginx-on "access_log $WORK/nginx-on-access.log;"
NAMES=(fulcrum-off fulcrum-json fulcrum-text nginx-off nginx-on)
port_of() { local v="PORT_${1//-/_}"; echo "${!v}"; }
pid_of() { local v="PID_${1//-/_}"; echo "${!v}"; }
CLK_TCK=$(getconf CLK_TCK)
for n in "${NAMES[@]}"; do wait_http "http://127.0.0.1:$(port_of "$n")/cluster1"; done

echo "fulcrum: $("$FULCRUM" --version 2>/dev/null | head -1); nginx: $(nginx -v 2>&1 | cut -d/ -f2)"
echo "rounds=$ROUNDS seconds=$SECS connections=$CONNS; proxies on cpu $SERVER_CPU, wrk and workers on cpu $CLIENT_CPU"
for r in $(seq 1 "$ROUNDS"); do
  # Rotate the order every round so no proxy always runs first or last.
  order=("${NAMES[@]:$(((r - 1) % 5))}" "${NAMES[@]:0:$(((r - 1) % 5))}")
  line="round $r:"
  for n in "${order[@]}"; do
    pid=$(pid_of "$n")
    t0=$(cpu_ticks_tree "$pid")
    res=$(wrk_full "http://127.0.0.1:$(port_of "$n")/cluster1" "$CONNS" "$SECS")
    t1=$(cpu_ticks_tree "$pid")
    read -r rps _ p99 errors <<<"$res"
    cpu_s=$(python3 -c "print(($t1 - $t0) / $CLK_TCK)")
    echo "$rps $p99 $errors $cpu_s" >>"$WORK/res/$n"
    line+=" $n $rps req/s (p99 $p99 ms, errors $errors, cpu ${cpu_s}s);"
  done
  echo "$line"
done

python3 - "$WORK/res" "$SECS" <<'EOF'
import statistics, sys
res, secs = sys.argv[1], float(sys.argv[2])
med = {}
for n in ["fulcrum-off", "fulcrum-json", "fulcrum-text", "nginx-off", "nginx-on"]:
    rows = [list(map(float, l.split())) for l in open(f"{res}/{n}") if l.strip()]
    rps = statistics.median(r[0] for r in rows)
    per_core = statistics.median(r[0] * secs / r[3] for r in rows if r[3] > 0)
    med[n] = (rps, per_core)
    print(f"median {n:13s} {rps:8.0f} req/s  {per_core:8.0f} req per proxy core-second  "
          f"p99 {statistics.median(r[1] for r in rows):.3f} ms  errors {sum(r[2] for r in rows):.0f}")
for on, off in [("fulcrum-json", "fulcrum-off"), ("fulcrum-text", "fulcrum-off"), ("nginx-on", "nginx-off")]:
    print(f"cost of logging, {on} vs {off}: {100 * (1 - med[on][0] / med[off][0]):+.1f}% req/s, "
          f"{100 * (1 - med[on][1] / med[off][1]):+.1f}% req per core-second")
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
