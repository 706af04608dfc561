#!/usr/bin/env bash
# Load benchmark: valkey-benchmark against Valkey directly, through shotover (1 and 2
# worker cores), through HAProxy in TCP mode (one thread) and through twemproxy, all
# alternated in one run. Prints medians over the repetitions and ratios.
#
#   benches/load/valkey.sh            # defaults: -c 50 -n 200000, 3 repetitions
#   REQUESTS=50000 REPS=1 benches/load/valkey.sh
#   BASELINE_BIN=/path/to/older/shotover-proxy benches/load/valkey.sh
#                                     # also measures an older build (1 core, CPU 1), alternated
#                                     # with the others, and prints this build / baseline
#
# CPU placement on a 2-CPU machine: Valkey and valkey-benchmark on CPU 0, each proxy on
# CPU 1 (the 2-worker shotover uses CPUs 0 and 1). Only ratios from one run count: the
# machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-200000}
REPS=${REPS:-3}
TESTS=${TESTS:-set,get}
PIPELINES=${PIPELINES:-"1 16"}

for tool in valkey-server valkey-benchmark haproxy nutcracker; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps" >&2; exit 1; }
done
source benches/load/common.sh
build_release
BIN=target/release/shotover-proxy

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


VALKEY=$(free_port)
taskset -c 0 valkey-server --port "$VALKEY" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null &
PIDS+=($!); wait_port "$VALKEY"

printf 'main_log_level: "warn"\n' > "$WORK/config.yaml"
start_shotover() { # port cores [binary]
  printf 'sources:\n  - Valkey:\n      name: "valkey"\n      listen_addr: "127.0.0.1:%s"\n      connection_limit: 4096\n      chain:\n        - ValkeySinkSingle:\n            remote_address: "127.0.0.1:%s"\n' "$1" "$VALKEY" > "$WORK/topology-$1.yaml"
  "${3:-$BIN}" --config-file "$WORK/config.yaml" --topology-file "$WORK/topology-$1.yaml" --worker-cores "$2" >"$WORK/shotover-$1.log" 2>&1 &
  PIDS+=($!); wait_port "$1"
}
SHOTOVER1=$(free_port); start_shotover "$SHOTOVER1" 1
SHOTOVER1_PID=${PIDS[-1]}
SHOTOVER2=$(free_port); start_shotover "$SHOTOVER2" 0-1

HAPROXY=$(free_port)
cat > "$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
    cpu-map 1/1 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$HAPROXY
    default_backend be
backend be
    server valkey 127.0.0.1:$VALKEY
CFG
haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
PIDS+=($!); wait_port "$HAPROXY"

TWEM=$(free_port)
cat > "$WORK/nutcracker.yml" <<CFG
bench:
  listen: 127.0.0.1:$TWEM
  redis: true
  hash: fnv1a_64
  distribution: ketama
  servers:
    - 127.0.0.1:$VALKEY:1
CFG
taskset -c 1 nutcracker -c "$WORK/nutcracker.yml" -s "$(free_port)" >/dev/null 2>&1 &
PIDS+=($!); wait_port "$TWEM"

TARGETS="direct:$VALKEY shotover-1-core:$SHOTOVER1 shotover-2-cores:$SHOTOVER2 haproxy-tcp:$HAPROXY twemproxy:$TWEM"
if [ -n "${BASELINE_BIN:-}" ]; then
  BASELINE=$(free_port); start_shotover "$BASELINE" 1 "$BASELINE_BIN"
  TARGETS="$TARGETS baseline-1-core:$BASELINE"
fi
RESULTS="$WORK/results.csv"
echo "rep,pipeline,target,test,rps" > "$RESULTS"
for rep in $(seq "$REPS"); do
  for pipeline in $PIPELINES; do
    for target in $TARGETS; do
      name=${target%%:*}; port=${target##*:}
      n=$REQUESTS; [ "$pipeline" -gt 1 ] && n=$((REQUESTS * 4))
      taskset -c 0 valkey-benchmark -p "$port" -c "$CLIENTS" -n "$n" -P "$pipeline" -t "$TESTS" --csv -q 2>/dev/null \
        | tail -n +2 | tr -d '"' | while IFS=, read -r test rps _; do
            echo "$rep,$pipeline,$name,$test,$rps" >> "$RESULTS"
          done
    done
  done
done

# RSS of the 1-core shotover: idle, then with 200 open client connections.
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
IDLE_RSS=$(rss "$SHOTOVER1_PID")
valkey-benchmark -p "$SHOTOVER1" -c 200 -I >/dev/null 2>&1 &
IDLER=$!; sleep 2
BUSY_RSS=$(rss "$SHOTOVER1_PID")
kill "$IDLER" 2>/dev/null || true

python3 - "$RESULTS" "$IDLE_RSS" "$BUSY_RSS" "$CLIENTS" "$REPS" <<'PY'
import csv, statistics, sys
from collections import defaultdict
path, idle_rss, busy_rss, clients, reps = sys.argv[1:6]
runs = defaultdict(list)
for row in csv.DictReader(open(path)):
    runs[(int(row["pipeline"]), row["test"], row["target"])].append(float(row["rps"]))
targets = ["direct", "shotover-1-core", "shotover-2-cores", "haproxy-tcp", "twemproxy"]
if any(t == "baseline-1-core" for (_, _, t) in runs):
    targets.append("baseline-1-core")
print(f"\nvalkey-benchmark -c {clients}, median of {reps} runs, requests/s")
baseline = "baseline-1-core" in targets
print("| -P | test | " + " | ".join(targets) + " | shotover-1-core / haproxy | shotover-1-core / twemproxy | shotover-1-core / direct |" + (" shotover-1-core / baseline |" if baseline else ""))
print("|---" * (len(targets) + 5 + int(baseline)) + "|")
for (pipeline, test) in sorted({(p, t) for (p, t, _) in runs}):
    med = {t: statistics.median(runs[(pipeline, test, t)]) for t in targets if runs.get((pipeline, test, t))}
    cells = [f"{med.get(t, 0):,.0f}" for t in targets]
    s = med.get("shotover-1-core", 0)
    ratio = lambda base: f"{s / med[base]:.2f}" if med.get(base) else "-"
    print(f"| {pipeline} | {test} | " + " | ".join(cells) + f" | {ratio('haproxy-tcp')} | {ratio('twemproxy')} | {ratio('direct')} |" + (f" {ratio('baseline-1-core')} |" if baseline else ""))
print(f"\nshotover (1 worker core) RSS: idle {int(idle_rss)/1024:.1f} MiB, with 200 open connections {int(busy_rss)/1024:.1f} MiB")
PY
