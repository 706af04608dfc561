//! Fault injection (issue 16): a [`FaultProxy`] between Shotover and each real server
//! delays, stalls, cuts and silences the upstream under load. What must hold:
//! - every request gets its real answer or the protocol's error, and none waits longer than
//!   `read_timeout` where the sink has one (Valkey sinks have none in the user guide: a
//!   stalled Valkey holds its requests as a slow one does, and they are answered when it
//!   comes back);
//! - the proxy recovers once the fault ends;
//! - nothing acknowledged is lost.

use shotover_integration_tests::backends::{shared_ring, SHARED_RING_USER};
use shotover_integration_tests::fault_proxy::{delays_stall_cuts_then_silence, Fault, FaultProxy};
use shotover_integration_tests::kafka_cluster::shared_kafka;
use shotover_integration_tests::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the load's clients saw.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    /// Error replies (the protocol's error for a request the upstream lost).
    errors: u64,
    /// Connections the proxy closed under a client.
    closed: u64,
    /// Acknowledged writes: key, value, and when the acknowledgement came.
    acked: Vec<(String, String, Instant)>,
}

/// `clients` threads SET unique keys through `port` until `stop`, reconnecting when the
/// proxy closes their connection. A reply slower than 15 s fails the test: that is a hang.
fn valkey_load(port: u16, clients: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Seen>> {
    (0..clients)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut conn: Option<TcpStream> = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let c = conn.get_or_insert_with(|| {
                        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                        c
                    });
                    i += 1;
                    let (key, value) = (format!("fault:{t}:{i}"), format!("v{i}"));
                    let request =
                        format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len());
                    let sent = Instant::now();
                    let mut reply = [0u8; 512];
                    let outcome = c.write_all(request.as_bytes()).and_then(|()| c.read(&mut reply));
                    match outcome {
                        Ok(0) => {
                            seen.closed += 1;
                            conn = None;
                        }
                        Ok(n) if &reply[..n] == b"+OK\r\n" => {
                            seen.ok += 1;
                            seen.acked.push((key, value, Instant::now()));
                        }
                        Ok(n) if reply[0] == b'-' && reply[..n].ends_with(b"\r\n") => seen.errors += 1,
                        Ok(n) => panic!("client {t}: unexpected reply {:?}", String::from_utf8_lossy(&reply[..n])),
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                            panic!("client {t}: no reply to SET {key} within {:?}: a hang", sent.elapsed())
                        }
                        Err(_) => {
                            seen.closed += 1;
                            conn = None;
                        }
                    }
                }
                seen
            })
        })
        .collect()
}

fn total(handles: Vec<std::thread::JoinHandle<Seen>>) -> Seen {
    let mut all = Seen::default();
    for h in handles {
        let s = h.join().expect("a load client failed");
        all.ok += s.ok;
        all.errors += s.errors;
        all.closed += s.closed;
        all.acked.extend(s.acked);
    }
    all
}

/// Every acknowledged SET can be read back on `reader`.
fn assert_nothing_acked_is_lost(reader: &mut redis::Connection, acked: &[(String, String, Instant)]) {
    for chunk in acked.chunks(1000) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _, _)| k.as_str()).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(reader).unwrap();
        for ((key, value, _), got) in chunk.iter().zip(values) {
            assert_eq!(got.as_deref(), Some(value.as_str()), "acknowledged SET {key} is lost");
        }
    }
}

#[test]
fn valkey_single_through_delays_stalls_and_cuts_loses_nothing_and_recovers() {
    let valkey = ValkeyServer::start();
    let fault = FaultProxy::start(([127, 0, 0, 1], valkey.port).into());
    let port = free_port();
    let shotover = Shotover::start(&valkey_topology(port, &sink_single(fault.port)), port);
    let stop = Arc::new(AtomicBool::new(false));
    let load = valkey_load(port, 8, stop.clone());
    let phase = |f: Fault, for_ms: u64| {
        fault.set(f);
        std::thread::sleep(Duration::from_millis(for_ms));
    };
    phase(Fault::None, 1000);
    phase(Fault::Delay(Duration::from_millis(20)), 1000);
    // Stalled for 2 s: requests wait, then are all answered.
    phase(Fault::Stall, 2000);
    phase(Fault::None, 1000);
    // Cut in the middle of an answer, three times.
    for _ in 0..3 {
        fault.cut_mid_answer();
        std::thread::sleep(Duration::from_millis(700));
    }
    let before_end = fault.accepted();
    phase(Fault::None, 1500);
    stop.store(true, Ordering::Release);
    let seen = total(load);
    eprintln!("ok {}, error replies {}, closed connections {}", seen.ok, seen.errors, seen.closed);
    // Recovered: a fresh client is served, over a connection made after the cuts.
    let pong: String = redis::cmd("PING").query(&mut connect(port)).unwrap();
    assert_eq!(pong, "PONG");
    assert!(before_end >= 2, "the proxy never reconnected after a cut ({before_end} connections)");
    // Only requests in flight at a cut fail: 8 clients, 3 cuts.
    assert!(seen.errors + seen.closed <= 3 * 8, "too many failures for 3 cuts: {seen:?}");
    assert!(seen.ok > 500, "too little got through: {} ok", seen.ok);
    assert_nothing_acked_is_lost(&mut valkey.client(), &seen.acked);
    let failed = metric_sum(&shotover.metrics(), "failed_requests", "transform=\"ValkeySinkSingle\"");
    assert_eq!(failed, seen.errors as f64, "failed_requests counts the error replies");
}

