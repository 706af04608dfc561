//! RequestThrottling: one limit over every connection and every worker core.

use shotover_integration_tests::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMIT: f64 = 500.0;

fn throttled_proxy(valkey: &ValkeyServer) -> (Shotover, u16) {
    let chain = format!(
        "        - RequestThrottling:\n            max_requests_per_second: {LIMIT}\n{}",
        sink_single(valkey.port)
    );
    // Each core takes the connections the kernel gives it: these tests are about how the
    // cores split the limit, not about where connections go.
    two_core_valkey_proxy(&chain, "kernel")
}

/// The worker core (the `core` label) whose `connections_opened` grew.
fn cores_opened(shotover: &Shotover) -> [f64; 2] {
    let series = |core: usize| format!("connections_opened{{core=\"{core}\",source=\"valkey\"}}");
    // A core's series appears once that core has set its source up: wait for both.
    let mut m = String::new();
    let both = wait_until(Duration::from_secs(10), || {
        m = shotover.metrics();
        (0..2).all(|core| metric(&m, &series(core)).is_some())
    });
    assert!(both, "connections_opened is not there for both cores:\n{m}");
    [0, 1].map(|core| metric_value(&m, &series(core)))
}

/// A PING's answer proves the proxy has accepted (and counted) the connection.
fn ping(mut c: redis::Connection) -> redis::Connection {
    let _: String = redis::cmd("PING").query(&mut c).unwrap();
    c
}

