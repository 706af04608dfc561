#!/usr/bin/env bash
# Load benchmark: cassandra-stress 2.1 `write` then `read` against one Cassandra 2.1 node
# directly and through shotover (one worker core, one CassandraSinkSingle), alternated in
# one run. Prints ops/s of every run, the ratio proxy / direct of each repetition and the
# geometric mean of those ratios.
#
#   benches/load/cassandra.sh                    # defaults: n=100000, 32 threads, 2 repetitions
#   N=20000 REPS=1 THREADS=16 benches/load/cassandra.sh
#   RING=3 benches/load/cassandra.sh             # a 3-node ring, through CassandraSinkCluster
#   CACHE=1 benches/load/cassandra.sh            # reads only, also through ValkeyCache
#   PLACEMENT=dedicated RING=3 benches/load/cassandra.sh   # nodes and client on CPU 0 only
#
# With CACHE=1 only `read` is measured, over KEYS keys (default 10000, of the WARMUP keys
# written) drawn uniformly, so each key is read about N/KEYS times: a read-heavy workload
# with a hot set. A third target runs the same proxy with a ValkeyCache of the table in
# front of the sink (a local valkey-server, unpinned, started by this script).
#
# With RING=3 the nodes are 127.0.0.1-3 (one data centre, one rack, as the default snitch
# puts them), the keyspace gets replication_factor 3 (cassandra-stress `-schema`), and the
# proxy runs CassandraSinkCluster, token-aware; "direct" is cassandra-stress given all three
# nodes (each of its connections goes to one of them), and so is the warm-up, so that every
# node's JIT is warm before the measured runs.
#
# Protocol: the Java driver that cassandra-stress 2.1 bundles (2.0.5) speaks CQL native
# protocol v2 at most and has no protocolVersion option; shotover speaks v3 to v5 and turns
# v2 away. So the stress runs use `-mode simplenative prepared cql3`: Cassandra's own
# SimpleClient, which speaks v3 (one connection per thread, one request in flight on each,
# PREPARE once then EXECUTE). SimpleClient reads cassandra.yaml for its frame size limit,
# so JAVA_TOOL_OPTIONS points it at the node's. The schema (Keyspace1.Standard1) is created
# over Thrift by a first `write` straight to the node, which also warms up the node's JIT.
#
# CPU placement on a 2-CPU machine: the shotover worker on CPU 1 (`--worker-cores 1`); the
# node and cassandra-stress unpinned, since one JVM per CPU would leave the node starved. So
# the proxy takes CPU from the node and the client in the proxy runs: that is part of what
# is measured. Only ratios from one run count: the machine is shared and noisy.
# PLACEMENT=dedicated gives the proxy a CPU of its own, as deployment.md recommends: the
# nodes and cassandra-stress run on CPU 0 only (taskset), in the direct runs too, and the
# proxy's worker on CPU 1. Direct then measures what the nodes and client do on one CPU, and
# the proxy runs show what it costs the requests when it does not compete for that CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-100000}
THREADS=${THREADS:-32}
REPS=${REPS:-2}
WARMUP=${WARMUP:-50000}
MODE=${MODE:-simplenative prepared cql3}
STRESS_TIMEOUT=${STRESS_TIMEOUT:-900}
RING=${RING:-1}
CACHE=${CACHE:-0}
KEYS=${KEYS:-10000}
PLACEMENT=${PLACEMENT:-shared}
PIN=()
[ "$PLACEMENT" = dedicated ] && PIN=(taskset -c 0)

command -v java >/dev/null || { echo "missing java: run scripts/install-deps" >&2; exit 1; }
source benches/load/common.sh
BIN=target/release/shotover-proxy
[ -x "$BIN" ] || build_release

