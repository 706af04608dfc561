//! Cassandra through the proxy: real Cassandra 2.1 (CQL v3) behind CassandraSinkSingle,
//! driven by the Python cassandra-driver and cqlsh.

use shotover_integration_tests::backends::{backends_dir, run_python, Cassandra};
use shotover_integration_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

fn workload() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cql_workload.py").display().to_string()
}

/// A topology with one Cassandra source on `port` and `chain` (items at 8 spaces).
pub fn cassandra_topology(port: u16, chain: &str) -> String {
    format!("---\nsources:\n  - Cassandra:\n      name: \"cql\"\n      listen_addr: \"127.0.0.1:{port}\"\n      chain:\n{chain}")
}

pub fn cassandra_sink(address: &str) -> String {
    format!("        - CassandraSinkSingle:\n            remote_address: \"{address}\"\n            connect_timeout_ms: 3000\n")
}

fn run_workload(port: u16, version: &str, compression: &str, direct_port: Option<u16>) -> String {
    let script = std::fs::read_to_string(workload()).unwrap();
    let port = port.to_string();
    let direct = direct_port.map(|p| p.to_string());
    let mut args = vec!["127.0.0.1", port.as_str(), version, compression];
    if let Some(d) = &direct {
        args.push(d);
    }
    run_python(&script, &args).expect_success()
}

#[test]
fn cql_v3_through_the_proxy_with_real_cassandra() {
    let node = Cassandra::start_single();
    let port = free_port();
    let chain = format!("        - QueryCounter:\n            name: \"cql\"\n{}", cassandra_sink(node.address()));
    let shotover = Shotover::start(&cassandra_topology(port, &chain), port);

    // Every native type and collections, prepared statements, a batch, paging through
    // 10 000 rows, and a schema change made on the node reaching the client as an event.
    let out = run_workload(port, "3", "none", Some(node.port));
    for line in ["types_roundtrip=True", "prepared_select=batch10005", "paged_rows=10010", "schema_event=True", "done"]
    {
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
    }
    // LZ4 and Snappy frame compression, negotiated by the driver through the proxy.
    for compression in ["lz4", "snappy"] {
        let out = run_workload(port, "3", compression, None);
        assert!(out.contains("paged_rows=10010") && out.contains("types_roundtrip=True"), "{compression}:\n{out}");
    }
    let metrics = shotover.metrics();
    assert!(metric_value(&metrics, "query_count{name=\"cql\",query=\"SELECT\"}") > 0.0, "{metrics}");
    assert!(metric_value(&metrics, "query_count{name=\"cql\",query=\"EXECUTE\"}") >= 10000.0, "{metrics}");
    assert!(metric_value(&metrics, "query_count{name=\"cql\",query=\"BATCH\"}") >= 3.0, "{metrics}");
    let sent = "shotover_source_to_sink_latency_seconds_count{sink=\"CassandraSinkSingle\"}";
    assert!(metric_value(&metrics, sent) >= 1.0, "{metrics}");

    // cqlsh, the shell users reach for first.
    let cqlsh = backends_dir().join("venv/bin/cqlsh").display().to_string();
    let (status, out) = run_tool(
        &cqlsh,
        &["127.0.0.1", &port.to_string(), "--protocol-version=3", "-e", "SELECT v FROM ks_3_plain.kv WHERE k = 42"],
    );
    assert!(status.success() && out.contains("v42"), "{out}");

    // Bytes that are not CQL: a protocol error, that connection closes, a log line names it,
    // and the proxy keeps serving everyone else.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(&[0x04, 0x00, 0x00, 0x07, 0x42, 0, 0, 0, 0]).unwrap();
    let error = read_cql_frame(&mut raw);
    assert_eq!((error[0], error[4]), (0x84, 0x00), "an ERROR frame: {error:?}");
    assert_eq!(&error[9..13], &[0, 0, 0, 0x0a], "code ProtocolError");
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0, "the connection is closed");
    assert!(shotover.wait_for_log("malformed request, closing the connection", Duration::from_secs(5)));
    let out = run_python(
        "import sys\nfrom cassandra.cluster import Cluster\nc = Cluster(['127.0.0.1'], port=int(sys.argv[1]), protocol_version=3)\nprint(c.connect().execute('SELECT v FROM ks_3_plain.kv WHERE k = 7').one().v)",
        &[&port.to_string()],
    )
    .expect_success();
    assert_eq!(out.trim(), "v7");
}

