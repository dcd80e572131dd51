# Shared pieces of the benchmark scripts: sourced, not run.

# Servers on one core, the load generator on the other (2-core machines).
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
PIDS=()

need() {
  local missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  if ((${#missing[@]})); then
    echo "missing: ${missing[*]} — install with: apt-get install nginx-light haproxy wrk nghttp2-client util-linux" >&2
    exit 1
  fi
}

build_release() {
  cargo build --release -q -j2 -p fulcrum
}

# fulcrum_bin: sets FULCRUM to the binary to benchmark. With FULCRUM_BIN=path set it uses that
# binary and does not build (for when crates/ is being edited under the benchmark); otherwise it
# builds as build_release does and uses release/fulcrum under $CARGO_TARGET_DIR (or target/).
fulcrum_bin() {
  if [ -n "${FULCRUM_BIN:-}" ]; then
    if [ ! -x "$FULCRUM_BIN" ]; then
      echo "FULCRUM_BIN=$FULCRUM_BIN is not an executable file" >&2
      exit 1
    fi
    FULCRUM=$(realpath "$FULCRUM_BIN")
    echo "using $FULCRUM (FULCRUM_BIN is set: not building)" >&2
  else
    build_release
    FULCRUM=$(realpath "${CARGO_TARGET_DIR:-target}")/release/fulcrum
  fi
}

# raise_nofile N: raises the soft open-files limit of this shell (and so of everything it starts)
# to at least N if the hard limit allows; returns 1 with a message saying what to do if not.
raise_nofile() {
  local want=$1 soft hard
  soft=$(ulimit -n)
  [ "$soft" = unlimited ] || [ "$soft" -ge "$want" ] && return 0
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -ge "$want" ]; then
    ulimit -n "$want" && return 0
  fi
  ulimit -n "$hard" 2>/dev/null || true
  echo "open-files limit is $(ulimit -n) (hard $hard); this needs $want." >&2
  echo "raise it first, e.g. as root: ulimit -Hn $want; ulimit -n $want (or LimitNOFILE / limits.conf)" >&2
  return 1
}

# rss_tree_kb PID: resident set of PID plus its direct children (nginx: master + workers), KiB.
rss_tree_kb() {
  ps -o rss= -p "$1" --ppid "$1" | awk '{s += $1} END {print s + 0}'
}

# cpu_ticks_tree PID: CPU time (user + system, clock ticks) of PID plus its direct children
# (nginx: master + workers).
cpu_ticks_tree() {
  local pid=$1 total=0 p
  for p in $pid $(ps -o pid= --ppid "$pid"); do
    [ -r "/proc/$p/stat" ] || continue
    # Fields 14 and 15 after the ")" that ends the command name: utime, stime.
    total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
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

# wrk_full URL CONNS SECS [THREADS]: "rps p50_ms p99_ms errors" (p99 from wrk's --latency
# table; errors = non-2xx/3xx responses + socket errors of every kind). With WRK_LOG=file set,
# wrk's own output is appended to that file.
wrk_full() {
  local t=${4:-1}
  taskset -c "$CLIENT_CPU" wrk -t"$t" -c"$2" -d"$3"s --latency "$1" 2>&1 |
    tee -a "${WRK_LOG:-/dev/null}" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^Requests\/sec:/ {rps=int($2)}
    /^ +50%/ {p50=ms($2)}
    /^ +99%/ {p99=ms($2)}
    /Non-2xx or 3xx responses:/ {err+=$NF}
    /Socket errors:/ {gsub(",", ""); err+=$4+$6+$8+$10}
    END {printf "%d %.3f %.3f %d\n", rps, p50, p99, err}'
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