/// ValkeySinkCluster with a fault proxy in front of every node of a 6-node cluster: the nodes
/// tell clients they are at 127.0.1.N (`cluster-announce-client-ipv4`), where the proxies
/// listen, so every connection the sink makes (to the contact points, and to the nodes that
/// CLUSTER SLOTS and redirections name) goes through one. Under 8 writing clients: delays on
/// every node, a 2 s stall of one, then cuts mid-answer of every connection. (No silence:
/// the Valkey sinks have no read timeout in the user guide, so a silent node holds its
/// requests as a slow one does.)
#[test]
fn valkey_cluster_through_delays_stalls_and_cuts_loses_nothing_and_recovers() {
    let node_port = free_cluster_port();
    let faults: Vec<FaultProxy> = (1..=6u8)
        .map(|n| FaultProxy::start_on(([127, 0, 1, n], node_port).into(), ([127, 0, 0, n], node_port).into()))
        .collect();
    let _cluster = ValkeyCluster::start_on_six_ips_announcing(node_port, "127.0.1");
    let port = free_port();
    let contacts: Vec<String> = (1..=3).map(|n| format!("\"127.0.1.{n}:{node_port}\"")).collect();
    let chain = format!("        - ValkeySinkCluster:\n            first_contact_points: [{}]\n", contacts.join(", "));
    let shotover = Shotover::start(&valkey_topology(port, &chain), port);
    let stop = Arc::new(AtomicBool::new(false));
    let load = valkey_load(port, 8, stop.clone());
    delays_stall_cuts_then_silence(&faults, Duration::from_secs(1), 0, Duration::from_millis(700), None);
    faults.iter().for_each(FaultProxy::cut_mid_answer);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Release);
    let seen = total(load);
    eprintln!("ok {}, error replies {}, closed connections {}", seen.ok, seen.errors, seen.closed);
    assert!(faults.iter().all(|f| f.accepted() > 0), "the sink reached every node through its fault proxy");
    // Only requests in flight at a cut fail. A cut takes each connection open then at its
    // next answer, and each client has a connection to each of the 3 masters: at most 3
    // failures per client per cut (15 to 18 in runs here), against tens of thousands of
    // requests.
    let (failed, bound) = (seen.errors + seen.closed, 2 * 8 * 3);
    assert!(failed <= bound, "too many failures for 2 cuts: {failed} > {bound}\n{}", shotover.output());
    assert!(seen.ok > 500, "too little got through: {} ok", seen.ok);
    assert_nothing_acked_is_lost(&mut connect(port), &seen.acked);
    let failed = metric_sum(&shotover.metrics(), "failed_requests", "transform=\"ValkeySinkCluster\"");
    assert_eq!(failed, seen.errors as f64, "failed_requests counts the error replies");
}

/// `valkey-cli` against one node, `host:port`.
fn node_cli(node: &str, args: &[&str]) -> String {
    let (host, port) = node.rsplit_once(':').unwrap();
    let mut all = vec!["-h", host, "-p", port];
    all.extend_from_slice(args);
    let (status, out) = run_tool("valkey-cli", &all);
    assert!(status.success(), "valkey-cli {args:?} on {node}: {out}");
    out
}

/// The `host:port` of every node with `role` (`master` or `slave`) in CLUSTER NODES as
/// `asked` sees it.
fn nodes_with_role(asked: &str, role: &str) -> Vec<String> {
    node_cli(asked, &["CLUSTER", "NODES"])
        .lines()
        .filter(|l| l.split_whitespace().nth(2).is_some_and(|flags| flags.split(',').any(|f| f == role)))
        .filter(|l| !l.contains("fail"))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|a| a.split('@').next()).map(str::to_string))
        .collect()
}

