#!/usr/bin/env bash
# Regenerates crates/protocols/src/kafka/captured.rs from real clients.
#
# A fake broker (fake_broker.py, 127.0.0.1 only) records every message whole; kafka-python
# and confluent-kafka (librdkafka) producers and consumers talk to it, once with a broker
# advertising current versions and once with one advertising older (non-flexible) ones.
# Needs: python3 -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install kafka-python confluent-kafka
# The recorded timestamps and CRCs change each run, so expect a diff in captured.rs.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-/tmp/kvenv/bin/python}
rm -rf captures && mkdir captures
run() { # name port max_api_versions mode client-script args...
    local name=$1 port=$2 maxv=$3 mode=$4; shift 4
    timeout 40 "$PY" fake_broker.py "$port" "captures/$name.jsonl" "$maxv" "$mode" & local broker=$!
    sleep 1
    while [ $# -gt 0 ]; do timeout 20 "$PY" $1 "$port" $2 || true; shift 2; done
    sleep 1
    kill "$broker" 2>/dev/null || true
    wait "$broker" 2>/dev/null || true
}
run kp1 19092 3 current kp_producer.py 1 kp_producer.py 0
run kp2 19093 2 legacy kp_producer.py 1 kp_producer.py 0
run ck1 19094 3 current ck_producer.py 1 ck_producer.py 0
run ck2 19095 2 legacy ck_producer.py all
run kc 19098 3 current kp_consumer.py group kp_consumer.py assign
run cc 19097 3 current ck_consumer.py group ck_consumer.py assign
python3 gen_captured.py
rustfmt --edition 2021 ../../src/kafka/captured.rs
