#!/usr/bin/env bash
# Kafka throughput against a real 3-broker Apache Kafka 4 cluster (scripts/kafka), direct and
# through the proxy (KafkaSinkCluster, one worker core), alternated in one run, with Kafka's
# own tools: ProducerPerformance (kafka-producer-perf-test) with acks=1 and acks=all, then
# ConsumerPerformance (kafka-consumer-perf-test) reading a topic back. Records of 1 KiB, a
# topic of 6 partitions with replication 3, so a producer's batches go to all three leaders
# (through the proxy: one request split into three). Prints records/s of every run and the
# ratio proxy / direct of each pair, and their geometric mean per kind.
#
#   benches/load/kafka-cluster.sh              # defaults: 200000 records, 2 repetitions
#   RECORDS=50000 REPS=1 benches/load/kafka-cluster.sh
#
# The producer sends as fast as it can (--throughput -1) with its default batching; the
# consumer reads RECORDS records of a topic written beforehand. The JVMs (3 brokers, a
# controller and the tool) and the proxy share the machine's CPUs: only ratios from one run
# count.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/load/common.sh

RECORDS=${RECORDS:-200000}
REPS=${REPS:-2}
dir=$(mktemp -d /tmp/kafka-cluster-bench.XXXXXX)
cleanup() {
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null || true
  scripts/kafka stop "$dir/kafka" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

build_release
echo "starting a 3-broker Kafka cluster" >&2
bootstrap=$(scripts/kafka start "$dir/kafka" --brokers 3 | paste -sd, -)
proxy=$(free_port)
contact=$(echo "$bootstrap" | sed 's/\([^,]*\)/"\1"/g')
cat > "$dir/topology.yaml" <<YAML
sources:
  - Kafka:
      name: "kafka"
      listen_addr: "127.0.0.1:$proxy"
      chain:
        - KafkaSinkCluster:
            first_contact_points: [$contact]
            shotover_nodes:
              - address_for_client: "127.0.0.1:$proxy"
                rack: "rack1"
                broker_id: 0
            local_shotover_broker_id: 0
YAML
printf 'main_log_level: "warn"\n' > "$dir/config.yaml"
target/release/shotover-proxy --topology-file "$dir/topology.yaml" --config-file "$dir/config.yaml" \
  --worker-cores 1 >"$dir/proxy.log" 2>&1 &
proxy_pid=$!
wait_port "$proxy"

tool() { scripts/kafka tool "$dir/kafka" "$@"; }
# A new topic (called in a subshell, so the name cannot come from a counter).
topic() {
  local name="bench-$(date +%s%N)"
  tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create --topic "$name" \
    --partitions 6 --replication-factor 3 >/dev/null
  echo "$name"
}
# records/s of one producer run (the tool prints a line every 5 s, then the whole run's)
produce() {
  tool org.apache.kafka.tools.ProducerPerformance --topic "$2" --num-records "$RECORDS" --record-size 1024 \
    --throughput -1 --command-property "bootstrap.servers=$1" "acks=$3" 2>/dev/null |
    awk '/records sent/ {sub(/ records\/sec.*/, ""); sub(/.*, /, ""); rate = $0} END {print rate}'
}
# records/s of one consumer run (fetch.nMsg.sec: without the group's join time)
consume() {
  tool org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$1" --topic "$2" \
    --num-records "$RECORDS" --timeout 120000 2>/dev/null | awk -F', ' 'NF >= 10 && $1 ~ /^[0-9]/ {print $10}'
}

# Warm-up: the brokers' JIT, both paths.
warm=$(topic)
produce "$bootstrap" "$warm" 1 >/dev/null
produce "127.0.0.1:$proxy" "$warm" 1 >/dev/null

declare -A ratios
for rep in $(seq 1 "$REPS"); do
  for acks in 1 all; do
    d_topic=$(topic); p_topic=$(topic)
    d=$(produce "$bootstrap" "$d_topic" "$acks")
    p=$(produce "127.0.0.1:$proxy" "$p_topic" "$acks")
    r=$(python3 -c "print('%.3f' % ($p / $d))")
    ratios["produce acks=$acks"]+="$r "
    echo "rep $rep produce acks=$acks: direct $d records/s, proxy $p records/s, ratio $r"
  done
  d=$(consume "$bootstrap" "$d_topic")
  p=$(consume "127.0.0.1:$proxy" "$p_topic")
  r=$(python3 -c "print('%.3f' % ($p / $d))")
  ratios["consume"]+="$r "
  echo "rep $rep consume: direct $d records/s, proxy $p records/s, ratio $r"
done
for kind in "produce acks=1" "produce acks=all" "consume"; do
  python3 -c "import math,sys; r=[float(x) for x in sys.argv[2:]]; print('%s: geometric mean ratio %.2f over %d' % (sys.argv[1], math.exp(sum(map(math.log, r))/len(r)), len(r)))" \
    "$kind" ${ratios[$kind]}
done