#[test]
fn valkey_cluster_master_failovers_under_load_fail_only_requests_in_flight() {
    let cluster = ValkeyCluster::start_on_one_ip_with(free_cluster_port_range(), "--cluster-node-timeout 1000");
    let port = free_port();
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    // connect_timeout_ms is how long a request waits for its slot's master to be reachable
    // again: longer than the cluster takes to promote a replica.
    let chain = format!(
        "        - ValkeySinkCluster:\n            first_contact_points: [{}]\n            connect_timeout_ms: 10000\n",
        contacts.join(", ")
    );
    let shotover = Shotover::start(&valkey_topology(port, &chain), port);
    let stop = Arc::new(AtomicBool::new(false));
    let load = valkey_load(port, 8, stop.clone());
    std::thread::sleep(Duration::from_secs(1));

    // A manual failover: a replica takes over its master's slots, gracefully.
    let replica = nodes_with_role(&cluster.nodes[0], "slave").remove(0);
    assert_eq!(node_cli(&replica, &["CLUSTER", "FAILOVER"]).trim(), "OK");
    let promoted = wait_until(Duration::from_secs(15), || node_cli(&replica, &["ROLE"]).starts_with("master"));
    assert!(promoted, "{replica} was not promoted");
    std::thread::sleep(Duration::from_secs(1));

    // A master crashes (SIGKILL); its replica is promoted after cluster-node-timeout.
    let victim = nodes_with_role(&replica, "master").into_iter().find(|m| *m != replica).unwrap();
    let pid: i32 = node_cli(&victim, &["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    let survivor = cluster.nodes.iter().find(|n| **n != victim).unwrap().clone();
    let victim_failed = || {
        node_cli(&survivor, &["CLUSTER", "NODES"]).lines().any(|l| {
            l.contains(&format!(" {victim}@"))
                && l.split_whitespace().nth(2).is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
        })
    };
    let healed = wait_until(Duration::from_secs(20), || {
        victim_failed()
            && node_cli(&survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            && nodes_with_role(&survivor, "master").len() == 3
    });
    eprintln!("the cluster promoted a replica of {victim} {:?} after the crash", killed_at.elapsed());
    assert!(healed, "the cluster did not promote a replica of {victim}");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let seen = total(load);
    eprintln!("ok {}, error replies {}, closed connections {}", seen.ok, seen.errors, seen.closed);

    // Only what was in flight when a master went away may fail: at most the 8 clients'
    // one request each, at each of the two failovers. Everything else waited and went on.
    assert!(seen.errors + seen.closed <= 16, "{} errors and {} closed connections: {seen:?}", seen.errors, seen.closed);
    assert!(seen.ok > 500, "too little got through: {} ok", seen.ok);
    // Replication is asynchronous: a write acknowledged just before the crash may not have
    // reached the replica, which is Valkey's contract, not the proxy's. Every other
    // acknowledged write is there.
    let safe: Vec<_> = seen
        .acked
        .into_iter()
        .filter(|(_, _, at)| {
            at.checked_duration_since(killed_at).is_some() || killed_at - *at > Duration::from_millis(200)
        })
        .collect();
    assert_nothing_acked_is_lost(&mut connect(port), &safe);
    drop(shotover);
}

/// One CQL v4 QUERY on `c` (logged in), on stream `stream`. Returns the response frame, or
/// None when the proxy closed the connection.
fn cql_query(c: &mut TcpStream, stream: i16, cql: &str) -> Option<Vec<u8>> {
    c.write_all(&cql_request(4, stream, 0x07, &cql_query_body(cql))).ok()?;
    let mut header = [0u8; 9];
    match c.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof || e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("no CQL answer and no close: {e}"),
    }
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).ok()?;
    Some([header.to_vec(), body].concat())
}

#[test]
fn cassandra_single_read_timeout_closes_clients_of_a_silent_node_and_recovers() {
    let ring = shared_ring();
    let node: std::net::SocketAddr = ring.nodes[0].parse().unwrap();
    let fault = FaultProxy::start(node);
    let port = free_port();
    let topology = format!(
        "sources:\n  - Cassandra:\n      listen_addr: \"127.0.0.1:{port}\"\n      chain:\n        - CassandraSinkSingle:\n            remote_address: \"{}\"\n            connect_timeout_ms: 3000\n            read_timeout: 2\n",
        fault.address()
    );
    let shotover = Shotover::start(&topology, port);
    let mut c = cql_v4_session(port, Some(SHARED_RING_USER));
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let rows = cql_query(&mut c, 1, "SELECT release_version FROM system.local").expect("an answer");
    assert_eq!(rows[4], 0x08, "RESULT");
    // The node goes silent (half-open): the request is never answered. After read_timeout
    // (2 s, not never) it gets a Server error saying so, and the connection closes.
    fault.drop_silently();
    let sent = Instant::now();
    let error = cql_query(&mut c, 2, "SELECT release_version FROM system.local").expect("a Server error first");
    let waited = sent.elapsed();
    assert_eq!((error[3], error[4], &error[9..13]), (2, 0x00, &[0u8, 0, 0, 0][..]), "a Server error on stream 2");
    assert!(String::from_utf8_lossy(&error).contains("read_timeout"), "{}", String::from_utf8_lossy(&error));
    assert_closed_by_peer(&mut c, Duration::from_secs(5), "the client of a timed-out request");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10), "closed after {waited:?}");
    // A new client gets a new upstream connection, which works.
    let mut c = cql_v4_session(port, Some(SHARED_RING_USER));
    let rows = cql_query(&mut c, 3, "SELECT release_version FROM system.local").expect("an answer");
    assert_eq!(rows[4], 0x08, "RESULT after the fault: {rows:?}");
    // A stall shorter than read_timeout is only a delay.
    fault.set(Fault::Stall);
    fault.set_after(Duration::from_millis(800), Fault::None);
    let sent = Instant::now();
    let rows = cql_query(&mut c, 4, "SELECT release_version FROM system.local").expect("an answer");
    assert_eq!(rows[4], 0x08);
    assert!(sent.elapsed() >= Duration::from_millis(700), "the stall held the request");
    // Cut in the middle of an answer: the request gets a Server error (or its connection
    // closes), and the next client is served.
    fault.cut_mid_answer();
    match cql_query(&mut c, 5, "SELECT * FROM system_schema.columns") {
        None => {}
        Some(frame) => {
            assert_eq!(frame[4], 0x00, "an ERROR: {frame:?}");
            assert_eq!(&frame[9..13], &[0, 0, 0, 0], "a Server error: {frame:?}");
        }
    }
    let mut c = cql_v4_session(port, Some(SHARED_RING_USER));
    let rows = cql_query(&mut c, 6, "SELECT release_version FROM system.local").expect("an answer");
    assert_eq!(rows[4], 0x08);
    assert!(shotover.output().contains("read_timeout"), "the timeout is logged:\n{}", shotover.output());
}

