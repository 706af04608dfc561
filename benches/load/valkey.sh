#!/usr/bin/env bash
# Load benchmark: valkey-benchmark against Valkey directly, through this proxy, through HAProxy
# in TCP mode (one thread), through twemproxy and (when UPSTREAM_SHOTOVER_BIN is set) through
# upstream Shotover, all alternated in one run, in two CPU placements. Prints medians over
# the repetitions and ratios.
#
#   benches/load/valkey.sh            # defaults: -c 50 -n 100000 -r 100000, 3 repetitions
#   REQUESTS=50000 REPS=1 PLACEMENTS=dedicated benches/load/valkey.sh
#   UPSTREAM_SHOTOVER_BIN=/path/to/upstream/shotover-proxy benches/load/valkey.sh
#                                     # adds upstream Shotover (built outside this project)
#   BASELINE_BIN=/path/to/older/shotover-proxy benches/load/valkey.sh
#                                     # adds an older build of this proxy (1 core)
#
# Placements (on a 2-CPU machine):
#   dedicated  Valkey and valkey-benchmark on CPU 0, every proxy on CPU 1 (this proxy's 2-core
#              target uses CPUs 0 and 1, so its second core shares CPU 0).
#   shared     nothing pinned but this proxy (`--worker-cores 0`, and `0-1`, which is the
#              default: every CPU): what a user gets who runs it beside anything else.
# Only ratios from one run count: the machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-100000}
KEYSPACE=${KEYSPACE:-100000}
REPS=${REPS:-3}
TESTS=${TESTS:-set,get}
PIPELINES=${PIPELINES:-"1 16"}
PLACEMENTS=${PLACEMENTS:-"dedicated shared"}

for tool in valkey-server valkey-benchmark haproxy nutcracker; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps" >&2; exit 1; }
done
source benches/load/common.sh
build_release
BIN=target/release/shotover-proxy

WORK=$(mktemp -d)
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

# `pin CPU command...`: runs the command on CPU (empty: unpinned). It execs, so that `pin ... &`
# gives `$!` of the command itself.
pin() { local cpu=$1; shift; if [ -n "$cpu" ]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi; }

printf 'main_log_level: "warn"\n' > "$WORK/config.yaml"
topology() { # port [extra sink lines]
  printf 'sources:\n  - Valkey:\n      name: "valkey"\n      listen_addr: "127.0.0.1:%s"\n      connection_limit: 4096\n      chain:\n        - ValkeySinkSingle:\n            remote_address: "127.0.0.1:%s"\n            connect_timeout_ms: 3000\n%s' "$1" "$VALKEY" "${2:-}" > "$WORK/topology-$1.yaml"
}
start_shotover() { # port worker-cores [binary] [extra sink lines]
  topology "$1" "${4:-}"
  "${3:-$BIN}" --config-file "$WORK/config.yaml" --topology-file "$WORK/topology-$1.yaml" --worker-cores "$2" >"$WORK/shotover-$1.log" 2>&1 &
  PIDS+=($!); wait_port "$1"
}
start_upstream() { # port cpu
  topology "$1"
  local threads=()
  [ -n "$2" ] && threads=(--core-threads 1)
  printf 'main_log_level: "warn"\nobservability_interface: "127.0.0.1:%s"\n' "$(free_port)" > "$WORK/upstream-config-$1.yaml"
  pin "$2" "$UPSTREAM_SHOTOVER_BIN" --config-file "$WORK/upstream-config-$1.yaml" --topology-file "$WORK/topology-$1.yaml" "${threads[@]}" >"$WORK/upstream-$1.log" 2>&1 &
  PIDS+=($!); wait_port "$1"
}
start_haproxy() { # port cpu
  local cpumap=""
  [ -n "$2" ] && cpumap="cpu-map 1/1 $2"
  cat > "$WORK/haproxy-$1.cfg" <<CFG
global
    nbthread 1
    $cpumap
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$1
    default_backend be
backend be
    server valkey 127.0.0.1:$VALKEY
CFG
  haproxy -f "$WORK/haproxy-$1.cfg" -db >/dev/null 2>&1 &
  PIDS+=($!); wait_port "$1"
}
start_twemproxy() { # port cpu
  cat > "$WORK/nutcracker-$1.yml" <<CFG
bench:
  listen: 127.0.0.1:$1
  redis: true
  hash: fnv1a_64
  distribution: ketama
  servers:
    - 127.0.0.1:$VALKEY:1
CFG
  pin "$2" nutcracker -c "$WORK/nutcracker-$1.yml" -s "$(free_port)" >/dev/null 2>&1 &
  PIDS+=($!); wait_port "$1"
}

RESULTS="$WORK/results.csv"
echo "placement,rep,pipeline,target,test,rps" > "$RESULTS"
RSS_REPORT=""

