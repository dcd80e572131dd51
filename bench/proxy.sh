#!/usr/bin/env bash
# fulcrum balance vs nginx (least_conn, upstream keepalive) vs HAProxy (leastconn, http-reuse
# always), in front of the same two upstream workers, same number of proxy threads, wrk on
# loopback, interleaved rounds (the order of the three proxies rotates every round), medians over
# rounds. Then the memory of 1,000 idle keep-alive client connections, for each proxy.
#
#   bench/proxy.sh [rounds=5] [seconds=8] [connections=64] [threads="1 2"] [cases="small conns1000 body100k"]
#
# Cases, each run for every thread count:
#   small      GET /cluster1: the fulcrum workers' small JSON (`--work-us 0`), CONNS connections.
#   conns1000  the same request with 1,000 concurrent connections (wrk -c1000).
#   body100k   GET of a 100 KB static file. fulcrum's worker cannot serve 100 KB bodies, so for
#              this case the upstream of all three proxies is a tiny nginx (worker_processes 1,
#              pinned like the fulcrum workers) serving the file from a temp dir on two ports
#              (the same two-upstream topology as the other cases).
# wrk always runs with -t1. Per case and thread count it prints median req/s and p99 of each
# proxy and the ratio fulcrum / best peer; requests per proxy core-second (req/s over the
# proxy's own CPU time in the round, user + system from /proc, nginx's workers included) and the
# proxy cores busy, because with wrk and the upstream workers sharing the other core the req/s
# of all three can be bound by that core rather than by the proxy; and wrk's error count (non-2xx + socket errors). wrk
# counts fast error responses (e.g. a 503 from a full queue) in req/s, so rows with errors are
# flagged (!) in the summary, which then also gives req/s and the ratio without them.
#
# Same per-request work: every proxy appends X-Forwarded-For and sets X-Request-Id when the
# client sent none (nginx: `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for` and a
# `map $http_x_request_id` defaulting to `$request_id`; HAProxy: `option forwardfor`, and
# `unique-id-format` + `http-request set-header X-Request-Id %[unique-id] unless
# { req.hdr(x-request-id) -m found }`). fulcrum additionally writes x-forwarded-proto, forwarded
# and via (request and response), which the peers are not asked to do: that extra work counts
# against fulcrum. The nginx upstreams have a `zone`, so least_conn is shared across its worker
# processes; nginx keeps up to 256 idle upstream connections per process (fulcrum: 128 per
# worker) and buffers a whole 100 KB response in memory (proxy_buffers 32 8k, no temp files).
#
# Pinning: with one proxy thread the proxies are pinned to cpu $SERVER_CPU and wrk plus the
# upstream workers to cpu $CLIENT_CPU; with two, the proxies and wrk share both cores (the
# upstream workers stay on $CLIENT_CPU). fulcrum runs its fastest honest configuration for this
# test: least-outstanding (ALB's policy, the peer of least_conn and leastconn), which reads no
# telemetry.
#
# Memory: for each thread count the proxies are restarted; each in turn gets a warm-up load (the
# `small` request, CONNS connections, SECS seconds), then its RSS is read ("before"), then the
# same Python holder opens 1,000 keep-alive connections to it, makes one request on each (one at
# a time, so the proxy's upstream pool stays small) and holds them; RSS is read again
# ("holding"). KiB per idle connection = (holding - before) / 1000. RSS is that of the process
# and its children (nginx: master + workers; fulcrum and HAProxy -db are one process each).
# Memory the load touched and freed is reused by the idle connections, and nginx allocates its
# worker_connections (4096) connection structures at start, so "before" already holds those.
#
# Access logs: off in all three by default (nginx `access_log off`, HAProxy without `log`,
# fulcrum `[access_log] enabled = false`). ACCESS_LOG=on turns them on in all three, each to a
# file in the temp dir: fulcrum JSON lines, nginx its default `combined` format, HAProxy
# `option httplog` to its stdout (`log stdout format raw`). bench/access-log.sh measures what the
# log costs each of fulcrum and nginx in interleaved rounds of one run.
#
# Environment: FULCRUM_BIN=path benchmarks that binary without building (default: cargo build
# --release and target/release/fulcrum); SERVER_CPU / CLIENT_CPU (default 1 / 0); WARMUP=secs of
# unrecorded load per proxy before each case (default 1, 0 = none); KEEP_WORK=1 keeps the temp
# dir (configs, logs, raw results, wrk output in wrk.log).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

