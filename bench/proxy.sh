#!/usr/bin/env bash
# fulcrum balance vs nginx (least_conn, upstream keepalive) vs HAProxy (leastconn, http-reuse),
# in front of the same two fast workers, same number of proxy threads, wrk on loopback,
# interleaved rounds. Then the memory of 1,000 idle keep-alive client connections.
#
#   bench/proxy.sh [rounds=5] [seconds=8] [connections=64] [threads="1 2"]
#
# With one proxy thread the proxies are pinned to cpu $SERVER_CPU and wrk plus the workers to
# cpu $CLIENT_CPU; with two, everything shares both cores. fulcrum runs its fastest honest
# configuration for this test: least-outstanding (ALB's policy, the peer of least_conn and
# leastconn), which reads no telemetry.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5}
SECS=${2:-8}
CONNS=${3:-64}
THREADS=${4:-"1 2"}
need nginx haproxy wrk taskset python3

build_release
WORK=$(mktemp -d)
trap 'stop_all; [ -n "${KEEP_WORK:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT

W1=$(free_port)
W2=$(free_port)
for p in $W1 $W2; do
  start_pinned "$CLIENT_CPU" "$WORK/worker-$p.log" \
    target/release/fulcrum worker --cluster 1 --port "$p" --threads 1 --work-us 0
done
wait_http "http://127.0.0.1:$W1/health"
wait_http "http://127.0.0.1:$W2/health"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# start_proxies THREADS CPUSET: writes configs, starts the three proxies, sets F/N/H ports+pids.
start_proxies() {
  local t=$1 cpus=$2
  F=$(free_port); N=$(free_port); H=$(free_port); A=$(free_port)
  cat >"$WORK/fulcrum.toml" <<EOF
threads = $t
[[listener]]
address = "127.0.0.1:$F"
[admin]
address = "127.0.0.1:$A"
[[route]]
prefix = "/"
target_group = "w"
[[target_group]]
name = "w"
policy = "least-outstanding"
workers = ["127.0.0.1:$W1", "127.0.0.1:$W2"]
EOF
  cat >"$WORK/nginx.conf" <<EOF
worker_processes $t;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream workers {
    least_conn;
    server 127.0.0.1:$W1;
    server 127.0.0.1:$W2;
    keepalive 128;
  }
  server {
    listen 127.0.0.1:$N;
    location / {
      proxy_pass http://workers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread $t
  maxconn 4000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$H
  default_backend workers
backend workers
  balance leastconn
  http-reuse always
  server w1 127.0.0.1:$W1 maxconn 1000
  server w2 127.0.0.1:$W2 maxconn 1000
EOF
  start_pinned "$cpus" "$WORK/fulcrum.log" target/release/fulcrum balance --config "$WORK/fulcrum.toml"
  FPID=${PIDS[-1]}
  start_pinned "$cpus" "$WORK/nginx.log" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err"
  NPID=${PIDS[-1]}
  start_pinned "$cpus" "$WORK/haproxy.log" haproxy -f "$WORK/haproxy.cfg" -db
  HPID=${PIDS[-1]}
  wait_http "http://127.0.0.1:$F/cluster1"
  wait_http "http://127.0.0.1:$N/cluster1"
  wait_http "http://127.0.0.1:$H/cluster1"
}

stop_proxies() {
  for p in $FPID $NPID $HPID; do kill "$p" 2>/dev/null || true; done
  for p in $FPID $NPID $HPID; do wait "$p" 2>/dev/null || true; done
}

for t in $THREADS; do
  if [ "$t" = 1 ]; then cpus=$SERVER_CPU; wrk_cpus=$CLIENT_CPU; else cpus=0,1; wrk_cpus=0,1; fi
  start_proxies "$t" "$cpus"
  echo "== $t proxy thread(s): $ROUNDS rounds x ${SECS}s, $CONNS connections, wrk -t1 =="
  : >"$WORK/f.$t"; : >"$WORK/n.$t"; : >"$WORK/h.$t"
  for r in $(seq 1 "$ROUNDS"); do
    for which in f n h; do
      case $which in f) port=$F ;; n) port=$N ;; h) port=$H ;; esac
      res=$(CLIENT_CPU=$wrk_cpus wrk_full "http://127.0.0.1:$port/cluster1" "$CONNS" "$SECS")
      echo "$res" >>"$WORK/$which.$t"
    done
    printf 'round %s: fulcrum %s | nginx %s | haproxy %s   (req/s p50_ms p99_ms)\n' "$r" \
      "$(tail -1 "$WORK/f.$t")" "$(tail -1 "$WORK/n.$t")" "$(tail -1 "$WORK/h.$t")"
  done
  python3 - "$WORK" "$t" <<'EOF'
import statistics, sys
work, t = sys.argv[1], sys.argv[2]
def load(w):
    rows = [list(map(float, l.split())) for l in open(f"{work}/{w}.{t}") if l.strip()]
    return [statistics.median(c) for c in zip(*rows)]
f, n, h = load("f"), load("n"), load("h")
best = max(n[0], h[0])
print(f"median req/s: fulcrum {f[0]:.0f}, nginx {n[0]:.0f}, haproxy {h[0]:.0f}")
print(f"median p99 ms: fulcrum {f[2]:.3f}, nginx {n[2]:.3f}, haproxy {h[2]:.3f}")
print(f"ratio fulcrum / best(nginx, haproxy) = {f[0] / best:.2f} (threads={t})")
EOF
  if [ "$t" = 1 ]; then
    # 1,000 idle keep-alive client connections: open them, make one request each, hold them.
    before=$(rss_kb "$FPID")
    python3 - "$F" <<'EOF' &
import socket, sys, time
port = int(sys.argv[1])
conns = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /cluster1 HTTP/1.1\r\nHost: x\r\n\r\n")
    conns.append(s)
for s in conns:
    s.recv(65536)
print("held", flush=True)
time.sleep(6)
EOF
    HOLDER=$!
    sleep 4
    during=$(rss_kb "$FPID")
    wait $HOLDER || true
    echo "fulcrum RSS: $before KiB after load, $during KiB holding 1000 idle keep-alive connections"
  fi
  stop_proxies
done
