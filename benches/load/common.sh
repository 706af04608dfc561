# Helpers shared by the load scripts in this folder (sourced, not run).

# A TCP port that is free right now: a random one of 46000-60999 that binds (above the tests'
# 30000-44999, below Cassandra's and Kafka's 61000-64999, apart from the Valkey cluster scripts'
# 11000-29999). Not the kernel's choice (bind to port 0): with the tests' ports reserved
# (scripts/test), it handed out the same port twice in a row when the first had not been bound
# yet, and a server failed to start.
free_port() {
  python3 -c '
import random, socket
for _ in range(1000):
    port = random.randint(46000, 60999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in 46000-60999")'
}

# Waits until something accepts connections on 127.0.0.1:$1 ($2 seconds at most, default 5).
wait_port() {
  for _ in $(seq $((${2:-5} * 20))); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on $1" >&2; exit 1
}

# Builds the release binary once, quietly unless it fails.
build_release() {
  cargo build --release -p shotover-proxy >/dev/null 2>&1 || cargo build --release -p shotover-proxy
}

# Makes $WORK (on exit every pid in PIDS is killed and $WORK removed) and starts a Valkey on a
# free port, $VALKEY, pinned to CPU $1.
work_and_valkey() {
  WORK=$(mktemp -d)
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
  VALKEY=$(free_port)
  taskset -c "$1" valkey-server --port "$VALKEY" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null &
  PIDS+=($!); wait_port "$VALKEY"
}