ROUNDS=${1:-5}
SECS=${2:-8}
CONNS=${3:-64}
THREADS=${4:-"1 2"}
CASES=${5:-"small conns1000 body100k"}
WARMUP=${WARMUP:-1}
ACCESS_LOG=${ACCESS_LOG:-off}
IDLE_CONNS=1000
case $ACCESS_LOG in on | off) ;; *)
  echo "ACCESS_LOG must be on or off, not '$ACCESS_LOG'" >&2
  exit 2
  ;;
esac
for c in $CASES; do
  case $c in small | conns1000 | body100k) ;; *)
    echo "unknown case '$c' (cases: small conns1000 body100k)" >&2
    exit 2
    ;;
  esac
done
need nginx haproxy wrk taskset python3 ps getconf
CLK_TCK=$(getconf CLK_TCK)

# wrk -c1000 plus a proxy holding 1,000 client and up to 1,000 upstream connections, all
# started from this shell: ask for 8192 open files, need at least 4096.
if ! raise_nofile 8192 && ! raise_nofile 4096; then
  echo "not running: conns1000 and the 1,000 idle-connection memory test need ulimit -n >= 4096" >&2
  exit 1
fi

fulcrum_bin
WORK=$(mktemp -d)
# The static nginx's worker runs as an unprivileged user when we are root: let it read the file.
chmod 755 "$WORK"
trap 'stop_all; [ -n "${KEEP_WORK:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
mkdir -p "$WORK/res" "$WORK/www/static" "$WORK/tmp"
WRK_LOG=$WORK/wrk.log
head -c 102400 /dev/zero | tr '\0' 'x' >"$WORK/www/static/100k.bin"
chmod -R a+rX "$WORK/www"

# Upstreams: two fulcrum workers, and one static nginx (for body100k) listening on two ports.
W1=$(free_port)
W2=$(free_port)
for p in $W1 $W2; do
  start_pinned "$CLIENT_CPU" "$WORK/worker-$p.log" \
    "$FULCRUM" worker --cluster 1 --port "$p" --threads 1 --work-us 0
done
S1=$(free_port)
S2=$(free_port)
cat >"$WORK/static.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/static.pid;
error_log $WORK/static.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=16;
  client_body_temp_path $WORK/tmp/s_body;
  proxy_temp_path $WORK/tmp/s_proxy;
  fastcgi_temp_path $WORK/tmp/s_fastcgi;
  uwsgi_temp_path $WORK/tmp/s_uwsgi;
  scgi_temp_path $WORK/tmp/s_scgi;
  server {
    listen 127.0.0.1:$S1;
    listen 127.0.0.1:$S2;
    root $WORK/www;
    location = /health { return 200 "ok\n"; }
  }
}
EOF
start_pinned "$CLIENT_CPU" "$WORK/static.log" nginx -c "$WORK/static.conf" -e "$WORK/static.err"
wait_http "http://127.0.0.1:$W1/health"
wait_http "http://127.0.0.1:$W2/health"
wait_http "http://127.0.0.1:$S1/static/100k.bin"
wait_http "http://127.0.0.1:$S2/static/100k.bin"

