#!/usr/bin/env bash
# What one proxied request costs each proxy: system calls, context switches and CPU time per
# request, counted by `perf stat` on the proxy process over a fixed valkey-benchmark run.
# Placement: Valkey and valkey-benchmark on CPU 0, each proxy alone on CPU 1 (this proxy with
# one worker core). Targets: this proxy, HAProxy (TCP mode, one thread), twemproxy and, when
# UPSTREAM_SHOTOVER_BIN is set, upstream Shotover.
#
#   benches/load/valkey-cost.sh           # -c 50 -n 100000, -P 1 and 16, GET
#   REQUESTS=20000 PIPELINES=1 benches/load/valkey-cost.sh
#   REPS=5 PIPELINES=1 benches/load/valkey-cost.sh   # the second table: medians of 5 alternated runs
#
# A second table gives what the other side pays per request through each target (and
# directly): the CPU time of valkey-benchmark and of valkey-server, which share CPU 0 and so
# bound throughput at -P 1, how often the client calls epoll_wait per request (how many replies
# each of its wake-ups finds), and how many commands Valkey reads per read.
#
# Instructions per request need hardware counters, which virtual machines often lack; the
# script prints them when `perf stat -e instructions` works and "-" otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-100000}
PIPELINES=${PIPELINES:-"1 16"}
TEST=${TEST:-get}
REPS=${REPS:-1}

for tool in valkey-server valkey-benchmark haproxy nutcracker perf; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run scripts/install-deps (perf: linux-perf)" >&2; exit 1; }
done
source benches/load/common.sh
build_release
BIN=target/release/shotover-proxy

work_and_valkey 0

topology() { # port [extra sink lines]
  printf 'sources:\n  - Valkey:\n      name: "valkey"\n      listen_addr: "127.0.0.1:%s"\n      connection_limit: 4096\n      chain:\n        - ValkeySinkSingle:\n            remote_address: "127.0.0.1:%s"\n            connect_timeout_ms: 3000\n%s' "$1" "$VALKEY" "${2:-}" > "$WORK/topology-$1.yaml"
}
printf 'main_log_level: "warn"\n' > "$WORK/config.yaml"

TARGETS=""
P=$(free_port); topology "$P"
"$BIN" --config-file "$WORK/config.yaml" --topology-file "$WORK/topology-$P.yaml" --worker-cores 1 >/dev/null 2>&1 &
PIDS+=($!); wait_port "$P"; TARGETS="$TARGETS this:$P:$!"

P=$(free_port); topology "$P" "            multiplex: false"$'\n'
"$BIN" --config-file "$WORK/config.yaml" --topology-file "$WORK/topology-$P.yaml" --worker-cores 1 >/dev/null 2>&1 &
PIDS+=($!); wait_port "$P"; TARGETS="$TARGETS this-multiplex-off:$P:$!"

P=$(free_port)
printf 'global\n    nbthread 1\n    cpu-map 1/1 1\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\nfrontend fe\n    bind 127.0.0.1:%s\n    default_backend be\nbackend be\n    server valkey 127.0.0.1:%s\n' "$P" "$VALKEY" > "$WORK/haproxy.cfg"
haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
PIDS+=($!); wait_port "$P"; TARGETS="$TARGETS haproxy-tcp:$P:$!"

P=$(free_port)
printf 'bench:\n  listen: 127.0.0.1:%s\n  redis: true\n  hash: fnv1a_64\n  distribution: ketama\n  servers:\n    - 127.0.0.1:%s:1\n' "$P" "$VALKEY" > "$WORK/nutcracker.yml"
taskset -c 1 nutcracker -c "$WORK/nutcracker.yml" -s "$(free_port)" >/dev/null 2>&1 &
PIDS+=($!); wait_port "$P"; TARGETS="$TARGETS twemproxy:$P:$!"

