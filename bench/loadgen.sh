#!/usr/bin/env bash
# fulcrum bench vs wrk: requests/s against the same fast target (a fulcrum worker with no CPU
# work), same connections, same threads, interleaved rounds. The generator must not be the
# bottleneck of anything it measures: goal ≥ 1.0× wrk.
#
#   bench/loadgen.sh [rounds=5] [seconds=5] [connections=50] [threads=1]
#
# Target on cpu $SERVER_CPU, generators on cpu $CLIENT_CPU. TLS=1 loads https:// instead: the
# target is then `fulcrum balance --self-signed` (one thread, no access log) in front of the
# worker, both on $SERVER_CPU; wrk does not check certificates, fulcrum bench runs with -k.
# HTTP/2 is not spoken by fulcrum bench yet, so there is no h2load comparison.
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
INSECURE=()
if [ -n "${TLS:-}" ]; then
  TLS_PORT=$(free_port)
  start_pinned "$SERVER_CPU" "$WORK/balancer.log" target/release/fulcrum balance \
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
fulcrum_round() {
  # The closed model with enough requests to run about as long as wrk does.
  cpu_run target/release/fulcrum bench "$URL" "${INSECURE[@]}" -n "$1" -c "$CONNS" -t "$THREADS" --json -q |
    python3 -c '
import json, sys
lines = sys.stdin.read().splitlines()
run, cpu = json.loads("\n".join(lines[:-1])), lines[-1].split()[1]
print(int(run["achieved_rate"]), run["responses"], cpu)'
}

echo "fulcrum bench vs wrk: $URL, $ROUNDS rounds x ~${SECS}s, $CONNS connections, $THREADS thread(s)"
echo "(req/s, and the generator's own CPU per response: the machine is shared, and CPU per response"
echo " compares the generators even in rounds where the target, not the generator, set the pace)"
: >"$WORK/f"; : >"$WORK/w"; : >"$WORK/fc"; : >"$WORK/wc"
for r in $(seq 1 "$ROUNDS"); do
  read -r w wn wcpu < <(wrk_round)
  read -r f fn fcpu < <(fulcrum_round $((w * SECS)))
  wus=$(python3 -c "print(f'{$wcpu / $wn * 1e6:.2f}')")
  fus=$(python3 -c "print(f'{$fcpu / $fn * 1e6:.2f}')")
  echo "round $r: fulcrum $f req/s ($fus us CPU/response)   wrk $w req/s ($wus us CPU/response)"
  echo "$f" >>"$WORK/f"; echo "$w" >>"$WORK/w"
  echo "$fus" >>"$WORK/fc"; echo "$wus" >>"$WORK/wc"
done
report_ratio "fulcrum bench" "$WORK/f" "wrk" "$WORK/w"
fc=$(median "$WORK/fc"); wc=$(median "$WORK/wc")
python3 -c "print('median CPU per response: fulcrum bench $fc us, wrk $wc us; efficiency fulcrum / wrk = %.2f' % ($wc / $fc))"
