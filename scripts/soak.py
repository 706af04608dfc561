"""The soak of scripts/soak (see its header): mixed Valkey, CQL and Kafka traffic through one
Shotover for N minutes, with a hot reload and a restart of each server, sampling the proxy's
RSS, file descriptors and upstream connections every 10 s."""

import argparse
import datetime
import os
import socket
import struct
import subprocess
import threading
import time
import uuid
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/shotover-proxy")
SAMPLE_EVERY = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


class Servers:
    """valkey-server, Cassandra 2.1 and Kafka 4, each restartable on the same data."""

    def __init__(self, out):
        self.out = out
        self.valkey_port = free_port()
        self.valkey_dir = os.path.join(out, "valkey")
        os.makedirs(self.valkey_dir, exist_ok=True)
        self.start_valkey()
        self.cql_dir = os.path.join(out, "cassandra")
        self.cql_ports = [free_port(), free_port(), free_port()]
        self.start_cassandra()
        self.kafka_dir = os.path.join(out, "kafka")
        subprocess.run([f"{ROOT}/scripts/kafka", "start", self.kafka_dir, "--brokers", "1"], check=True,
                       stdout=subprocess.DEVNULL)
        ports = open(os.path.join(self.kafka_dir, "ports")).read().split()
        self.kafka_port = int(ports[ports.index("plaintext") + 1])

    def start_valkey(self):
        subprocess.run(["valkey-server", "--port", str(self.valkey_port), "--bind", "127.0.0.1", "--daemonize", "yes",
                        "--dir", self.valkey_dir, "--appendonly", "yes", "--save", "",
                        "--pidfile", os.path.join(self.valkey_dir, "valkey.pid"),
                        "--logfile", os.path.join(self.valkey_dir, "valkey.log")], check=True)
        wait_port(self.valkey_port)

    def restart_valkey(self):
        pid = int(open(os.path.join(self.valkey_dir, "valkey.pid")).read())
        os.kill(pid, 9)
        time.sleep(1)
        self.start_valkey()

    def start_cassandra(self):
        port, rpc, storage = (str(p) for p in self.cql_ports)
        subprocess.run([f"{ROOT}/scripts/cassandra", "start", self.cql_dir, "127.0.0.1", "--port", port,
                        "--rpc-port", rpc, "--storage-port", storage], check=True, stdout=subprocess.DEVNULL)

    def restart_cassandra(self):
        # SIGTERM: Cassandra drains, so writes it acknowledged are in its commit log. (A
        # SIGKILL loses up to commitlog_sync_period of them: 2.1 replays only up to the last
        # sync marker. That is Cassandra's contract, and it would hide the proxy's.)
        pid = int(open(os.path.join(self.cql_dir, "node-1/cassandra.pid")).read())
        os.kill(pid, 15)
        deadline = time.time() + 60
        while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
            if open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z"):
                break
            time.sleep(0.2)
        subprocess.run([f"{ROOT}/scripts/cassandra", "stop", self.cql_dir], check=True)
        self.start_cassandra()

    def restart_kafka(self):
        subprocess.run([f"{ROOT}/scripts/kafka", "stop-broker", self.kafka_dir, "1"], check=True)
        time.sleep(1)
        subprocess.run([f"{ROOT}/scripts/kafka", "start-broker", self.kafka_dir, "1"], check=True,
                       stdout=subprocess.DEVNULL)

    def stop(self):
        try:
            os.kill(int(open(os.path.join(self.valkey_dir, "valkey.pid")).read()), 15)
        except (OSError, ValueError):
            pass
        subprocess.run([f"{ROOT}/scripts/cassandra", "stop", self.cql_dir])
        subprocess.run([f"{ROOT}/scripts/kafka", "stop", self.kafka_dir])