for placement in $PLACEMENTS; do
  if [ "$placement" = dedicated ]; then SERVER_CPU=0; PROXY_CPU=1; ONE=1; else SERVER_CPU=""; PROXY_CPU=""; ONE=0; fi
  VALKEY=$(free_port)
  pin "$SERVER_CPU" valkey-server --port "$VALKEY" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null &
  PIDS+=($!); wait_port "$VALKEY"

  P1=$(free_port); start_shotover "$P1" "$ONE"; SHOTOVER1_PID=${PIDS[-1]}
  P2=$(free_port); start_shotover "$P2" 0-1
  PM=$(free_port); start_shotover "$PM" "$ONE" "" "            multiplex: false"$'\n'
  HA=$(free_port); start_haproxy "$HA" "$PROXY_CPU"
  TW=$(free_port); start_twemproxy "$TW" "$PROXY_CPU"
  TARGETS="direct:$VALKEY shotover-1-core:$P1 shotover-2-cores:$P2 shotover-1-core-nomux:$PM haproxy-tcp:$HA twemproxy:$TW"
  if [ -n "${UPSTREAM_SHOTOVER_BIN:-}" ]; then
    UP=$(free_port); start_upstream "$UP" "$PROXY_CPU"
    TARGETS="$TARGETS upstream-shotover:$UP"
  fi
  if [ -n "${BASELINE_BIN:-}" ]; then
    BL=$(free_port); start_shotover "$BL" "$ONE" "$BASELINE_BIN"
    TARGETS="$TARGETS baseline-1-core:$BL"
  fi

  for rep in $(seq "$REPS"); do
    for pipeline in $PIPELINES; do
      for target in $TARGETS; do
        name=${target%%:*}; port=${target##*:}
        n=$REQUESTS; [ "$pipeline" -gt 1 ] && n=$((REQUESTS * 4))
        pin "$SERVER_CPU" valkey-benchmark -p "$port" -c "$CLIENTS" -n "$n" -r "$KEYSPACE" -P "$pipeline" -t "$TESTS" --csv -q 2>/dev/null \
          | tail -n +2 | tr -d '"' | while IFS=, read -r test rps _; do
              echo "$placement,$rep,$pipeline,$name,$test,$rps" >> "$RESULTS"
            done
      done
    done
  done

  if [ "$placement" = dedicated ]; then
    # RSS of the 1-core proxy: idle, then with 200 open client connections.
    rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
    IDLE_RSS=$(rss "$SHOTOVER1_PID")
    valkey-benchmark -p "$P1" -c 200 -I >/dev/null 2>&1 &
    IDLER=$!; sleep 2
    BUSY_RSS=$(rss "$SHOTOVER1_PID")
    kill "$IDLER" 2>/dev/null || true
    RSS_REPORT="$IDLE_RSS $BUSY_RSS"
  fi
  stop_all
done

python3 - "$RESULTS" "$CLIENTS" "$REPS" "$REQUESTS" $RSS_REPORT <<'PY'
import csv, statistics, sys
from collections import defaultdict
path, clients, reps, requests = sys.argv[1:5]
rss = sys.argv[5:7]
runs = defaultdict(list)
for row in csv.DictReader(open(path)):
    runs[(row["placement"], int(row["pipeline"]), row["test"], row["target"])].append(float(row["rps"]))
order = ["direct", "shotover-1-core", "shotover-2-cores", "shotover-1-core-nomux", "haproxy-tcp", "twemproxy",
         "upstream-shotover", "baseline-1-core"]
label = {
    "dedicated": {"shotover-1-core": "this, 1 core (CPU 1)", "shotover-2-cores": "this, cores 0-1",
                  "shotover-1-core-nomux": "this, 1 core, multiplex off"},
    "shared": {"shotover-1-core": "this, core 0", "shotover-2-cores": "this, cores 0-1 (default)",
               "shotover-1-core-nomux": "this, core 0, multiplex off"},
}
print(f"\nvalkey-benchmark -c {clients} -n {requests} (x4 at -P 16) -r, median of {reps} runs, requests/s")
for placement in ["dedicated", "shared"]:
    keys = sorted({(p, t) for (pl, p, t, _) in runs if pl == placement})
    if not keys:
        continue
    targets = [t for t in order if any(k[0] == placement and k[3] == t for k in runs)]
    print(f"\n{placement}:\n")
    print("| target | " + " | ".join(f"{t.upper()} P{p}" for p, t in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    med = {(p, t, target): statistics.median(runs[(placement, p, t, target)])
           for (p, t) in keys for target in targets if runs.get((placement, p, t, target))}
    for target in targets:
        cells = [f"{med.get((p, t, target), 0)/1000:,.0f}k" for (p, t) in keys]
        print(f"| {label[placement].get(target, target)} | " + " | ".join(cells) + " |")
    def ratio_row(name, num, dens):
        cells = []
        for (p, t) in keys:
            n = med.get((p, t, num))
            d = max((med.get((p, t, x), 0) for x in dens), default=0)
            cells.append(f"{n/d:.2f}" if n and d else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")
    ones = "shotover-1-core"
    ratio_row(f"{label[placement][ones]} / upstream", ones, ["upstream-shotover"])
    ratio_row(f"{label[placement][ones]} / twemproxy", ones, ["twemproxy"])
    ratio_row(f"{label[placement][ones]} / best of HAProxy, twemproxy, upstream", ones,
              ["haproxy-tcp", "twemproxy", "upstream-shotover"])
    ratio_row(f"{label[placement]['shotover-2-cores']} / {label[placement][ones]}", "shotover-2-cores", [ones])
    ratio_row(f"{label[placement]['shotover-2-cores']} / upstream", "shotover-2-cores", ["upstream-shotover"])
    ratio_row(f"{label[placement][ones]} / multiplex off", ones, ["shotover-1-core-nomux"])
    ratio_row(f"{label[placement][ones]} / direct", ones, ["direct"])
    if any(k[3] == "baseline-1-core" for k in runs):
        ratio_row(f"{label[placement][ones]} / baseline", ones, ["baseline-1-core"])
if rss:
    print(f"\nthis proxy (1 worker core) RSS: idle {int(rss[0])/1024:.1f} MiB, "
          f"with 200 open connections {int(rss[1])/1024:.1f} MiB")
PY