WORK=$(mktemp -d)
PIDS=()
STRESS_PID=
cleanup() {
  if [ -n "$STRESS_PID" ]; then kill "$STRESS_PID" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/cassandra stop "$WORK/cassandra" || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NATIVE=$(free_port); STORAGE=$(free_port); THRIFT=$(free_port)
IPS=(127.0.0.1); [ "$RING" = 3 ] && IPS=(127.0.0.1 127.0.0.2 127.0.0.3)
echo "starting Cassandra 2.1 on ${IPS[*]}, port $NATIVE (thrift $THRIFT)" >&2
"${PIN[@]}" scripts/cassandra start "$WORK/cassandra" "${IPS[@]}" --port "$NATIVE" --storage-port "$STORAGE" --rpc-port "$THRIFT" >/dev/null
SINK="        - CassandraSinkSingle:
            remote_address: \"127.0.0.1:$NATIVE\"
            connect_timeout_ms: 3000"
SCHEMA=()
if [ "$RING" = 3 ]; then
  SINK="        - CassandraSinkCluster:
            first_contact_points: [\"127.0.0.1:$NATIVE\"]
            local_shotover_host_id: \"2dd022d6-2937-4754-89d6-02d2933a8f7a\"
            shotover_nodes:
              - address: \"127.0.0.1:PROXY_PORT\"
                data_center: \"datacenter1\"
                rack: \"rack1\"
                host_id: \"2dd022d6-2937-4754-89d6-02d2933a8f7a\"
            connect_timeout_ms: 3000"
  SCHEMA=(-schema "replication(factor=3)")
fi

printf 'main_log_level: "warn"\n' > "$WORK/config.yaml"
# start_proxy NAME PORT CHAIN: one shotover worker on CPU 1 with that chain.
start_proxy() {
  cat > "$WORK/$1.yaml" <<YAML
---
sources:
  - Cassandra:
      name: "cql"
      listen_addr: "127.0.0.1:$2"
      chain:
${3//PROXY_PORT/$2}
YAML
  "$BIN" --config-file "$WORK/config.yaml" --topology-file "$WORK/$1.yaml" --worker-cores 1 >"$WORK/$1.log" 2>&1 &
  PIDS+=($!); wait_port "$2"
}
PROXY=$(free_port)
start_proxy shotover "$PROXY" "$SINK"
TARGETS=("direct:$NATIVE" "shotover-1-core:$PROXY")
OPS_MEASURED="write read"
POP=()
if [ "$CACHE" = 1 ]; then
  VALKEY=$(free_port)
  valkey-server --port "$VALKEY" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/valkey.log" 2>&1 &
  PIDS+=($!); wait_port "$VALKEY"
  CACHED=$(free_port)
  start_proxy cached "$CACHED" "        - ValkeyCache:
            caching_schema:
              Keyspace1.Standard1:
                partition_key: [key]
            chain:
              - ValkeySinkSingle:
                  remote_address: \"127.0.0.1:$VALKEY\"
$SINK"
  TARGETS+=("shotover-cache:$CACHED")
  OPS_MEASURED=read
  POP=(-key "dist=uniform(1..$KEYS)")
fi

export JAVA_TOOL_OPTIONS="-Dcassandra.config=file://$WORK/cassandra/node-1/conf/cassandra.yaml"

# stress OP N PORT LOG: runs cassandra-stress, sets OPS to its op rate. Not called in a
# $(...) subshell, so that cleanup knows STRESS_PID. The 2.1 tool does not exit after `END`
# in simplenative mode (SimpleClient's threads stay up), so it is stopped once it prints END.
stress() {
  local op=$1 n=$2 port=$3 log=$4 nodes=127.0.0.1 pop=()
  [ "$op" = read ] && pop=("${POP[@]}")
  # Direct to a ring: every node of it.
  [ "$port" = "$NATIVE" ] && nodes=$(IFS=,; echo "${IPS[*]}")
  : >"$log"
  # shellcheck disable=SC2086
  "${PIN[@]}" scripts/cassandra-stress "$op" n="$n" no_warmup "${SCHEMA[@]}" "${pop[@]}" -rate threads="$THREADS" -mode $MODE \
    -node "$nodes" -port native="$port" thrift="$THRIFT" >"$log" 2>&1 &
  STRESS_PID=$!
  local deadline=$((SECONDS + STRESS_TIMEOUT))
  until grep -q '^END' "$log"; do
    if ! kill -0 "$STRESS_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      echo "cassandra-stress $op on port $port failed or timed out; its output:" >&2
      grep -v '^\s*at ' "$log" | tail -30 >&2
      exit 1
    fi
    sleep 0.5
  done
  kill "$STRESS_PID" 2>/dev/null || true
  wait "$STRESS_PID" 2>/dev/null || true
  STRESS_PID=
  if grep -Eq 'Exception|ERROR' "$log"; then
    echo "cassandra-stress $op on port $port reported errors:" >&2
    grep -E 'Exception|ERROR' "$log" | sort | uniq -c | head >&2
  fi
  OPS=$(awk -F: '/^op rate/ {gsub(/ /, "", $2); print $2}' "$log")
  [[ $OPS =~ ^[0-9]+$ ]] || { echo "no op rate in $log: '$OPS'" >&2; exit 1; }
}

echo "schema and warm-up: write n=$WARMUP directly" >&2
stress write "$WARMUP" "$NATIVE" "$WORK/warmup.log"
echo "warm-up: $OPS op/s" >&2

RESULTS="$WORK/results.csv"
echo "rep,op,target,ops" > "$RESULTS"
for rep in $(seq "$REPS"); do
  # Alternate which target goes first: the first `read` after a `write` phase meets a node
  # still flushing and compacting, and is slower. With an even REPS, the geometric mean of
  # the per-repetition ratios cancels that.
  targets=("${TARGETS[@]}")
  if [ $((rep % 2)) = 0 ]; then
    for i in "${!TARGETS[@]}"; do targets[i]=${TARGETS[$((${#TARGETS[@]} - 1 - i))]}; done
  fi
  for op in $OPS_MEASURED; do
    for target in "${targets[@]}"; do
      name=${target%%:*}; port=${target##*:}
      stress "$op" "$N" "$port" "$WORK/$rep-$op-$name.log"
      echo "rep $rep: $op $name $OPS op/s" >&2
      echo "$rep,$op,$name,$OPS" >> "$RESULTS"
    done
  done
done

echo "placement: $PLACEMENT (the proxy on CPU 1; dedicated: the nodes and client on CPU 0)"
python3 - "$RESULTS" "$N" "$THREADS" "$MODE" "$RING" "$CACHE" "$KEYS" <<'PY'
import csv, math, sys
from collections import defaultdict
path, n, threads, mode, ring, cache, keys = sys.argv[1:8]
ops = defaultdict(dict)
for row in csv.DictReader(open(path)):
    ops[(row["op"], int(row["rep"]))][row["target"]] = float(row["ops"])
sink = "CassandraSinkCluster, 3-node ring, RF 3" if ring == "3" else "CassandraSinkSingle, 1 node"
proxies = ["shotover-1-core"] + (["shotover-cache"] if cache == "1" else [])
reads = f", reads over {keys} keys drawn uniformly" if cache == "1" else ""
print(f"\ncassandra-stress 2.1, -mode {mode}, n={n}, -rate threads={threads}, {sink}{reads}, ops/s")
print("| op | rep | direct | " + " | ".join(proxies) + " | " + " | ".join(f"{p} / direct" for p in proxies) + " |")
print("|---" * (3 + 2 * len(proxies)) + "|")
for op in ("write", "read"):
    ratios = defaultdict(list)
    for (o, rep), t in sorted(ops.items()):
        if o != op:
            continue
        row = [f"{t[p]:,.0f}" for p in proxies]
        for p in proxies:
            ratios[p].append(t[p] / t["direct"])
        print(f"| {op} | {rep} | {t['direct']:,.0f} | " + " | ".join(row) + " | "
              + " | ".join(f"{ratios[p][-1]:.2f}" for p in proxies) + " |")
    if len(ratios[proxies[0]]) > 1:
        means = [math.exp(sum(map(math.log, ratios[p])) / len(ratios[p])) for p in proxies]
        print(f"| {op} | geometric mean | |" + " |" * len(proxies) + " " + " | ".join(f"{m:.2f}" for m in means) + " |")
PY