class Proxy:
    """Shotover with three sources; `reload` starts a new one that takes the listeners over."""

    def __init__(self, out, servers):
        self.out = out
        self.ports = {"valkey": free_port(), "cql": free_port(), "kafka": free_port()}
        self.socket = os.path.join(out, "hotreload.sock")
        with open(os.path.join(out, "topology.yaml"), "w") as f:
            f.write(f"""sources:
  - Valkey:
      listen_addr: "127.0.0.1:{self.ports['valkey']}"
      chain:
        - ValkeySinkSingle:
            remote_address: "127.0.0.1:{servers.valkey_port}"
  - Cassandra:
      listen_addr: "127.0.0.1:{self.ports['cql']}"
      chain:
        - CassandraSinkSingle:
            remote_address: "127.0.0.1:{servers.cql_ports[0]}"
            read_timeout: 30
  - Kafka:
      listen_addr: "127.0.0.1:{self.ports['kafka']}"
      chain:
        - KafkaSinkSingle:
            destination_port: {servers.kafka_port}
            read_timeout: 30
""")
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write('main_log_level: "info"\n')
        self.generation = 0
        self.procs = []
        self.start()

    def start(self):
        self.generation += 1
        log = open(os.path.join(self.out, f"shotover-{self.generation}.log"), "w")
        proc = subprocess.Popen([BIN, "--topology-file", os.path.join(self.out, "topology.yaml"),
                                 "--config-file", os.path.join(self.out, "config.yaml"),
                                 "--worker-cores", "1", "--hotreload-socket", self.socket,
                                 "--hotreload-gradual-shutdown-seconds", "5"], stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        wait_port(self.ports["kafka"])

    def pid(self):
        return self.procs[-1].pid

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)

    def panics(self):
        found = []
        for g in range(1, self.generation + 1):
            text = open(os.path.join(self.out, f"shotover-{g}.log")).read()
            found += [line for line in text.splitlines() if "panicked" in line]
        return found


def valkey_value(t, i):
    return f"value-{t}-{i}-" + "v" * (i % 64)


class Load:
    def __init__(self, proxy, stop):
        self.proxy, self.stop = proxy, stop
        self.lock = threading.Lock()
        # Valkey: per client, one byte per request number, 1 once its SET was acknowledged
        # (the value is derived from the key, so nothing else needs keeping).
        self.acked = {"valkey": [bytearray() for _ in range(4)], "cql": set(), "kafka": set()}
        self.counts = {}

    def count(self, what):
        with self.lock:
            self.counts[what] = self.counts.get(what, 0) + 1

    def valkey(self, t):
        i, conn = 0, None
        while not self.stop.is_set():
            try:
                if conn is None or i % 500 == 0:
                    if conn:
                        conn.close()
                        self.count("valkey reconnects")
                    conn = socket.create_connection(("127.0.0.1", self.proxy.ports["valkey"]), timeout=30)
                    reader = conn.makefile("rb")
                batch, numbers = [], []
                for _ in range(8):
                    i += 1
                    key, value = f"soak:{t}:{i}", valkey_value(t, i)
                    batch.append(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(value)}\r\n{value}\r\n")
                    batch.append(f"*2\r\n$3\r\nGET\r\n${len(key)}\r\n{key}\r\n")
                    numbers.append(i)
                conn.sendall("".join(batch).encode())
                acked = self.acked["valkey"][t]
                for n in numbers:
                    if reader.readline() == b"+OK\r\n":
                        acked.extend(b"\0" * (n + 1 - len(acked)))
                        acked[n] = 1
                        self.count("valkey ok")
                    else:
                        self.count("valkey errors")
                    line = reader.readline()
                    if line.startswith(b"$") and not line.startswith(b"$-"):
                        got = reader.read(int(line[1:]) + 2)[:-2].decode()
                        if got != valkey_value(t, n):
                            self.count("valkey wrong values")
                time.sleep(0.01)
            except OSError:
                self.count("valkey connection failures")
                conn = None
                time.sleep(0.2)

    def cql(self, t):
        from cassandra.cluster import Cluster
        from cassandra.policies import WhiteListRoundRobinPolicy
        port = self.proxy.ports["cql"]
        cluster = None
        i, failures = 0, 0
        while not self.stop.is_set():
            try:
                if cluster is None:
                    cluster = Cluster(["127.0.0.1"], port=port, protocol_version=3, connect_timeout=20,
                                      load_balancing_policy=WhiteListRoundRobinPolicy(["127.0.0.1"]))
                    session = cluster.connect()
                    insert = session.prepare("INSERT INTO soak.t (id, v) VALUES (?, ?)")
                    select = session.prepare("SELECT v FROM soak.t WHERE id = ?")
                i += 1
                key = f"{t}:{i}"
                session.execute(insert, (key, "x" * 100), timeout=30)
                with self.lock:
                    self.acked["cql"].add(key)
                self.count("cql writes ok")
                if session.execute(select, (key,), timeout=30).one() is None:
                    self.count("cql reads missing")
                else:
                    self.count("cql reads ok")
                failures = 0
            except Exception:
                self.count("cql errors")
                failures += 1
                time.sleep(0.5)
                if cluster is not None and failures >= 10:
                    # The driver reconnects by itself; a session that keeps failing starts over.
                    cluster.shutdown()
                    cluster, failures = None, 0

    def cql_churn(self):
        from cassandra.cluster import Cluster
        while not self.stop.wait(20):
            try:
                cluster = Cluster(["127.0.0.1"], port=self.proxy.ports["cql"], protocol_version=3, connect_timeout=20)
                cluster.connect().execute("SELECT release_version FROM system.local")
                cluster.shutdown()
                self.count("cql sessions opened and closed")
            except Exception:
                self.count("cql session failures")

    def kafka_produce(self):
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": f"127.0.0.1:{self.proxy.ports['kafka']}", "acks": "all",
                      "message.timeout.ms": 60000, "linger.ms": 5})
        i = 0

        def delivered(err, msg):
            if err is None:
                with self.lock:
                    self.acked["kafka"].add(msg.value().decode())
                self.count("kafka produced")
            else:
                self.count(f"kafka produce errors: {err.str()}")

        while not self.stop.is_set():
            i += 1
            try:
                p.produce("soak", value=f"m{i}", on_delivery=delivered)
            except BufferError:
                pass
            p.poll(0.002)
        p.flush(60)

    def kafka_consume(self):
        from confluent_kafka import Consumer
        c = Consumer({"bootstrap.servers": f"127.0.0.1:{self.proxy.ports['kafka']}", "group.id": "soak",
                      "auto.offset.reset": "earliest"})
        c.subscribe(["soak"])
        while not self.stop.is_set():
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                self.count("kafka consumed")
        c.close()


