# Helpers shared by the load scripts in this folder (sourced, not run).

# A TCP port that is free right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
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
