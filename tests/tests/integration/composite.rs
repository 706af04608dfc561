//! Transforms that hold chains of their own (Tee, ParallelMap) or hold requests (Coalesce),
//! with real Valkey servers behind them.

use redis::Commands;
use shotover_integration_tests::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// `chain` (items at 8 spaces) moved right by `spaces`, to nest it in a transform.
fn nested(chain: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    chain.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn tee_chain(behavior: &str, extra: &str, tee_port: u16, regular_port: u16) -> String {
    format!(
        "        - Tee:\n            behavior: {behavior}\n{extra}            chain:\n{}{}",
        nested(&sink_single(tee_port), 6),
        sink_single(regular_port)
    )
}

fn proxy(chain: &str) -> (Shotover, u16) {
    let port = free_port();
    (Shotover::start(&valkey_topology(port, chain), port), port)
}

/// Two servers that disagree on `x`: the regular one says 1, the tee target 2.
fn disagreeing() -> (ValkeyServer, ValkeyServer) {
    let (regular, tee) = (ValkeyServer::start(), ValkeyServer::start());
    let _: () = regular.client().set("x", "1").unwrap();
    let _: () = tee.client().set("x", "2").unwrap();
    (regular, tee)
}

#[test]
fn tee_ignore_copies_every_request_to_the_sub_chain() {
    let (regular, tee) = (ValkeyServer::start(), ValkeyServer::start());
    // Room for every batch: with the default of 5, a loaded machine may drop some (that
    // case has a test of its own).
    let (s, port) = proxy(&tee_chain("Ignore", "            buffer_size: 100\n", tee.port, regular.port));
    let mut c = connect(port);
    for i in 0..20 {
        let _: () = c.set(format!("k{i}"), i).unwrap();
    }
    assert_eq!(regular.client().get::<_, i32>("k19").unwrap(), 19);
    let mut t = tee.client();
    assert!(wait_until(Duration::from_secs(5), || t.get::<_, Option<i32>>("k19").unwrap() == Some(19)));
    assert_eq!(t.get::<_, i32>("k0").unwrap(), 0);
    assert_eq!(metric_value(&s.metrics(), "tee_dropped_messages{chain=\"Tee\"}"), 0.0);
}

#[test]
fn tee_fail_on_mismatch_answers_mismatches_with_an_error() {
    let (regular, tee) = disagreeing();
    let (_s, port) = proxy(&tee_chain("FailOnMismatch", "", tee.port, regular.port));
    let mut c = connect(port);
    let err = c.get::<_, String>("x").unwrap_err().to_string();
    assert!(err.contains("did not match"), "{err}");
    // Both absent: the same reply, so it passes through.
    assert_eq!(c.get::<_, Option<String>>("absent").unwrap(), None);
}

#[test]
fn tee_log_warning_on_mismatch_returns_the_regular_answer_and_logs() {
    let (regular, tee) = disagreeing();
    let (s, port) = proxy(&tee_chain("LogWarningOnMismatch", "", tee.port, regular.port));
    let mut c = connect(port);
    assert_eq!(c.get::<_, String>("x").unwrap(), "1");
    assert!(s.wait_for_log("Tee: responses differ", Duration::from_secs(5)), "{}", s.output());
}

#[test]
fn tee_subchain_on_mismatch_sends_only_mismatched_requests_there() {
    let (regular, tee) = disagreeing();
    let behavior = "\n              SubchainOnMismatch:\n                - QueryCounter:\n                    name: \"mismatch\"\n                - NullSink\n";
    let (s, port) = proxy(&tee_chain(behavior.trim_end(), "", tee.port, regular.port));
    let mut c = connect(port);
    assert_eq!(c.get::<_, String>("x").unwrap(), "1");
    assert_eq!(c.get::<_, Option<String>>("absent").unwrap(), None);
    let series = "query_count{name=\"mismatch\",query=\"GET\"}";
    // The series appears when the first request is counted.
    assert!(wait_until(Duration::from_secs(5), || metric(&s.metrics(), series) == Some(1.0)), "{}", s.metrics());
}

#[test]
fn tee_result_source_switches_over_http_on_every_core() {
    let (regular, tee) = disagreeing();
    let api = free_port();
    let extra = format!("            http_api_port: {api}\n");
    let port = free_port();
    let topology = valkey_topology(port, &tee_chain("Ignore", &extra, tee.port, regular.port));
    let _s = Shotover::builder(&topology).arg("--worker-cores").arg("0-1").wait_for(port).start().unwrap();
    assert!(wait_until(Duration::from_secs(5), || http_get(api, "/transform/tee/result-source").is_ok()));
    assert_eq!(http_get(api, "/transform/tee/result-source").unwrap(), "regular-chain");
    let mut clients: Vec<_> = (0..8).map(|_| connect(port)).collect();
    for c in &mut clients {
        assert_eq!(c.get::<_, String>("x").unwrap(), "1");
    }
    assert_eq!(http_put(api, "/transform/tee/result-source", "tee-chain").unwrap().0, 200);
    assert_eq!(http_get(api, "/transform/tee/result-source").unwrap(), "tee-chain");
    // Existing connections on both cores now get the sub-chain's answers.
    for c in &mut clients {
        assert_eq!(c.get::<_, String>("x").unwrap(), "2");
    }
    let (status, body) = http_put(api, "/transform/tee/result-source", "neither").unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(http_put(api, "/transform/tee/result-source", "regular-chain").unwrap().0, 200);
    assert_eq!(clients[0].get::<_, String>("x").unwrap(), "1");
}

#[test]
fn tee_full_buffer_drops_and_counts() {
    // A tee target that accepts and never answers: its batches pile up in the buffer.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let regular = ValkeyServer::start();
    let extra = "            buffer_size: 1\n";
    let (s, port) = proxy(&tee_chain("Ignore", extra, silent_port, regular.port));
    let mut c = connect(port);
    for i in 0..10 {
        let _: () = c.set(format!("k{i}"), i).unwrap();
    }
    assert_eq!(regular.client().get::<_, i32>("k9").unwrap(), 9, "Ignore never waits for the sub-chain");
    // One batch is with the stuck sub-chain, one in the buffer: the other 8 are dropped.
    let dropped = metric_value(&s.metrics(), "tee_dropped_messages{chain=\"Tee\"}");
    assert!((8.0..=9.0).contains(&dropped), "{}", s.metrics());
}

/// Sends `requests` in one write and reads exactly `expect` bytes; the connection stays
/// open while the returned stream lives.
fn pipeline(port: u16, requests: &str, expect: usize) -> (String, TcpStream) {
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(requests.as_bytes()).unwrap();
    let mut got = vec![0u8; expect];
    raw.read_exact(&mut got).unwrap();
    (String::from_utf8_lossy(&got).into_owned(), raw)
}

fn echoes(n: usize) -> (String, Vec<String>) {
    let requests: String = (0..n).map(|i| format!("ECHO e{i:02}\r\n")).collect();
    let replies = (0..n).map(|i| format!("$3\r\ne{i:02}\r\n")).collect();
    (requests, replies)
}

#[test]
fn parallel_map_ordered_spreads_over_instances_and_keeps_order() {
    let valkey = ValkeyServer::start();
    let chain = format!(
        "        - ParallelMap:\n            parallelism: 3\n            ordered_results: true\n            chain:\n{}",
        nested(&sink_single(valkey.port), 6)
    );
    let (_s, port) = proxy(&chain);
    let (requests, replies) = echoes(30);
    let expected: String = replies.concat();
    let (got, _open) = pipeline(port, &requests, expected.len());
    assert_eq!(got, expected);
    // Three upstream connections serve the one client connection.
    let info: String = redis::cmd("INFO").arg("clients").query(&mut valkey.client()).unwrap();
    let clients: usize =
        info.lines().find_map(|l| l.strip_prefix("connected_clients:")).unwrap().trim().parse().unwrap();
    assert!(clients >= 4, "{info}");
}

#[test]
fn parallel_map_unordered_is_refused_for_valkey() {
    // Valkey replies carry no request id: out of order, a client would read the wrong ones.
    let chain = format!(
        "        - ParallelMap:\n            parallelism: 4\n            ordered_results: false\n            chain:\n{}",
        nested(&sink_single(free_port()), 6)
    );
    let (status, out) =
        Shotover::builder(&valkey_topology(free_port(), &chain)).run_to_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        out.contains("sources[0].Valkey.chain[0].ParallelMap.ordered_results: must be true in a Valkey chain"),
        "{out}"
    );
}