def upstream_connections(servers):
    ports = {servers.valkey_port, servers.cql_ports[0], servers.kafka_port}
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[2].split(":")[1], 16) in ports:
                n += 1
    return n


def memory_kib(pid):
    """VmRSS, RssAnon and RssFile of `pid` in KiB: the heap and stacks are anonymous; the
    binary's code and read-only data are file-backed pages, mapped the first time a code path
    runs (a restart's error handling, say) and shared with every process of the same binary."""
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0), fields.get("RssFile", 0)


def save_smaps(out, pid, label):
    """The proxy's memory map with each mapping's resident and anonymous size: diffing two of
    them shows where RSS grew (an allocator arena, a thread's stack, the binary's pages)."""
    try:
        with open(f"/proc/{pid}/smaps") as src, open(os.path.join(out, f"smaps-{label}.txt"), "w") as dst:
            dst.write(src.read())
    except OSError:
        pass


def verify(servers, load):
    """Reads every acknowledged write back straight from the servers; returns what is missing."""
    missing = {}
    conn = socket.create_connection(("127.0.0.1", servers.valkey_port))
    reader = conn.makefile("rb")
    lost = 0
    for t, acked in enumerate(load.acked["valkey"]):
        numbers = [n for n, ok in enumerate(acked) if ok]
        for at in range(0, len(numbers), 1000):
            chunk = numbers[at:at + 1000]
            keys = [f"soak:{t}:{n}" for n in chunk]
            conn.sendall((f"*{len(keys) + 1}\r\n$4\r\nMGET\r\n"
                          + "".join(f"${len(k)}\r\n{k}\r\n" for k in keys)).encode())
            reader.readline()
            for n in chunk:
                line = reader.readline()
                got = reader.read(int(line[1:]) + 2)[:-2].decode() if not line.startswith(b"$-") else None
                lost += got != valkey_value(t, n)
    missing["valkey"] = lost
    from cassandra.cluster import Cluster
    cluster = Cluster(["127.0.0.1"], port=servers.cql_ports[0], protocol_version=3, connect_timeout=20)
    rows = {r.id for r in cluster.connect().execute("SELECT id FROM soak.t", timeout=120)}
    cluster.shutdown()
    missing["cql"] = len(load.acked["cql"] - rows)
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": f"127.0.0.1:{servers.kafka_port}", "group.id": f"verify-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    c.subscribe(["soak"])
    seen, idle = set(), time.time()
    while time.time() - idle < 15:
        msg = c.poll(1)
        if msg is not None and msg.error() is None:
            seen.add(msg.value().decode())
            idle = time.time()
    c.close()
    missing["kafka"] = len(load.acked["kafka"] - seen)
    return missing