# start_proxies THREADS CPUSET TAG: writes configs, starts the three proxies (logs NAME-TAG.log),
# sets F/N/H ports and FPID/NPID/HPID.
start_proxies() {
  local t=$1 cpus=$2 tag=$3 f_log=false n_log="access_log off;" h_log="" h_opt=""
  if [ "$ACCESS_LOG" = on ]; then
    f_log=true
    n_log="access_log $WORK/nginx-access-$tag.log;"
    h_log="log stdout format raw local0"
    h_opt="log global
  option httplog"
  fi
  F=$(free_port); N=$(free_port); H=$(free_port); A=$(free_port)
  cat >"$WORK/fulcrum.toml" <<EOF
threads = $t
[[listener]]
address = "127.0.0.1:$F"
[admin]
address = "127.0.0.1:$A"
[access_log]
enabled = $f_log
path = "$WORK/fulcrum-access-$tag.log"
[[route]]
prefix = "/static/"
target_group = "s"
[[route]]
prefix = "/"
target_group = "w"
[[target_group]]
name = "w"
policy = "least-outstanding"
workers = ["127.0.0.1:$W1", "127.0.0.1:$W2"]
[[target_group]]
name = "s"
policy = "least-outstanding"
workers = ["127.0.0.1:$S1", "127.0.0.1:$S2"]
EOF
  cat >"$WORK/nginx.conf" <<EOF
worker_processes $t;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
  $n_log
  keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp/n_body;
  proxy_temp_path $WORK/tmp/n_proxy;
  fastcgi_temp_path $WORK/tmp/n_fastcgi;
  uwsgi_temp_path $WORK/tmp/n_uwsgi;
  scgi_temp_path $WORK/tmp/n_scgi;
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
  upstream static {
    zone static 64k;
    least_conn;
    server 127.0.0.1:$S1;
    server 127.0.0.1:$S2;
    keepalive 256;
  }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Request-Id \$req_id;
  proxy_buffers 32 8k;
  proxy_max_temp_file_size 0;
  server {
    listen 127.0.0.1:$N;
    location /static/ { proxy_pass http://static; }
    location / { proxy_pass http://workers; }
  }
}
EOF
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread $t
  maxconn 8000
  $h_log
defaults
  mode http
  $h_opt
  maxconn 4000
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
frontend f
  bind 127.0.0.1:$H
  unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
  http-request set-header X-Request-Id %[unique-id] unless { req.hdr(x-request-id) -m found }
  use_backend static if { path_beg /static/ }
  default_backend workers
backend workers
  balance leastconn
  http-reuse always
  server w1 127.0.0.1:$W1 maxconn 1000
  server w2 127.0.0.1:$W2 maxconn 1000
backend static
  balance leastconn
  http-reuse always
  server s1 127.0.0.1:$S1 maxconn 1000
  server s2 127.0.0.1:$S2 maxconn 1000
EOF
  start_pinned "$cpus" "$WORK/fulcrum-$tag.log" "$FULCRUM" balance --config "$WORK/fulcrum.toml"
  FPID=${PIDS[-1]}
  start_pinned "$cpus" "$WORK/nginx-$tag.log" nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err"
  NPID=${PIDS[-1]}
  start_pinned "$cpus" "$WORK/haproxy-$tag.log" haproxy -f "$WORK/haproxy.cfg" -db
  HPID=${PIDS[-1]}
  for port in $F $N $H; do
    wait_http "http://127.0.0.1:$port/cluster1"
    wait_http "http://127.0.0.1:$port/static/100k.bin"
  done
}

stop_proxies() {
  for p in $FPID $NPID $HPID; do kill "$p" 2>/dev/null || true; done
  for p in $FPID $NPID $HPID; do wait "$p" 2>/dev/null || true; done
}

port_of() { case $1 in f) echo "$F" ;; n) echo "$N" ;; h) echo "$H" ;; esac; }
pid_of() { case $1 in f) echo "$FPID" ;; n) echo "$NPID" ;; h) echo "$HPID" ;; esac; }
name_of() { case $1 in f) echo fulcrum ;; n) echo nginx ;; h) echo haproxy ;; esac; }

