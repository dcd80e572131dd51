#!/usr/bin/env bash
# fulcrum bench vs wrk (HTTP/1.1) or h2load (HTTP/2): requests/s against the same fast target,
# same connections, same threads, interleaved rounds. The generator must not be the bottleneck
# of anything it measures: goal ≥ 1.0× wrk, and ≥ 1.0× h2load.
#
#   bench/loadgen.sh [rounds=5] [seconds=5] [connections=50] [threads=1]
#
# Target on cpu $SERVER_CPU, generators on cpu $CLIENT_CPU. The binary is built (release) unless
# FULCRUM_BIN names one.
#
# HTTP/1.1 (default): the target is a fulcrum worker with no CPU work. TLS=1 loads https://
# instead: the target is then `fulcrum balance --self-signed` (one thread, no access log) in
# front of the worker, both on $SERVER_CPU; wrk does not check certificates, fulcrum bench runs
# with -k.
#
# H2=1: HTTP/2 with prior knowledge (h2c), fulcrum bench --h2 --streams $STREAMS (default 10)
# against h2load -m $STREAMS. The target is nginx (one worker process, `listen ... http2`,
# `return 200` of a 3-byte body, no access log): a C server that answers an h2 request for a
# few microseconds, so what the generators themselves cost shows, where a fulcrum balancer in
# front of a worker would spend most of the server core on forwarding and set the pace for
# both. Besides req/s, each generator's CPU per response (user + system, from getrusage) is
# compared: requests per generator CPU-second is the efficiency figure.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5}
SECS=${2:-5}
CONNS=${3:-50}
THREADS=${4:-1}
STREAMS=${STREAMS:-10}
PATH="$PATH:/usr/sbin"
if [ -n "${H2:-}" ]; then
  need h2load nginx taskset python3
  PEER=h2load
else
  need wrk taskset python3
  PEER=wrk
fi

fulcrum_bin
WORK=$(mktemp -d)
trap 'stop_all; rm -rf "$WORK"' EXIT

# start_nginx_h2c: nginx answering h2c on a free port, pinned to the server CPU; sets URL.
start_nginx_h2c() {
  local port
  port=$(free_port)
  cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK;
  # nginx closes a connection after this many requests (HTTP/2 included): not in a benchmark.
  keepalive_requests 1000000000;
  server {
    listen 127.0.0.1:$port http2;
    location / { return 200 "ok\n"; }
  }
}
CONF
  start_pinned "$SERVER_CPU" "$WORK/nginx.log" nginx -c "$WORK/nginx.conf"
  URL="http://127.0.0.1:$port/"
  for _ in $(seq 1 200); do
    h2load -n1 -c1 "$URL" 2>/dev/null | grep -q '1 succeeded' && return 0
    sleep 0.05
  done
  echo "nginx did not answer h2c on $URL" >&2
  exit 1
}

INSECURE=()
PROTOCOL=()
if [ -n "${H2:-}" ]; then
  start_nginx_h2c
  PROTOCOL=(--h2 --streams "$STREAMS")
else
  PORT=$(free_port)
  start_pinned "$SERVER_CPU" "$WORK/worker.log" \
    "$FULCRUM" worker --cluster 1 --port "$PORT" --threads 1 --work-us 0
  wait_http "http://127.0.0.1:$PORT/health"
  URL="http://127.0.0.1:$PORT/cluster1"
fi
if [ -n "${TLS:-}" ] && [ -z "${H2:-}" ]; then
  TLS_PORT=$(free_port)
  start_pinned "$SERVER_CPU" "$WORK/balancer.log" "$FULCRUM" balance \
    --listen "127.0.0.1:$TLS_PORT" --self-signed --threads 1 --access-log off \
    --route "/cluster1=127.0.0.1:$PORT"
  for _ in $(seq 1 200); do
    curl -skf -o /dev/null "https://127.0.0.1:$TLS_PORT/cluster1" && break
    sleep 0.05
  done
  URL="https://127.0.0.1:$TLS_PORT/cluster1"
  INSECURE=(-k)
fi

# cpu_run CMD...: runs CMD pinned to the client CPU; its stdout, then "cpu SECONDS" (user +
# system time of everything it ran) on the last line.
cpu_run() {
  python3 - "$CLIENT_CPU" "$@" <<'PY'
import resource, subprocess, sys
out = subprocess.run(["taskset", "-c", sys.argv[1], *sys.argv[2:]], capture_output=True, text=True).stdout
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(out, end="")
print(f"cpu {u.ru_utime + u.ru_stime:.4f}")
PY
}

# Each prints "req/s requests cpu_seconds".
wrk_round() {
  cpu_run wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" "$URL" | awk '
    / requests in / {n=$1} /^Requests\/sec:/ {rps=int($2)} /^cpu / {cpu=$2}
    END {print rps, n, cpu}'
}
h2load_round() {
  # Timed (-D) like wrk; only succeeded (2xx) requests count, as fulcrum counts responses.
  cpu_run h2load -t"$THREADS" -c"$CONNS" -m"$STREAMS" -D"$SECS" "$URL" | awk '
    /^finished in/ {gsub(",", ""); rps=int($4)} /^requests:/ {n=$8} /^cpu / {cpu=$2}
    END {print rps, n, cpu}'
}
fulcrum_round() {
  # The closed model with enough requests to run about as long as the peer does.
  cpu_run "$FULCRUM" bench "$URL" "${INSECURE[@]}" "${PROTOCOL[@]}" -n "$1" -c "$CONNS" \
    -t "$THREADS" --json -q |
    python3 -c '
import json, sys
lines = sys.stdin.read().splitlines()
run, cpu = json.loads("\n".join(lines[:-1])), lines[-1].split()[1]
print(int(run["achieved_rate"]), run["responses"], cpu)'
}

if [ -n "${H2:-}" ]; then
  echo "fulcrum bench --h2 vs h2load: $URL (nginx h2c), $ROUNDS rounds x ~${SECS}s, $CONNS connections x $STREAMS streams, $THREADS thread(s)"
else
  echo "fulcrum bench vs wrk: $URL, $ROUNDS rounds x ~${SECS}s, $CONNS connections, $THREADS thread(s)"
fi
echo "(req/s, and the generator's own CPU per response: the machine is shared, and CPU per response"
echo " compares the generators even in rounds where the target, not the generator, set the pace)"
: >"$WORK/f"; : >"$WORK/p"; : >"$WORK/fc"; : >"$WORK/pc"
for r in $(seq 1 "$ROUNDS"); do
  read -r p pn pcpu < <("${PEER}_round")
  read -r f fn fcpu < <(fulcrum_round $((p * SECS)))
  pus=$(python3 -c "print(f'{$pcpu / $pn * 1e6:.2f}')")
  fus=$(python3 -c "print(f'{$fcpu / $fn * 1e6:.2f}')")
  echo "round $r: fulcrum $f req/s ($fus us CPU/response)   $PEER $p req/s ($pus us CPU/response)"
  echo "$f" >>"$WORK/f"; echo "$p" >>"$WORK/p"
  echo "$fus" >>"$WORK/fc"; echo "$pus" >>"$WORK/pc"
done
report_ratio "fulcrum bench" "$WORK/f" "$PEER" "$WORK/p"
fc=$(median "$WORK/fc"); pc=$(median "$WORK/pc")
python3 -c "print('median CPU per response: fulcrum bench $fc us, $PEER $pc us; efficiency fulcrum / $PEER = %.2f' % ($pc / $fc))"
python3 -c "print('requests per generator CPU-second: fulcrum bench %d, $PEER %d' % (1e6 / $fc, 1e6 / $pc))"