#[test]
fn coalesce_by_count_holds_requests_until_enough_arrive() {
    let valkey = ValkeyServer::start();
    let chain =
        format!("        - Coalesce:\n            flush_when_buffered_message_count: 3\n{}", sink_single(valkey.port));
    let (_s, port) = proxy(&chain);
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"SET a 1\r\n").unwrap();
    let held = read_once(&mut raw, Duration::from_millis(300));
    assert_eq!(held, ReadOutcome::TimedOut, "no reply (and no close) while fewer than 3 requests are held");
    assert_eq!(valkey.client().get::<_, Option<String>>("a").unwrap(), None, "nothing was sent upstream yet");
    raw.write_all(b"SET b 2\r\nGET a\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = vec![0u8; b"+OK\r\n+OK\r\n$1\r\n1\r\n".len()];
    raw.read_exact(&mut got).unwrap();
    assert_eq!(got, b"+OK\r\n+OK\r\n$1\r\n1\r\n");
}

#[test]
fn coalesce_by_time_flushes_even_without_new_requests() {
    let valkey = ValkeyServer::start();
    let chain = format!(
        "        - Coalesce:\n            flush_when_millis_since_last_flush: 300\n{}",
        sink_single(valkey.port)
    );
    let (_s, port) = proxy(&chain);
    let mut c = connect(port);
    // Each request waits for the timer, then is answered, in order.
    for i in 0..3 {
        let _: () = c.set("t", i).unwrap();
        assert_eq!(c.get::<_, i32>("t").unwrap(), i);
    }
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(b"PING\r\n").unwrap();
    assert_eq!(read_once(&mut raw, Duration::from_millis(100)), ReadOutcome::TimedOut, "held until the time passes");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 7];
    raw.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
}

