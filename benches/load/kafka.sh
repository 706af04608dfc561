#!/usr/bin/env bash
# Kafka producer throughput, direct to one Apache Kafka 4 broker (scripts/kafka) and through
# the proxy (KafkaSinkSingle), in one run; prints records/s and the ratio proxy/direct.
#
#   benches/load/kafka.sh [RECORDS] [ACKS]     (defaults: 200000 records of 1 KiB, acks=1)
#
# The producer is confluent-kafka (librdkafka) from the venv of scripts/install-backends,
# one process, batching as it does by default (linger.ms=5). The proxy runs one worker core.
# The broker runs with the full JIT (no KAFKA_JVM_OPTS) and is warmed by a first produce that
# is not counted.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/load/common.sh

records=${1:-200000}
acks=${2:-1}
python=${SHOTOVER_BACKENDS_DIR:-/opt/shotover-backends}/venv/bin/python
dir=$(mktemp -d /tmp/kafka-bench.XXXXXX)
cleanup() {
  [ -n "${proxy_pid:-}" ] && kill "$proxy_pid" 2>/dev/null || true
  scripts/kafka stop "$dir/kafka" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

build_release
proxy=$(free_port)
broker=$(scripts/kafka start "$dir/kafka" --brokers 1 | head -1)
broker=${broker##*:}
cat > "$dir/topology.yaml" <<YAML
sources:
  - Kafka:
      listen_addr: "127.0.0.1:$proxy"
      chain:
        - KafkaSinkSingle:
            destination_port: $broker
YAML
printf 'main_log_level: "warn"\n' > "$dir/config.yaml"
target/release/shotover-proxy --topology-file "$dir/topology.yaml" --config-file "$dir/config.yaml" \
  --worker-cores 0 >"$dir/proxy.log" 2>&1 &
proxy_pid=$!
wait_port "$proxy"

produce() {
  "$python" - "$1" "$records" "$acks" <<'PY'
import sys, time, uuid
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
bootstrap, n, acks = sys.argv[1], int(sys.argv[2]), sys.argv[3]
topic = "bench-" + uuid.uuid4().hex[:8]
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
    f.result(30)
p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5, "queue.buffering.max.messages": 1000000})
value = b"x" * 1024
errors = []
start = time.time()
for i in range(n):
    while True:
        try:
            p.produce(topic, value, on_delivery=lambda e, m: errors.append(e) if e else None)
            break
        except BufferError:
            p.poll(0.01)
left = p.flush(120)
elapsed = time.time() - start
print("%d %.3f %d %d" % (n / elapsed, elapsed, len(errors), left))
PY
}

records_wanted=$records
records=20000
produce "127.0.0.1:$broker" >/dev/null  # warm-up
records=$records_wanted
direct=$(produce "127.0.0.1:$broker")
through=$(produce "127.0.0.1:$proxy")
read -r d_rate d_secs d_err d_left <<<"$direct"
read -r p_rate p_secs p_err p_left <<<"$through"
echo "records=$records size=1KiB acks=$acks"
echo "direct:        $d_rate records/s ($d_secs s, errors $d_err, unsent $d_left)"
echo "through proxy: $p_rate records/s ($p_secs s, errors $p_err, unsent $p_left)"
python3 -c "print('ratio proxy/direct: %.2f' % ($p_rate / $d_rate))"
