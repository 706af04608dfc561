#!/usr/bin/env bash
# Load benchmark for Valkey Cluster: valkey-benchmark --cluster directly against a 6-node
# cluster, beside plain valkey-benchmark through one shotover in hiding mode
# (ValkeySinkCluster), through shotover with TLS on the client side, and against a second,
# TLS-only cluster: directly and through shotover with TLS on both sides; all in one run.
#
#   benches/load/valkey-cluster.sh        # -c 50, -P 1 and 16, 3 repetitions
#
# Run lengths: `valkey-benchmark --cluster` runs one thread per master and notices the end of
# a run only at its 250 ms progress tick, so a short direct run is charged up to 250 ms it did
# not use (measured: 200,000 GETs at -P 16 took 0.25 s, 500,000 took 0.51 s, 700,000 0.76 s).
# Each run therefore lasts seconds: 3 x REQUESTS requests at -P 1 and 40 x REQUESTS at -P 16.
#   SHOTOVER_BIN=/path/to/older/shotover-proxy benches/load/valkey-cluster.sh   # another build
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-100000}
REPS=${REPS:-3}
source benches/load/common.sh
if [ -n "${SHOTOVER_BIN:-}" ]; then BIN=$SHOTOVER_BIN; else build_release; BIN=target/release/shotover-proxy; fi
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/valkey-cluster-stop "$WORK/cluster"
  scripts/valkey-cluster-stop "$WORK/cluster-tls"
  rm -rf "$WORK"
}
trap cleanup EXIT

BASE=${BASE:-17100}
scripts/valkey-cluster "$WORK/cluster" "$BASE" >/dev/null
contacts=$(for i in 0 1 2 3 4 5; do printf '"127.0.0.1:%s",' $((BASE + i)); done); contacts="[${contacts%,}]"

# Certificates for the TLS source.
( cd "$WORK" && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=bench-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign >/dev/null 2>&1
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj /CN=localhost >/dev/null 2>&1
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n' > ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 1 -extfile ext >/dev/null 2>&1 )

BASE_TLS=${BASE_TLS:-17200}
VALKEY_TLS_DIR="$WORK" scripts/valkey-cluster "$WORK/cluster-tls" "$BASE_TLS" >/dev/null
tls_contacts=$(for i in 0 1 2 3 4 5; do printf '"127.0.0.1:%s",' $((BASE_TLS + i)); done); tls_contacts="[${tls_contacts%,}]"

printf 'main_log_level: "warn"\n' > "$WORK/config.yaml"
PLAIN=$(free_port); TLS=$(free_port); TLS_BOTH=$(free_port)
cat > "$WORK/topology.yaml" <<YAML
sources:
  - Valkey:
      name: "plain"
      listen_addr: "127.0.0.1:$PLAIN"
      chain:
        - ValkeySinkCluster:
            first_contact_points: $contacts
  - Valkey:
      name: "tls"
      listen_addr: "127.0.0.1:$TLS"
      tls:
        certificate_path: "$WORK/server.crt"
        private_key_path: "$WORK/server.key"
      chain:
        - ValkeySinkCluster:
            first_contact_points: $contacts
  - Valkey:
      name: "tls-both"
      listen_addr: "127.0.0.1:$TLS_BOTH"
      tls:
        certificate_path: "$WORK/server.crt"
        private_key_path: "$WORK/server.key"
      chain:
        - ValkeySinkCluster:
            first_contact_points: $tls_contacts
            tls:
              certificate_authority_path: "$WORK/ca.crt"
YAML
"$BIN" --config-file "$WORK/config.yaml" --topology-file "$WORK/topology.yaml" --worker-cores 1 >"$WORK/shotover.log" 2>&1 &
PIDS+=($!); wait_port "$PLAIN"; wait_port "$TLS"; wait_port "$TLS_BOTH"

RESULTS="$WORK/results.csv"
for rep in $(seq "$REPS"); do
  for pipeline in 1 16; do
    n=$((REQUESTS * 3)); [ "$pipeline" -gt 1 ] && n=$((REQUESTS * 40))
    run() { # name, args...
      local name=$1; shift
      taskset -c 0 valkey-benchmark "$@" -c "$CLIENTS" -n "$n" -P "$pipeline" -t set,get --csv -q 2>/dev/null \
        | grep '^"' | tail -n +2 | tr -d '"' | while IFS=, read -r test rps _; do echo "$pipeline,$name,$test,$rps" >> "$RESULTS"; done
    }
    run direct-cluster --cluster -p "$BASE"
    run shotover-hiding -p "$PLAIN"
    run shotover-hiding-tls -p "$TLS" --tls --cacert "$WORK/ca.crt"
    run direct-tls-cluster --cluster -p "$BASE_TLS" --tls --cacert "$WORK/ca.crt"
    run shotover-tls-both -p "$TLS_BOTH" --tls --cacert "$WORK/ca.crt"
  done
done
python3 - "$RESULTS" "$CLIENTS" "$REPS" <<'PY'
import csv, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for p, name, test, rps in csv.reader(open(sys.argv[1])):
    runs[(int(p), test, name)].append(float(rps))
names = ["direct-cluster", "shotover-hiding", "shotover-hiding-tls", "direct-tls-cluster", "shotover-tls-both"]
print(f"\nValkey Cluster (3 masters + 3 replicas), valkey-benchmark -c {sys.argv[2]}, median of {sys.argv[3]} runs, requests/s")
print("| -P | test | " + " | ".join(names) + " | hiding / direct | TLS client / plain | TLS both / direct TLS |")
print("|---" * (len(names) + 5) + "|")
for (p, t) in sorted({(p, t) for (p, t, _) in runs}):
    med = {n: statistics.median(runs[(p, t, n)]) for n in names if runs.get((p, t, n))}
    r = lambda a, b: f"{med[a] / med[b]:.2f}" if med.get(a) and med.get(b) else "-"
    print(f"| {p} | {t} | " + " | ".join(f"{med.get(n, 0):,.0f}" for n in names) + f" | {r('shotover-hiding', 'direct-cluster')} | {r('shotover-hiding-tls', 'shotover-hiding')} | {r('shotover-tls-both', 'direct-tls-cluster')} |")
PY
