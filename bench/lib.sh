# Shared pieces of the benchmark scripts: sourced, not run.

# Servers on one core, the load generator on the other (2-core machines).
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
PIDS=()

need() {
  local missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  if ((${#missing[@]})); then
    echo "missing: ${missing[*]} — install with: apt-get install nginx-light haproxy wrk util-linux" >&2
    exit 1
  fi
}

build_release() {
  cargo build --release -q -j2 -p fulcrum
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_pinned CPU LOG CMD...: starts CMD in the background pinned to CPU, remembers its PID.
start_pinned() {
  local cpu=$1 log=$2
  shift 2
  taskset -c "$cpu" "$@" >"$log" 2>&1 &
  PIDS+=($!)
}

stop_all() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
}

# wait_http URL: until it answers 2xx, at most 10 s.
wait_http() {
  for _ in $(seq 1 200); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.05
  done
  echo "no answer from $1" >&2
  exit 1
}

# wrk_rps URL CONNS SECS [THREADS]: requests/s as a plain number.
wrk_rps() {
  local t=${4:-1}
  taskset -c "$CLIENT_CPU" wrk -t"$t" -c"$2" -d"$3"s --latency "$1" 2>&1 |
    awk '/^Requests\/sec:/ {print int($2)}'
}

# wrk_full URL CONNS SECS [THREADS]: "rps p50_ms p99_ms" (p99 from wrk's --latency table).
wrk_full() {
  local t=${4:-1}
  taskset -c "$CLIENT_CPU" wrk -t"$t" -c"$2" -d"$3"s --latency "$1" 2>&1 | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^Requests\/sec:/ {rps=int($2)}
    /^ +50%/ {p50=ms($2)}
    /^ +99%/ {p99=ms($2)}
    END {printf "%d %.3f %.3f\n", rps, p50, p99}'
}

median() {
  sort -n "$1" | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}

# report_ratio NAME_A FILE_A NAME_B FILE_B
report_ratio() {
  local a b
  a=$(median "$2")
  b=$(median "$4")
  echo "median: $1 $a req/s, $3 $b req/s"
  python3 -c "print('ratio $1 / $3 = %.2f' % ($a / $b))"
}