if [ -n "${UPSTREAM_SHOTOVER_BIN:-}" ]; then
  P=$(free_port); topology "$P"
  printf 'main_log_level: "warn"\nobservability_interface: "127.0.0.1:%s"\n' "$(free_port)" > "$WORK/upstream-config.yaml"
  taskset -c 1 "$UPSTREAM_SHOTOVER_BIN" --config-file "$WORK/upstream-config.yaml" --topology-file "$WORK/topology-$P.yaml" --core-threads 1 >/dev/null 2>&1 &
  PIDS+=($!); wait_port "$P"; TARGETS="$TARGETS upstream-shotover:$P:$!"
fi

HW=1
perf stat -e instructions -- true 2>&1 | grep -q "not supported" && HW=0
EVENTS="raw_syscalls:sys_enter,context-switches,task-clock"
[ "$HW" = 1 ] && EVENTS="$EVENTS,instructions"

# `per_request FILE N EVENT [SCALE [FORMAT]]`: EVENT's count in perf stat's CSV output FILE,
# times SCALE, per request; "-" when perf could not count it.
per_request() {
  awk -F, -v e="$3" -v n="$2" -v s="${4:-1}" -v fmt="${5:-%.2f}" \
    '$3 == e && $1 ~ /^[0-9.]+$/ {v = $1} END {if (v == "") print "-"; else printf fmt "\n", v * s / n}' "$1"
}
commas() { awk -v v="$1" 'BEGIN {s = sprintf("%.0f", v); t = ""; while (length(s) > 3) {t = "," substr(s, length(s) - 2) t; s = substr(s, 1, length(s) - 3)} print s t}'; }

echo "| -P | target | syscalls / request | context switches / request | CPU µs / request | instructions / request | requests/s |"
echo "|---|---|---|---|---|---|---|"
for pipeline in $PIPELINES; do
  n=$REQUESTS; [ "$pipeline" -gt 1 ] && n=$((REQUESTS * 4))
  for target in $TARGETS; do
    IFS=: read -r name port pid <<<"$target"
    # Warm up (connections, pools), then count over a fixed run.
    taskset -c 0 valkey-benchmark -p "$port" -c "$CLIENTS" -n 10000 -P "$pipeline" -t "$TEST" -q >/dev/null 2>&1
    perf stat -x, -e "$EVENTS" -p "$pid" -o "$WORK/perf-$name" &
    PERF=$!; sleep 0.3
    rps=$(taskset -c 0 valkey-benchmark -p "$port" -c "$CLIENTS" -n "$n" -P "$pipeline" -t "$TEST" --csv -q 2>/dev/null | tail -n 1 | tr -d '"' | cut -d, -f2)
    kill -INT "$PERF"; wait "$PERF" 2>/dev/null || true
    echo "| $pipeline | $name | $(per_request "$WORK/perf-$name" "$n" raw_syscalls:sys_enter) | $(per_request "$WORK/perf-$name" "$n" context-switches) | $(per_request "$WORK/perf-$name" "$n" task-clock 1000) | $(per_request "$WORK/perf-$name" "$n" instructions 1 %.0f) | $(commas "$rps") |"
  done
done

