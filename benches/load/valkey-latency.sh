#!/usr/bin/env bash
# Tail latency through this proxy: valkey-benchmark's p50, p99 and maximum latency of GET at
# -P 1 and -P 16 through ValkeySinkSingle (Valkey and the client on CPU 0, the proxy on CPU 1)
# and through ValkeySinkCluster in hiding mode (a 6-node cluster, unpinned). With BASELINE_BIN,
# an older build runs beside this one, alternated run by run.
#
#   benches/load/valkey-latency.sh
#   BASELINE_BIN=/path/to/older/shotover-proxy REPS=3 benches/load/valkey-latency.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-300000}
REPS=${REPS:-3}
source benches/load/common.sh
build_release
work_and_valkey 0
CLUSTER_BASE=${CLUSTER_BASE:-17300}
scripts/valkey-cluster "$WORK/cluster" "$CLUSTER_BASE" >/dev/null
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; scripts/valkey-cluster-stop "$WORK/cluster"; rm -rf "$WORK"' EXIT
contacts=$(for i in 0 1 2 3 4 5; do printf '"127.0.0.1:%s",' $((CLUSTER_BASE + i)); done)

printf 'main_log_level: "warn"\n' > "$WORK/config.yaml"
BUILDS=("this=target/release/shotover-proxy")
[ -n "${BASELINE_BIN:-}" ] && BUILDS+=("baseline=$BASELINE_BIN")
TARGETS=()
for build in "${BUILDS[@]}"; do
  name=${build%%=*}; bin=${build#*=}
  SINGLE=$(free_port); HIDING=$(free_port)
  cat > "$WORK/$name.yaml" <<YAML
sources:
  - Valkey:
      name: "single"
      listen_addr: "127.0.0.1:$SINGLE"
      chain:
        - ValkeySinkSingle:
            remote_address: "127.0.0.1:$VALKEY"
  - Valkey:
      name: "hiding"
      listen_addr: "127.0.0.1:$HIDING"
      chain:
        - ValkeySinkCluster:
            first_contact_points: [${contacts%,}]
YAML
  "$bin" --config-file "$WORK/config.yaml" --topology-file "$WORK/$name.yaml" --worker-cores 1 >"$WORK/$name.log" 2>&1 &
  PIDS+=($!); wait_port "$SINGLE"; wait_port "$HIDING"
  TARGETS+=("$name,single,$SINGLE" "$name,hiding,$HIDING")
done

RESULTS="$WORK/results.csv"
for rep in $(seq "$REPS"); do
  for pipeline in 1 16; do
    n=$REQUESTS; [ "$pipeline" -gt 1 ] && n=$((REQUESTS * 8))
    for target in "${TARGETS[@]}"; do
      IFS=, read -r build sink port <<<"$target"
      # The CSV columns: test, rps, avg, min, p50, p95, p99, max (milliseconds).
      taskset -c 0 valkey-benchmark -p "$port" -c "$CLIENTS" -n "$n" -P "$pipeline" -t get --csv -q 2>/dev/null \
        | grep '^"GET"' | tr -d '"' | awk -F, -v p="$pipeline" -v b="$build" -v s="$sink" \
          '{print p "," s "," b "," $2 "," $5 "," $7 "," $8}' >> "$RESULTS"
    done
  done
done
python3 - "$RESULTS" "$CLIENTS" "$REPS" <<'PY'
import csv, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for p, sink, build, rps, p50, p99, mx in csv.reader(open(sys.argv[1])):
    runs[(sink, int(p), build)].append((float(rps), float(p50), float(p99), float(mx)))
print(f"\nGET, valkey-benchmark -c {sys.argv[2]}, {sys.argv[3]} runs each: median requests/s, median p50 and p99, largest max (ms)")
print("| sink | -P | build | requests/s | p50 | p99 | max |")
print("|---|---|---|---|---|---|---|")
for (sink, p, build) in sorted(runs):
    r = runs[(sink, p, build)]
    med = lambda i: statistics.median(x[i] for x in r)
    print(f"| {sink} | {p} | {build} | {med(0):,.0f} | {med(1):.2f} | {med(2):.2f} | {max(x[3] for x in r):.1f} |")
PY