#[test]
fn coalesce_without_a_flush_condition_is_a_config_error() {
    let topology = valkey_topology(free_port(), "        - Coalesce: {}\n        - NullSink\n");
    let (status, out) = Shotover::builder(&topology).run_to_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(out.contains("sources[0].Valkey.chain[0].Coalesce: set flush_when_buffered_message_count"), "{out}");
}

#[test]
fn nested_chain_errors_carry_their_yaml_path() {
    let chain = "        - Tee:\n            chain:\n              - QueryCounter:\n                  name: x\n        - NullSink\n";
    let (status, out) =
        Shotover::builder(&valkey_topology(free_port(), chain)).run_to_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(out.contains("sources[0].Valkey.chain[0].Tee.chain[0]"), "{out}");
    assert!(out.contains("not a terminating transform"), "{out}");
}

#[test]
fn filter_errors_wait_for_the_answers_of_held_requests_before_them() {
    let valkey = ValkeyServer::start();
    let _: () = valkey.client().set("a", 1).unwrap();
    let _: () = valkey.client().set("c", 3).unwrap();
    let chain = format!(
        "        - QueryTypeFilter:\n            DenyList: [Write]\n        - Coalesce:\n            flush_when_buffered_message_count: 3\n{}",
        sink_single(valkey.port)
    );
    let (_s, port) = proxy(&chain);
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The SET is filtered at once, but the GET before it is held by Coalesce: its error
    // must not take the GET's place.
    raw.write_all(b"GET a\r\nSET b 2\r\nGET c\r\n").unwrap();
    let held = read_once(&mut raw, Duration::from_millis(300));
    assert_eq!(held, ReadOutcome::TimedOut, "nothing may be answered before the held GET");
    raw.write_all(b"GET a\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let expected = "$1\r\n1\r\n-ERR Message was filtered out by shotover\r\n$1\r\n3\r\n$1\r\n1\r\n";
    let mut got = vec![0u8; expected.len()];
    raw.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

#[test]
fn parallel_map_and_tee_get_full_answers_from_holding_chains() {
    // Coalesce inside would hold these requests; ParallelMap and Tee deal answers back batch
    // by batch, so they ask their chains to answer in full.
    let valkey = ValkeyServer::start();
    let coalesce = "        - Coalesce:\n            flush_when_buffered_message_count: 1000\n";
    let inner = format!("{}{}", nested(coalesce, 6), nested(&sink_single(valkey.port), 6));
    let chain = format!(
        "        - ParallelMap:\n            parallelism: 2\n            ordered_results: true\n            chain:\n{inner}"
    );
    let (_s, port) = proxy(&chain);
    let (requests, replies) = echoes(10);
    let expected: String = replies.concat();
    let (got, _open) = pipeline(port, &requests, expected.len());
    assert_eq!(got, expected);

    let (regular, tee_target) = disagreeing();
    let chain = format!(
        "        - Tee:\n            behavior: FailOnMismatch\n            chain:\n{}{}{coalesce}{}",
        nested(coalesce, 6),
        nested(&sink_single(tee_target.port), 6),
        sink_single(regular.port)
    );
    let (_s, port) = proxy(&chain);
    let mut c = connect(port);
    let _: () = c.set("y", 5).unwrap();
    assert_eq!(c.get::<_, i64>("y").unwrap(), 5);
    let mismatch: redis::RedisResult<i64> = c.get("x");
    assert!(mismatch.unwrap_err().to_string().contains("did not match"), "the two chains disagree on x");
}