def png(path, samples, events, width=900, height=360):
    """A line chart of RSS (MiB) over time (min), events as vertical lines; no text (the
    summary gives the scale)."""
    px = [[(255, 255, 255)] * width for _ in range(height)]
    m = 30
    t_max = max(s["t"] for s in samples) or 1
    r = [s["rss_kib"] / 1024 for s in samples]
    lo, hi = min(r) - 0.5, max(r) + 0.5

    def xy(t, v):
        return m + int((width - 2 * m) * t / t_max), height - m - int((height - 2 * m) * (v - lo) / (hi - lo))

    for y in range(m, height - m + 1):
        px[y][m] = (0, 0, 0)
    for x in range(m, width - m + 1):
        px[height - m][x] = (0, 0, 0)
    for minute in range(0, int(t_max // 60) + 1):
        x, _ = xy(minute * 60, lo)
        for y in range(height - m, height - m + 6):
            px[y][x] = (0, 0, 0)
    for mib in range(int(lo) + 1, int(hi) + 1):
        _, y = xy(0, mib)
        for x in range(m - 6, width - m):
            px[y][x] = (0, 0, 0) if x < m else (230, 230, 230)
    for t, _ in events:
        x, _ = xy(t, lo)
        for y in range(m, height - m):
            px[y][x] = (200, 60, 60)
    for a, b in zip(samples, samples[1:]):
        (x0, y0), (x1, y1) = xy(a["t"], a["rss_kib"] / 1024), xy(b["t"], b["rss_kib"] / 1024)
        for k in range(max(abs(x1 - x0), abs(y1 - y0)) + 1):
            f = k / max(abs(x1 - x0), abs(y1 - y0), 1)
            x, y = round(x0 + (x1 - x0) * f), round(y0 + (y1 - y0) * f)
            for dy in (-1, 0, 1):
                if 0 <= y + dy < height:
                    px[y + dy][x] = (30, 90, 200)
    raw = b"".join(b"\0" + bytes(c for p in row for c in p) for row in px)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/soak", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    print(f"soak: {args.minutes} min, output in {out}", flush=True)
    servers = Servers(out)
    proxy = None
    try:
        from cassandra.cluster import Cluster
        cluster = Cluster(["127.0.0.1"], port=servers.cql_ports[0], protocol_version=3, connect_timeout=20)
        s = cluster.connect()
        s.execute("CREATE KEYSPACE IF NOT EXISTS soak WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
        s.execute("CREATE TABLE IF NOT EXISTS soak.t (id text PRIMARY KEY, v text)")
        cluster.shutdown()
        subprocess.run([f"{ROOT}/scripts/kafka", "tool", servers.kafka_dir, "org.apache.kafka.tools.TopicCommand",
                        "--bootstrap-server", f"127.0.0.1:{servers.kafka_port}", "--create", "--topic", "soak",
                        "--partitions", "3", "--replication-factor", "1"], check=True, stdout=subprocess.DEVNULL)
        proxy = Proxy(out, servers)
        stop = threading.Event()
        load = Load(proxy, stop)
        workers = [threading.Thread(target=load.valkey, args=(t,)) for t in range(4)]
        workers += [threading.Thread(target=load.cql, args=(t,)) for t in range(2)]
        workers += [threading.Thread(target=f) for f in (load.cql_churn, load.kafka_produce, load.kafka_consume)]
        for w in workers:
            w.start()
        total = args.minutes * 60
        plan = [(0.25, "hot reload", proxy.start), (0.4, "Valkey restart", servers.restart_valkey),
                (0.55, "Cassandra restart", servers.restart_cassandra), (0.7, "Kafka restart", servers.restart_kafka)]
        samples, events, start = [], [], time.time()
        csv = open(os.path.join(out, "samples.csv"), "w")
        csv.write("seconds,pid,rss_kib,anon_kib,file_kib,fds,upstream_connections\n")
        next_sample = 0
        while time.time() - start < total:
            t = time.time() - start
            if plan and t >= plan[0][0] * total:
                _, name, action = plan.pop(0)
                print(f"  {t:6.0f} s: {name}", flush=True)
                save_smaps(out, proxy.pid(), f"{t:.0f}s-before-{name.replace(' ', '-')}")
                events.append((t, name))
                action()
            if t >= next_sample:
                pid = proxy.pid()
                rss, anon, file = memory_kib(pid)
                sample = {"t": t, "pid": pid, "rss_kib": rss, "anon_kib": anon, "file_kib": file,
                          "fds": len(os.listdir(f"/proc/{pid}/fd")), "upstream": upstream_connections(servers)}
                samples.append(sample)
                csv.write(f"{t:.0f},{pid},{rss},{anon},{file},{sample['fds']},{sample['upstream']}\n")
                csv.flush()
                print(f"  {t:6.0f} s: RSS {sample['rss_kib']} KiB, {sample['fds']} fds, "
                      f"{sample['upstream']} upstream connections", flush=True)
                next_sample += SAMPLE_EVERY
            time.sleep(0.2)
        save_smaps(out, proxy.pid(), "end")
        stop.set()
        for w in workers:
            w.join(120)
        missing = verify(servers, load)
        png(os.path.join(out, "rss.png"), samples, events)
        # Growth after warm-up, for the proxy that ran last: from its third sample (20 s
        # after it started) to the end, as a user watching one process would measure it.
        last = [s for s in samples if s["pid"] == proxy.pid()][2:]
        def growth(key):
            return last[-1][key] - last[0][key] if len(last) > 1 else 0

        rss_growth = growth("rss_kib")
        # Each connection is a file descriptor, and clients come back at their own pace after
        # a restart: compare with the first sample after warm-up that had as many upstream
        # connections as the last one, so a leak shows and a reconnecting client does not.
        same = [s for s in last if s["upstream"] == last[-1]["upstream"]] if last else []
        fd_growth = last[-1]["fds"] - same[0]["fds"] if same else 0
        panics = proxy.panics()
        # A restart shorter than message.timeout.ms fails no record of a producer that talks
        # to the broker directly: librdkafka retries what was in flight. Through the proxy too.
        failed_records = sum(n for what, n in load.counts.items() if what.startswith("kafka produce errors"))
        checks = {
            # Too short a run to have two samples after warm-up measures nothing: a failure.
            "RSS growth after warm-up under 1 MiB": len(last) > 1 and rss_growth < 1024,
            "no file descriptor growth after warm-up": len(last) > 1 and fd_growth <= 0,
            "every acknowledged write read back": not any(missing.values()),
            "no Kafka record failed": failed_records == 0,
            "no panic": not panics,
        }
        lines = [f"soak of {args.minutes} min, {datetime.datetime.now().isoformat(timespec='seconds')}",
                 f"events: {', '.join(f'{name} at {t:.0f} s' for t, name in events)}",
                 f"RSS of the last proxy after warm-up: {last[0]['rss_kib'] if last else 0} KiB -> "
                 f"{last[-1]['rss_kib'] if last else 0} KiB ({rss_growth:+} KiB: anonymous {growth('anon_kib'):+}, "
                 f"file-backed {growth('file_kib'):+}); file descriptors {fd_growth:+} "
                 f"at {last[-1]['upstream'] if last else 0} upstream connections",
                 f"RSS over the run: {min(s['rss_kib'] for s in samples)}-{max(s['rss_kib'] for s in samples)} KiB",
                 f"acknowledged: valkey {sum(sum(a) for a in load.acked['valkey'])}, cql {len(load.acked['cql'])}, "
                 f"kafka {len(load.acked['kafka'])}; missing: {missing}",
                 f"counts: {dict(sorted(load.counts.items()))}",
                 f"panics: {len(panics)}"]
        lines += [f"{'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks.items()]
        open(os.path.join(out, "summary.txt"), "w").write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0 if all(checks.values()) else 1
    finally:
        if proxy:
            proxy.stop()
        servers.stop()


if __name__ == "__main__":
    raise SystemExit(main())