/// Runs every client flat out for `warmup` then `measure`; returns (admitted, refused)
/// during `measure`. Refusals must be the overload error and nothing else.
fn hammer(clients: Vec<redis::Connection>, warmup: Duration, measure: Duration) -> (u64, u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (admitted, refused, counting, stop) =
                (admitted.clone(), refused.clone(), counting.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let result: redis::RedisResult<()> = redis::cmd("SET").arg("k").arg("v").query(&mut c);
                    let counted = counting.load(Ordering::Relaxed);
                    match result {
                        Ok(()) if counted => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.to_string().contains("too many requests") => {
                            if counted {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                        Ok(()) => {}
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(warmup);
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(measure);
    counting.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let scale = measure.as_secs_f64() / elapsed;
    ((admitted.load(Ordering::Relaxed) as f64 * scale) as u64, refused.load(Ordering::Relaxed))
}

#[test]
fn limit_holds_across_two_cores() {
    let valkey = ValkeyServer::start();
    let (shotover, port) = throttled_proxy(&valkey);
    let clients: Vec<_> = (0..12).map(|_| ping(connect(port))).collect();
    let [core0, core1] = cores_opened(&shotover);
    assert!(core0 > 0.0 && core1 > 0.0, "clients must reach both cores: {core0} and {core1}");
    let (admitted, refused) = hammer(clients, Duration::from_secs(1), Duration::from_secs(5));
    let expected = LIMIT * 5.0;
    assert!(
        (admitted as f64 - expected).abs() <= expected * 0.1,
        "{admitted} requests admitted in 5 s at a limit of {LIMIT}/s ({refused} refused)"
    );
    assert!(refused > 0, "the clients offered more than the limit");
}

#[test]
fn an_idle_core_does_not_take_half_the_limit() {
    let valkey = ValkeyServer::start();
    let (shotover, port) = throttled_proxy(&valkey);
    // Keep only connections that landed on core 0; core 1 stays idle.
    let mut clients = Vec::new();
    let mut opened = cores_opened(&shotover);
    while clients.len() < 6 {
        let c = ping(connect(port));
        let now = cores_opened(&shotover);
        if now[0] > opened[0] {
            clients.push(c);
        }
        opened = now;
    }
    let (admitted, _) = hammer(clients, Duration::from_secs(1), Duration::from_secs(5));
    let expected = LIMIT * 5.0;
    assert!(
        (admitted as f64 - expected).abs() <= expected * 0.1,
        "one busy core admitted {admitted} in 5 s at a limit of {LIMIT}/s"
    );
}

#[test]
fn below_the_minimum_is_a_config_error() {
    let chain = "        - RequestThrottling:\n            max_requests_per_second: 10\n        - NullSink\n";
    let (status, out) =
        Shotover::builder(&valkey_topology(free_port(), chain)).run_to_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(out.contains("sources[0].Valkey.chain[0].RequestThrottling: max_requests_per_second is 10"), "{out}");
    assert!(out.contains("at least 50"), "{out}");
}

/// The guide's RequestThrottling and DebugReturner examples, as printed (no colon after the
/// name): the proxy starts, warns about each line, and serves with the fields applied.
#[test]
fn the_guides_items_without_a_colon_load_with_a_warning() {
    let port = free_port();
    let chain = "        - RequestThrottling\n            max_requests_per_second: 20000\n        - DebugReturner\n            # return a Valkey response\n            Valkey: \"42\"\n";
    let shotover = Shotover::start(&valkey_topology(port, chain), port);
    let mut c = connect(port);
    assert_eq!(redis::cmd("GET").arg("k").query::<String>(&mut c).unwrap(), "42");
    let out = shotover.output();
    for line in [7, 9] {
        let warning = format!("line {line}: a transform name followed by indented fields needs a colon");
        assert!(out.contains(&warning), "{out}");
    }
}

#[test]
fn cql_requests_over_the_limit_get_overloaded() {
    use shotover_integration_tests::backends::{shared_ring, SHARED_RING_USER};
    use std::io::Write;
    let ring = shared_ring();
    let port = free_port();
    let topology = format!(
        "---\nsources:\n  - Cassandra:\n      listen_addr: \"127.0.0.1:{port}\"\n      chain:\n        - RequestThrottling:\n            max_requests_per_second: 50\n        - CassandraSinkSingle:\n            remote_address: \"{}\"\n",
        ring.nodes[0]
    );
    let _shotover = Shotover::builder(&topology).arg("--worker-cores").arg("0").wait_for(port).start().unwrap();
    let mut c = cql_v4_session(port, Some(SHARED_RING_USER));
    // 150 queries in one write: about one second of the limit passes at once, the rest is
    // refused with the protocol's Overloaded error.
    let body = cql_query_body("SELECT key FROM system.local");
    let batch: Vec<u8> = (1..=150).flat_map(|s| cql_request(4, s, 0x07, &body)).collect();
    c.write_all(&batch).unwrap();
    let (mut results, mut overloaded) = (0, 0);
    for _ in 0..150 {
        let f = read_cql_frame(&mut c);
        match (f[4], f.get(9..13)) {
            (0x08, _) => results += 1,
            (0x00, Some([0, 0, 0x10, 0x01])) => overloaded += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(overloaded > 0 && results > 0, "{results} results, {overloaded} Overloaded");
    assert!((40..=70).contains(&results), "about a second of the limit passes: {results}");
}

#[test]
fn kafka_requests_over_the_limit_get_throttling_quota_exceeded_in_order() {
    use std::io::{Read, Write};
    let port = free_port();
    // Admitted requests reach a broker port where nothing listens: REQUEST_TIMED_OUT (7),
    // and the connection closes after the batch's answers, as a broker's refusal would.
    // Refused ones get THROTTLING_QUOTA_EXCEEDED (89) with a throttle time. One write of
    // 200 requests is read as one batch, so every one of them is answered before the close.
    let topology = format!(
        "---\nsources:\n  - Kafka:\n      name: \"kafka\"\n      listen_addr: \"127.0.0.1:{port}\"\n      chain:\n        - RequestThrottling:\n            max_requests_per_second: 50\n        - KafkaSinkSingle:\n            destination_port: {}\n            connect_timeout_ms: 1000\n",
        free_port()
    );
    let shotover = Shotover::start(&topology, port);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // ApiVersions v1: header v1 (api key 18, version 1, correlation id, null client id), no body.
    let batch: Vec<u8> = (1..=200i32)
        .flat_map(|id| {
            let mut m = vec![0, 0, 0, 10, 0, 18, 0, 1];
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(&[0xff, 0xff]);
            m
        })
        .collect();
    c.write_all(&batch).unwrap();
    let (mut throttled, mut failed) = (0, 0);
    for expected_id in 1..=200i32 {
        let mut len = [0u8; 4];
        c.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        c.read_exact(&mut body).unwrap();
        assert_eq!(i32::from_be_bytes(body[0..4].try_into().unwrap()), expected_id, "answers in request order");
        let code = i16::from_be_bytes(body[4..6].try_into().unwrap());
        // v1: error_code, api_keys (an empty array in an error answer), throttle_time_ms.
        let throttle_ms = i32::from_be_bytes(body[10..14].try_into().unwrap());
        match code {
            89 => {
                throttled += 1;
                assert!(throttle_ms > 0, "a refusal says how long to back off");
            }
            7 => failed += 1,
            other => panic!("unexpected error code {other}"),
        }
    }
    assert_closed_by_peer(&mut c, Duration::from_secs(5), "a client whose broker cannot be reached");
    assert!(throttled >= 100, "most of a 200-request burst is over a limit of 50/s: {throttled}");
    // At least one core's share of the limit (split over the cores) passes at once.
    assert!(failed >= 20, "the limit's burst is admitted: {failed}");
    let m = shotover.metrics();
    assert_eq!(metric_value(&m, "throttled_requests{chain=\"kafka\"}"), f64::from(throttled), "{m}");
}