# The other side: valkey-benchmark's CPU time and epoll_wait calls (perf stat on it), and
# valkey-server's CPU time and commands per read (its /proc ticks and INFO stats). In this
# placement both run on CPU 0, so their sum per request bounds throughput at -P 1: a proxy can
# only lower Valkey's part (by batching), the client's part is about what it pays directly.
# REPS runs of every target, alternated; the table gives the median of each column.
echo
echo "| -P | target | client CPU µs / request | client epoll_wait / request | Valkey CPU µs / request | CPU 0 (client + Valkey) µs / request | Valkey commands / read | requests/s |"
echo "|---|---|---|---|---|---|---|---|"
VALKEY_PID=${PIDS[0]}
HZ=$(getconf CLK_TCK)
stats() { valkey-cli -p "$VALKEY" info stats | tr -d '\r' | awk -F: '/^total_commands_processed|^total_reads_processed/ {printf "%s ", $2}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
declare -A SIDE
for pipeline in $PIPELINES; do
  n=$REQUESTS; [ "$pipeline" -gt 1 ] && n=$((REQUESTS * 4))
  for rep in $(seq "$REPS"); do
    for target in "direct:$VALKEY:" $TARGETS; do
      IFS=: read -r name port pid <<<"$target"
      taskset -c 0 valkey-benchmark -p "$port" -c "$CLIENTS" -n 10000 -P "$pipeline" -t "$TEST" -q >/dev/null 2>&1
      read -r cmds0 reads0 <<<"$(stats)"
      ticks0=$(awk '{print $14 + $15}' "/proc/$VALKEY_PID/stat")
      rps=$(perf stat -x, -e syscalls:sys_enter_epoll_wait,task-clock -o "$WORK/client-$name" -- \
        taskset -c 0 valkey-benchmark -p "$port" -c "$CLIENTS" -n "$n" -P "$pipeline" -t "$TEST" --csv -q 2>/dev/null | tail -n 1 | tr -d '"' | cut -d, -f2)
      ticks1=$(awk '{print $14 + $15}' "/proc/$VALKEY_PID/stat")
      read -r cmds1 reads1 <<<"$(stats)"
      per_read=; [ $((reads1 - reads0)) -gt 0 ] && per_read=$(awk -v c=$((cmds1 - cmds0)) -v r=$((reads1 - reads0)) 'BEGIN {printf "%.1f", c / r}')
      valkey_us=$(awk -v t=$((ticks1 - ticks0)) -v hz="$HZ" -v n="$n" 'BEGIN {printf "%.2f", t * 1000000 / hz / n}')
      client_us=$(per_request "$WORK/client-$name" "$n" task-clock 1000)
      cpu0=; [ "$client_us" != - ] && cpu0=$(awk -v c="$client_us" -v v="$valkey_us" 'BEGIN {printf "%.2f", c + v}')
      [ "$client_us" = - ] && client_us=
      key="$pipeline $name"
      SIDE[$key client]+="$client_us "
      SIDE[$key epoll]+="$(per_request "$WORK/client-$name" "$n" syscalls:sys_enter_epoll_wait | tr -d -) "
      SIDE[$key valkey]+="$valkey_us "
      SIDE[$key cpu0]+="$cpu0 "
      SIDE[$key read]+="$per_read "
      SIDE[$key rps]+="$rps "
    done
  done
  for target in "direct:$VALKEY:" $TARGETS; do
    IFS=: read -r name port pid <<<"$target"
    key="$pipeline $name"
    m() { median <<<"${SIDE[$key $1]}"; }
    echo "| $pipeline | $name | $(m client) | $(m epoll) | $(m valkey) | $(m cpu0) | $(m read) | $(commas "$(m rps)") |"
  done
done

# Idle: CPU time each proxy uses over 10 s with no traffic (after the runs above, connections
# closed), all measured over the same 10 s.
echo
echo "| target | idle CPU over 10 s (ms) | idle wakeups (syscalls) over 10 s |"
echo "|---|---|---|"
declare -A BEFORE
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for target in $TARGETS; do IFS=: read -r name port pid <<<"$target"; BEFORE[$name]=$(ticks "$pid"); done
PERFS=()
for target in $TARGETS; do
  IFS=: read -r name port pid <<<"$target"
  perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$WORK/idle-$name" &
  PERFS+=($!)
done
sleep 10
for p in "${PERFS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
wait "${PERFS[@]}" 2>/dev/null || true
for target in $TARGETS; do
  IFS=: read -r name port pid <<<"$target"
  ms=$(( ($(ticks "$pid") - ${BEFORE[$name]}) * 1000 / HZ ))
  calls=$(grep raw_syscalls "$WORK/idle-$name" | cut -d, -f1)
  [[ "$calls" == "<not counted>" ]] && calls="0 (the process never ran)"
  echo "| $name | $ms | ${calls:--} |"
done