# hold_idle PROXY: warm-up load, RSS before, 1,000 idle keep-alive connections held, RSS while
# holding. Appends "before holding" to $WORK/res/mem.$t.$PROXY.
hold_idle() {
  local which=$1 port pid before during holder res held bad
  port=$(port_of "$which")
  pid=$(pid_of "$which")
  res=$(CLIENT_CPU=$wrk_cpus wrk_full "http://127.0.0.1:$port/cluster1" "$CONNS" "$SECS")
  sleep 1
  before=$(rss_tree_kb "$pid")
  rm -f "$WORK/held"
  taskset -c "$wrk_cpus" python3 - "$port" "$IDLE_CONNS" "$WORK/held" <<'EOF' &
# The idle-connection holder: the same code for every proxy.
import socket, sys, time
port, n, flag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
req = b"GET /cluster1 HTTP/1.1\r\nHost: x\r\n\r\n"

def response(s):
    """Reads one response with a Content-Length body; returns its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before the response")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed in the body")
        body += chunk
    return int(head.split(b" ", 2)[1])

conns, bad = [], 0
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    bad += response(s) != 200
    conns.append(s)
with open(flag, "w") as f:
    f.write(f"{len(conns)} {bad}\n")
time.sleep(120)  # killed by the script as soon as it has read the RSS
EOF
  holder=$!
  PIDS+=("$holder")
  for _ in $(seq 1 600); do
    [ -s "$WORK/held" ] && break
    kill -0 "$holder" 2>/dev/null || break
    sleep 0.05
  done
  if [ ! -s "$WORK/held" ]; then
    echo "$(name_of "$which"): the idle-connection holder failed" >&2
    exit 1
  fi
  sleep 1
  during=$(rss_tree_kb "$pid")
  read -r held bad <"$WORK/held"
  kill "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  echo "$before $during $held $bad" >"$WORK/res/mem.$t.$which"
  python3 -c "
b, d, n, bad = $before, $during, $held, $bad
print('%-8s warm-up %s | RSS %d KiB before, %d KiB holding %d idle keep-alive connections: %.1f KiB/conn%s'
      % ('$(name_of "$which")', '$res', b, d, n, (d - b) / n, ' (%d non-200!)' % bad if bad else ''))"
}

summarize() { # summarize CASE THREADS: medians of one case and thread count
  python3 - "$WORK/res" "$1" "$2" "$SECS" <<'EOF'
import statistics, sys
res, case, t, secs = sys.argv[1:]
secs = float(secs)
def load(w):
    rows = [list(map(float, l.split())) for l in open(f"{res}/{case}.{t}.{w}") if l.strip()]
    med = [statistics.median(c) for c in zip(*rows)]
    per_core = statistics.median(r[0] * secs / r[4] for r in rows if r[4] > 0)
    return med[0], med[2], sum(r[3] for r in rows), per_core, med[4] / secs
f, n, h = load("f"), load("n"), load("h")
best = max(n[0], h[0])
print(f"median req/s: fulcrum {f[0]:.0f}, nginx {n[0]:.0f}, haproxy {h[0]:.0f}")
print(f"median proxy cores busy: fulcrum {f[4]:.2f}, nginx {n[4]:.2f}, haproxy {h[4]:.2f}")
print(f"median req per proxy core-second: fulcrum {f[3]:.0f}, nginx {n[3]:.0f}, haproxy {h[3]:.0f}"
      f" -> fulcrum / best = {f[3] / max(n[3], h[3]):.2f}")
print(f"median p99 ms: fulcrum {f[1]:.3f}, nginx {n[1]:.3f}, haproxy {h[1]:.3f}")
if f[2] or n[2] or h[2]:
    print(f"ERRORS (non-2xx + socket, all rounds): fulcrum {f[2]:.0f}, nginx {n[2]:.0f}, haproxy {h[2]:.0f}")
print(f"ratio fulcrum / best(nginx, haproxy) = {f[0] / best:.2f} ({case}, threads={t})" if best else "no peer result")
EOF
}

url_of_case() {
  case $1 in
    small | conns1000) echo /cluster1 ;;
    body100k) echo /static/100k.bin ;;
  esac
}
conns_of_case() {
  case $1 in
    conns1000) echo 1000 ;;
    *) echo "$CONNS" ;;
  esac
}

echo "fulcrum: $("$FULCRUM" --version 2>/dev/null | head -1) ($FULCRUM)"
echo "peers: $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -1 | awk '{print "HAProxy " $3}')"
echo "open files: $(ulimit -n); cases: $CASES; threads: $THREADS; $ROUNDS rounds x ${SECS}s, wrk -t1; access logs $ACCESS_LOG"

for t in $THREADS; do
  if [ "$t" = 1 ]; then cpus=$SERVER_CPU; wrk_cpus=$CLIENT_CPU; else cpus=0,1; wrk_cpus=0,1; fi
  start_proxies "$t" "$cpus" "t$t-cases"
  for c in $CASES; do
    url=$(url_of_case "$c")
    conns=$(conns_of_case "$c")
    echo
    echo "== $c, $t proxy thread(s): GET $url, $ROUNDS rounds x ${SECS}s, $conns connections, wrk -t1 =="
    [ "$c" = body100k ] &&
      echo "   (upstream for this case: one static nginx, worker_processes 1 on cpu $CLIENT_CPU, ports $S1 and $S2, for all three proxies)"
    if [ "$WARMUP" != 0 ]; then
      for which in f n h; do
        CLIENT_CPU=$wrk_cpus wrk_full "http://127.0.0.1:$(port_of $which)$url" "$conns" "$WARMUP" >/dev/null
      done
    fi
    for which in f n h; do : >"$WORK/res/$c.$t.$which"; done
    for r in $(seq 1 "$ROUNDS"); do
      case $((r % 3)) in 1) order="f n h" ;; 2) order="n h f" ;; 0) order="h f n" ;; esac
      for which in $order; do
        ticks=$(cpu_ticks_tree "$(pid_of $which)")
        row=$(CLIENT_CPU=$wrk_cpus wrk_full "http://127.0.0.1:$(port_of $which)$url" "$conns" "$SECS")
        ticks=$(($(cpu_ticks_tree "$(pid_of $which)") - ticks))
        echo "$row $(python3 -c "print('%.3f' % ($ticks / $CLK_TCK))")" >>"$WORK/res/$c.$t.$which"
      done
      printf 'round %s: fulcrum %s | nginx %s | haproxy %s   (req/s p50_ms p99_ms errors proxy_cpu_s; order %s)\n' "$r" \
        "$(tail -1 "$WORK/res/$c.$t.f")" "$(tail -1 "$WORK/res/$c.$t.n")" "$(tail -1 "$WORK/res/$c.$t.h")" "$order"
    done
    summarize "$c" "$t"
  done
  stop_proxies

  # Memory, on freshly started proxies, each after its own warm-up load.
  echo
  echo "== memory, $t proxy thread(s): $IDLE_CONNS idle keep-alive client connections, one proxy at a time =="
  start_proxies "$t" "$cpus" "t$t-memory"
  for which in f n h; do hold_idle "$which"; done
  stop_proxies
done

echo
echo "===== summary (median over $ROUNDS rounds x ${SECS}s; wrk -t1 on loopback; 2 shared cores) ====="
echo "fulcrum $("$FULCRUM" --version 2>/dev/null | awk '{print $NF}') (git $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty crates/')) vs $(nginx -v 2>&1 | sed 's/^nginx version: //') vs $(haproxy -v | head -1 | awk '{print "HAProxy " $3}')"
python3 - "$WORK/res" "$ROUNDS" "$CONNS" "$THREADS" "$CASES" "$IDLE_CONNS" "$SECS" <<'EOF'
import os, statistics, sys
res, rounds, conns, threads, cases, idle, secs = sys.argv[1:]
threads, cases = threads.split(), cases.split()
def rows_of(c, t, w):
    return [list(map(float, l.split())) for l in open(f"{res}/{c}.{t}.{w}") if l.strip()]
print(f"{'case':<10} {'thr':>3} {'conns':>5} | {'fulcrum req/s':>13} {'p99 ms':>8} | {'nginx req/s':>11} {'p99 ms':>8} | {'haproxy req/s':>13} {'p99 ms':>8} | {'fulcrum/best':>12}")
per_core_rows = []
notes = []
for c in cases:
    for t in threads:
        med, errs, ok = {}, {}, {}
        for w in "fnh":
            rows = rows_of(c, t, w)
            med[w] = [statistics.median(x) for x in zip(*rows)]
            errs[w] = sum(r[3] for r in rows)
            ok[w] = statistics.median(max(r[0] - r[3] / float(secs), 0) for r in rows)
        best = max(med["n"][0], med["h"][0])
        ratio = f"{med['f'][0] / best:.2f}" if best else "n/a"
        if any(errs.values()):
            ratio += " (!)"
        n = 1000 if c == "conns1000" else int(conns)
        print(f"{c:<10} {t:>3} {n:>5} | {med['f'][0]:>13.0f} {med['f'][2]:>8.2f} | {med['n'][0]:>11.0f} {med['n'][2]:>8.2f} | {med['h'][0]:>13.0f} {med['h'][2]:>8.2f} | {ratio:>12}")
        pc = {w: statistics.median(r[0] * float(secs) / r[4] for r in rows_of(c, t, w) if r[4] > 0) for w in "fnh"}
        busy = {w: med[w][4] / float(secs) for w in "fnh"}
        per_core_rows.append(f"{c:<10} {t:>3} {n:>5} | {pc['f']:>8.0f} {busy['f']:>5.2f} | {pc['n']:>8.0f} {busy['n']:>5.2f} | {pc['h']:>8.0f} {busy['h']:>5.2f} | {pc['f'] / max(pc['n'], pc['h']):>12.2f}")
        if any(errs.values()):
            notes.append(f"  (!) {c}, threads={t}: wrk counted error responses (non-2xx + socket errors, all rounds; included in req/s): "
                         f"fulcrum {errs['f']:.0f}, nginx {errs['n']:.0f}, haproxy {errs['h']:.0f}")
            best_ok = max(ok["n"], ok["h"])
            notes.append(f"      without them: fulcrum {ok['f']:.0f}, nginx {ok['n']:.0f}, haproxy {ok['h']:.0f} req/s; "
                         f"fulcrum/best = {ok['f'] / best_ok:.2f}" if best_ok else "      no peer result")
for n in notes:
    print(n)
print("requests per proxy core-second (req/s divided by the proxy's own CPU, user + system, read from /proc), and proxy cores busy:")
print(f"{'case':<10} {'thr':>3} {'conns':>5} | {'fulcrum':>8} {'cores':>5} | {'nginx':>8} {'cores':>5} | {'haproxy':>8} {'cores':>5} | {'fulcrum/best':>12}")
for r in per_core_rows:
    print(r)
if "body100k" in cases:
    print("  body100k upstream: one static nginx (worker_processes 1) serving a 100 KB file, for all three proxies")
print(f"memory: RSS (KiB) after a warm-up load, before and while holding {idle} idle keep-alive client connections (nginx: master + workers);")
print(f"  per connection = (holding - before) / {idle}: what idle connections add beyond the memory the load already touched")
for t in threads:
    for w, name in (("f", "fulcrum"), ("n", "nginx"), ("h", "haproxy")):
        path = f"{res}/mem.{t}.{w}"
        if not os.path.exists(path):
            continue
        b, d, held, bad = map(int, open(path).read().split())
        extra = f" ({bad} non-200)" if bad else ""
        print(f"  threads={t} {name:<8} before {b:>7} KiB, holding {d:>7} KiB: {(d - b) / held:6.1f} KiB per idle connection{extra}")
EOF
