#!/usr/bin/env bash
# A worker that shares its CPU with a CPU-bound process: what each gets. One worker core on
# CPU 0 beside a busy loop pinned to CPU 0; Valkey and valkey-benchmark on CPU 1. Prints the
# proxy's requests/s and the CPU share of the loop and of the proxy. A worker that kept
# spinning (or yielding its CPU to a process that keeps it for whole scheduler ticks) would
# starve one of the two; a fair proxy splits the CPU about evenly and keeps serving.
#
#   benches/load/valkey-cpu-hog.sh                   # -c 50 -n 100000 -P 1 GET, 3 repetitions
#   BASELINE_BIN=/path/to/older/shotover-proxy benches/load/valkey-cpu-hog.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

REQUESTS=${REQUESTS:-100000}
REPS=${REPS:-3}

for tool in valkey-server valkey-benchmark python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps" >&2; exit 1; }
done
source benches/load/common.sh
build_release

work_and_valkey 1
printf 'main_log_level: "warn"\n' > "$WORK/config.yaml"

TARGETS=""
start() { # name binary
  local port; port=$(free_port)
  printf 'sources:\n  - Valkey:\n      name: "valkey"\n      listen_addr: "127.0.0.1:%s"\n      chain:\n        - ValkeySinkSingle:\n            remote_address: "127.0.0.1:%s"\n' "$port" "$VALKEY" > "$WORK/topology-$port.yaml"
  "$2" --config-file "$WORK/config.yaml" --topology-file "$WORK/topology-$port.yaml" --worker-cores 0 >/dev/null 2>&1 &
  PIDS+=($!); wait_port "$port"; TARGETS="$TARGETS $1:$port:$!"
}
start this target/release/shotover-proxy
[ -n "${BASELINE_BIN:-}" ] && start baseline "$BASELINE_BIN"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "| target | requests/s | busy loop's CPU share | proxy's CPU share |"
echo "|---|---|---|---|"
for rep in $(seq "$REPS"); do
  for target in $TARGETS; do
    IFS=: read -r name port pid <<< "$target"
    taskset -c 0 python3 -c 'while True: pass' &
    hog=$!
    sleep 0.5
    h0=$(ticks "$hog"); p0=$(ticks "$pid"); t0=$(date +%s.%N)
    rps=$(taskset -c 1 valkey-benchmark -p "$port" -c 50 -n "$REQUESTS" -r 100000 -t get -P 1 --csv 2>/dev/null | tail -1 | cut -d, -f2 | tr -d '"')
    t1=$(date +%s.%N); h1=$(ticks "$hog"); p1=$(ticks "$pid")
    kill "$hog"; wait "$hog" 2>/dev/null || true
    python3 -c "w = $t1 - $t0; print(f'| $name (run $rep) | {float($rps):,.0f} | {($h1 - $h0) / w:.0f} % | {($p1 - $p0) / w:.0f} % |')"
  done
done