#[test]
fn query_type_filter_denies_cql_writes() {
    let node = Cassandra::start_single();
    let port = free_port();
    let chain =
        format!("        - QueryTypeFilter:\n            DenyList: [Write]\n{}", cassandra_sink(node.address()));
    let _shotover = Shotover::start(&cassandra_topology(port, &chain), port);
    let script = r#"
import sys
from cassandra.cluster import Cluster
direct = Cluster(['127.0.0.1'], port=int(sys.argv[2]), protocol_version=3).connect()
direct.execute("CREATE KEYSPACE f WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
direct.execute("CREATE TABLE f.t (k int PRIMARY KEY, v int)")
direct.execute("INSERT INTO f.t (k, v) VALUES (1, 1)")
s = Cluster(['127.0.0.1'], port=int(sys.argv[1]), protocol_version=3).connect()
print("read=%d" % s.execute("SELECT v FROM f.t WHERE k = 1").one().v)
for name, stmt in [("insert", "INSERT INTO f.t (k, v) VALUES (2, 2)"), ("prepared", None)]:
    try:
        if stmt is None:
            p = s.prepare("INSERT INTO f.t (k, v) VALUES (?, ?)")
            s.execute(p, (3, 3))
        else:
            s.execute(stmt)
        print("%s=allowed" % name)
    except Exception as e:
        print("%s=%s" % (name, type(e).__name__ + ": " + str(e)))
print("rows=%d" % len(list(direct.execute("SELECT k FROM f.t"))))
"#;
    let out = run_python(script, &[&port.to_string(), &node.port.to_string()]).expect_success();
    assert!(out.contains("read=1"), "{out}");
    let insert = out.lines().find(|l| l.starts_with("insert=")).unwrap();
    assert!(insert.contains("filtered out by shotover"), "{out}");
    let prepared = out.lines().find(|l| l.starts_with("prepared=")).unwrap();
    assert!(prepared.contains("filtered out by shotover"), "{out}");
    assert!(out.contains("rows=1"), "nothing was written:\n{out}");
}

/// Sends an OPTIONS request (v3) on a new connection and returns the answer's opcode and,
/// for an ERROR, its code.
fn options_answer(port: u16) -> (u8, Option<u32>) {
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(&[0x03, 0, 0, 1, 0x05, 0, 0, 0, 0]).unwrap();
    let frame = read_cql_frame(&mut raw);
    let code = (frame[4] == 0).then(|| u32::from_be_bytes([frame[9], frame[10], frame[11], frame[12]]));
    (frame[4], code)
}

#[test]
fn cassandra_down_at_start_then_killed_mid_run() {
    let node = Cassandra::start_single();
    node.kill();
    let port = free_port();
    let shotover = Shotover::start(&cassandra_topology(port, &cassandra_sink(node.address())), port);
    // Nothing to connect to: Overloaded, so the client retries later.
    assert_eq!(options_answer(port), (0x00, Some(0x1001)), "{}", shotover.output());
    let failed = "failed_requests{chain=\"cql\",transform=\"CassandraSinkSingle\"}";
    assert!(metric_value(&shotover.metrics(), failed) >= 1.0);

    node.start_again();
    assert_eq!(options_answer(port).0, 0x06, "SUPPORTED once the node is up");

    // A driver working through the proxy while the node dies and comes back: errors while
    // it is down, then it recovers on its own.
    let script = r#"
import sys, time, logging
logging.basicConfig(level=logging.CRITICAL)
from cassandra.cluster import Cluster
from cassandra.policies import ConstantReconnectionPolicy
port = int(sys.argv[1])
c = Cluster(['127.0.0.1'], port=port, protocol_version=3, reconnection_policy=ConstantReconnectionPolicy(0.5))
s = c.connect()
s.execute("CREATE KEYSPACE IF NOT EXISTS r WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
s.execute("CREATE TABLE IF NOT EXISTS r.t (k int PRIMARY KEY)")
s.execute("INSERT INTO r.t (k) VALUES (1)")
print("before=ok", flush=True)
open(sys.argv[2], "w").close()
errors, recovered = 0, False
deadline = time.time() + 90
while time.time() < deadline:
    try:
        s.execute("SELECT k FROM r.t WHERE k = 1", timeout=5)
        if errors:
            recovered = True
            break
    except Exception as e:
        errors += 1
    time.sleep(0.2)
print("errors_seen=%s" % (errors > 0))
print("recovered=%s" % recovered)
"#;
    let marker = shotover.dir.path("driver-ready");
    let port_arg = port.to_string();
    let marker_arg = marker.display().to_string();
    let driver = std::thread::spawn(move || run_python(script, &[&port_arg, &marker_arg]));
    assert!(wait_until(Duration::from_secs(60), || marker.exists()), "the driver did not connect");
    node.kill();
    std::thread::sleep(Duration::from_secs(2));
    node.start_again();
    let out = driver.join().unwrap().expect_success();
    assert!(out.contains("before=ok") && out.contains("errors_seen=True") && out.contains("recovered=True"), "{out}");
}

/// The guide's sidecar layout on a real 3-node Cassandra 2.1 cluster: one proxy in front of
/// each node, on the node's own IP and one shared port. The driver learns the ring and the
/// peers through the proxy it bootstraps from, then opens pools to every node's proxy.
#[test]
fn sidecar_proxies_in_front_of_a_three_node_cluster() {
    let cluster = Cassandra::start_three_nodes();
    let port = free_port();
    let proxies: Vec<Shotover> = cluster
        .nodes
        .iter()
        .map(|node| {
            let ip = node.rsplit_once(':').map(|(ip, _)| ip).unwrap();
            let topology = format!(
                "---\nsources:\n  - Cassandra:\n      name: \"cql\"\n      listen_addr: \"{ip}:{port}\"\n      chain:\n        - QueryCounter:\n            name: \"sidecar\"\n{}",
                cassandra_sink(node)
            );
            Shotover::builder(&topology).start().unwrap()
        })
        .collect();
    for ip in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        assert!(wait_until(Duration::from_secs(15), || TcpStream::connect((ip, port)).is_ok()), "proxy on {ip}");
    }
    let script = r#"
import sys, time, logging
logging.basicConfig(level=logging.CRITICAL)
from cassandra.cluster import Cluster
port = int(sys.argv[1])
c = Cluster(['127.0.0.1'], port=port, protocol_version=3)
s = c.connect()
s.execute("CREATE KEYSPACE IF NOT EXISTS side WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}")
s.execute("CREATE TABLE IF NOT EXISTS side.t (k int PRIMARY KEY, v int)")
deadline = time.time() + 30
while time.time() < deadline and not all(h.is_up for h in c.metadata.all_hosts()):
    time.sleep(0.2)
print("hosts=%s" % sorted(str(h.endpoint) for h in c.metadata.all_hosts()))
print("token_ring=%d" % len(c.metadata.token_map.ring))
from cassandra import ConsistencyLevel
from cassandra.query import SimpleStatement
insert = SimpleStatement("INSERT INTO side.t (k, v) VALUES (%s, %s)", consistency_level=ConsistencyLevel.ALL)
for i in range(300):
    s.execute(insert, (i, i))
read = SimpleStatement("SELECT count(*) FROM side.t", consistency_level=ConsistencyLevel.ALL)
print("count=%d" % s.execute(read).one()[0])
"#;
    let out = run_python(script, &[&port.to_string()]).expect_success();
    let hosts = format!("hosts=['127.0.0.1:{port}', '127.0.0.2:{port}', '127.0.0.3:{port}']");
    assert!(out.contains(&hosts), "the driver reaches every node through its proxy:\n{out}");
    assert!(out.contains("count=300"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("token_ring=") && l != "token_ring=0"), "{out}");
    // Requests were spread over the three proxies, not all sent through the first.
    for proxy in &proxies {
        let inserts = metric_value(&proxy.metrics(), "query_count{name=\"sidecar\",query=\"INSERT\"}");
        assert!(inserts > 0.0, "every proxy served inserts:\n{}", proxy.metrics());
    }
}

fn websocket_script() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cql_websocket.py");
    std::fs::read_to_string(path).unwrap()
}