/// A Kafka ApiVersions v0 request with correlation id `id`.
fn api_versions(id: i32) -> Vec<u8> {
    let mut body = vec![0, 18, 0, 0];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&[0, 4]);
    body.extend_from_slice(b"test");
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// The correlation id and error code of the ApiVersions response read from `c`, or None
/// when the proxy closed the connection.
fn kafka_response(c: &mut TcpStream) -> Option<(i32, i16)> {
    let mut len = [0u8; 4];
    match c.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof || e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("no Kafka answer and no close: {e}"),
    }
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    c.read_exact(&mut body).ok()?;
    Some((i32::from_be_bytes([body[0], body[1], body[2], body[3]]), i16::from_be_bytes([body[4], body[5]])))
}

#[test]
fn kafka_single_read_timeout_closes_clients_of_a_silent_broker_and_recovers() {
    let kafka = shared_kafka();
    let broker: std::net::SocketAddr = format!("127.0.0.1:{}", kafka.broker(1).plaintext).parse().unwrap();
    let fault = FaultProxy::start(broker);
    let port = free_port();
    let topology = format!(
        "sources:\n  - Kafka:\n      listen_addr: \"127.0.0.1:{port}\"\n      chain:\n        - KafkaSinkSingle:\n            destination_port: {}\n            connect_timeout_ms: 3000\n            read_timeout: 2\n",
        fault.port
    );
    let _shotover = Shotover::start(&topology, port);
    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        c
    };
    let mut c = connect();
    c.write_all(&api_versions(1)).unwrap();
    assert_eq!(kafka_response(&mut c), Some((1, 0)));
    fault.drop_silently();
    let sent = Instant::now();
    c.write_all(&api_versions(2)).unwrap();
    // After read_timeout (2 s, not never) the request gets an error response, and the
    // connection closes.
    let (id, error) = kafka_response(&mut c).expect("an error response first");
    let waited = sent.elapsed();
    assert_eq!(id, 2);
    assert_ne!(error, 0, "an error code");
    assert_closed_by_peer(&mut c, Duration::from_secs(5), "the client of a timed-out request");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10), "closed after {waited:?}");
    let mut c = connect();
    c.write_all(&api_versions(3)).unwrap();
    assert_eq!(kafka_response(&mut c), Some((3, 0)), "served after the fault");
    // A cut in the middle of the answer: an error response (REQUEST_TIMED_OUT) or a close.
    fault.cut_mid_answer();
    c.write_all(&api_versions(4)).unwrap();
    match kafka_response(&mut c) {
        None => {}
        Some((id, error)) => assert!(id == 4 && error != 0, "a cut answer must not pass as a good one: {id} {error}"),
    }
    let mut c = connect();
    c.write_all(&api_versions(5)).unwrap();
    assert_eq!(kafka_response(&mut c), Some((5, 0)), "served after the cut");
}