/// A Cassandra source with `transport: WebSocket`, with `tls` (items at 6 spaces) if given.
fn websocket_topology(port: u16, tls: &str, chain: &str) -> String {
    format!(
        "---\nsources:\n  - Cassandra:\n      name: \"cql\"\n      listen_addr: \"127.0.0.1:{port}\"\n      transport: WebSocket\n{tls}      chain:\n{chain}"
    )
}

const WEBSOCKET_RAW: [&str; 14] = [
    "subprotocol=cql",
    "options=SUPPORTED",
    "startup=READY",
    "release_version=2.1.0",
    "two_in_one=True",
    "split=True",
    "cql_error=True",
    "pong=True",
    "whole_frames=True",
    "text_close_code=1003",
    "client_close_code=1000",
    "other_subprotocol=400",
    "plain_http=HTTP/1.1 400 Bad Request",
    "done",
];

#[test]
fn cql_over_websocket_with_real_cassandra() {
    let node = Cassandra::start_single();
    let port = free_port();
    let shotover = Shotover::start(&websocket_topology(port, "", &cassandra_sink(node.address())), port);
    let script = websocket_script();
    // Hand-made frames: the upgrade, message boundaries, ping, and bad input.
    let out = run_python(&script, &["raw", &port.to_string()]).expect_success_with_log(&shotover);
    for line in WEBSOCKET_RAW {
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
    }
    assert!(shotover.wait_for_log("a text WebSocket message", Duration::from_secs(5)), "{}", shotover.output());
    assert!(shotover.wait_for_log("WebSocket upgrade refused", Duration::from_secs(5)), "{}", shotover.output());
    // The real driver, each of its connections carried over a WebSocket by a local bridge:
    // every native type, prepared statements, a batch and paging through 10 000 rows.
    let out = run_python(&script, &["bridge", &port.to_string(), &workload()]).expect_success();
    for line in ["types_roundtrip=True", "prepared_select=batch10005", "paged_rows=10010", "done"] {
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
    }
}

#[test]
fn cql_over_websocket_under_tls() {
    let node = Cassandra::start_single();
    let certs = Certs::generate();
    let port = free_port();
    let tls = format!(
        "      tls:\n        certificate_path: \"{}\"\n        private_key_path: \"{}\"\n",
        certs.path("server.crt"),
        certs.path("server.key")
    );
    let shotover = Shotover::start(&websocket_topology(port, &tls, &cassandra_sink(node.address())), port);
    let out = run_python(&websocket_script(), &["raw", &port.to_string(), &certs.path("ca.crt")])
        .expect_success_with_log(&shotover);
    for line in WEBSOCKET_RAW {
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
    }
}

pub fn v3_query(stream: i16, cql: &str) -> Vec<u8> {
    let mut body = (cql.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(cql.as_bytes());
    body.extend_from_slice(&[0, 1, 0]);
    cql_request(3, stream, 0x07, &body)
}

/// A raw CQL v3 connection through the proxy on `port`, past STARTUP (stream 1).
pub fn v3_session(port: u16) -> TcpStream {
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let startup = [&[0, 1, 0, 11][..], b"CQL_VERSION", &[0, 5], b"3.0.0"].concat();
    raw.write_all(&cql_request(3, 1, 0x01, &startup)).unwrap();
    assert_eq!(read_cql_frame(&mut raw)[4], 0x02, "READY");
    raw
}

#[test]
fn read_timeout_answers_every_waiting_request_then_closes() {
    let node = Cassandra::start_single();
    let port = free_port();
    let sink = format!("{}            read_timeout: 2\n", cassandra_sink(node.address()));
    let shotover = Shotover::start(&cassandra_topology(port, &sink), port);
    let mut raw = v3_session(port);

    // The node stops answering. Two batches wait on it; when the oldest request has waited
    // read_timeout, both get a Server error and the connection closes.
    node.freeze(true);
    raw.write_all(&v3_query(2, "SELECT release_version FROM system.local")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    raw.write_all(&v3_query(3, "SELECT cluster_name FROM system.local")).unwrap();
    let mut answered = Vec::new();
    for _ in 0..2 {
        let frame = read_cql_frame(&mut raw);
        assert_eq!(frame[4], 0x00, "an ERROR frame: {frame:?}");
        assert_eq!(&frame[9..13], &[0, 0, 0, 0], "code Server error");
        answered.push(i16::from_be_bytes([frame[2], frame[3]]));
    }
    answered.sort();
    assert_eq!(answered, vec![2, 3]);
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0, "the connection is closed");
    assert!(shotover.wait_for_log("within the read_timeout", Duration::from_secs(5)), "{}", shotover.output());
    assert_eq!(metric_value(&shotover.metrics(), "shotover_chain_failures_count{chain=\"cql\"}"), 1.0);

    // Once the node answers again, new connections work.
    node.freeze(false);
    assert_eq!(options_answer(port).0, 0x06, "SUPPORTED");
}

#[test]
fn draining_waits_for_answers_the_node_still_owes() {
    let node = Cassandra::start_single();
    let port = free_port();
    let mut shotover = Shotover::start(&cassandra_topology(port, &cassandra_sink(node.address())), port);
    let mut raw = v3_session(port);
    // A query the node is slow to answer (it is frozen), then the proxy is asked to stop.
    node.freeze(true);
    raw.write_all(&v3_query(2, "SELECT release_version FROM system.local")).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    shotover.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    // The client is idle for far longer than the drain's idle wait: the connection stays
    // open, because an answer is still owed.
    std::thread::sleep(Duration::from_millis(1000));
    node.freeze(false);
    let frame = read_cql_frame(&mut raw);
    assert_eq!((frame[2], frame[3], frame[4]), (0, 2, 0x08), "the RESULT for stream 2: {frame:?}");
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0, "then the connection closes");
    let status = shotover.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{}", shotover.output());
}
