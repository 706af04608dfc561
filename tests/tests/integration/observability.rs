//! /metrics after known traffic, /filter while running, and work spread over cores.

use shotover_integration_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Writes `requests` in one write and reads until `replies` replies (lines) arrived.
fn raw_exchange(port: u16, requests: &str, replies: usize) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(requests.as_bytes()).unwrap();
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    while out.matches("\r\n").count() < replies {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {out:?}");
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    out
}

#[test]
fn metrics_after_known_traffic() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let chain = format!("        - QueryCounter:\n            name: \"counted\"\n{}", sink_single(valkey.port));
    let shotover = Shotover::start(&valkey_topology(port, &chain), port);
    let sets = "SET a 1\r\n".repeat(10);
    let out = raw_exchange(port, &sets, 10);
    assert_eq!(out, "+OK\r\n".repeat(10));
    let out = raw_exchange(port, &"GET a\r\n".repeat(5), 10);
    assert_eq!(out, "$1\r\n1\r\n".repeat(5));

    // Both test connections are closed; wait until the proxy has seen that.
    let available = || metric_value(&shotover.metrics(), "shotover_available_connections_count{source=\"valkey\"}");
    assert!(wait_until(Duration::from_secs(5), || available() == 512.0), "{}", shotover.metrics());
    let m = shotover.metrics();
    assert_eq!(metric_value(&m, "query_count{name=\"counted\",query=\"SET\"}"), 10.0, "{m}");
    assert_eq!(metric_value(&m, "query_count{name=\"counted\",query=\"GET\"}"), 5.0, "{m}");
    assert_eq!(metric_value(&m, "shotover_chain_requests_batch_size_sum{chain=\"valkey\"}"), 15.0, "{m}");
    assert_eq!(metric_value(&m, "shotover_chain_responses_batch_size_sum{chain=\"valkey\"}"), 15.0, "{m}");
    let batches = metric_value(&m, "shotover_chain_total_count{chain=\"valkey\"}");
    assert!((2.0..=15.0).contains(&batches), "{batches}");
    assert_eq!(metric_value(&m, "shotover_transform_total_count{transform=\"QueryCounter\"}"), batches);
    assert_eq!(metric_value(&m, "shotover_transform_total_count{transform=\"ValkeySinkSingle\"}"), batches);
    assert_eq!(metric_value(&m, "shotover_transform_latency_seconds_count{transform=\"ValkeySinkSingle\"}"), batches);
    assert_eq!(metric_value(&m, "shotover_chain_failures_count{chain=\"valkey\"}"), 0.0);
    assert_eq!(metric_value(&m, "shotover_source_to_sink_latency_seconds_count{sink=\"ValkeySinkSingle\"}"), batches);
    assert_eq!(metric_value(&m, "shotover_sink_to_source_latency_seconds_count{source=\"valkey\"}"), batches);
    assert_eq!(metric_value(&m, "failed_requests{chain=\"valkey\",transform=\"ValkeySinkSingle\"}"), 0.0);
    let opened = metric_sum(&m, "connections_opened", "source=\"valkey\"");
    // Two test connections plus the one that waited for the port.
    assert_eq!(opened, 3.0, "{m}");
    // The guide's histograms hold the last minute: summaries with Shotover's quantiles.
    assert!(m.contains("# TYPE shotover_chain_latency_seconds summary"), "{m}");
    for q in ["0", "0.1", "0.5", "0.9", "0.95", "0.99", "0.999", "1"] {
        let series = format!("shotover_chain_requests_batch_size{{chain=\"valkey\",quantile=\"{q}\"}}");
        let size = metric_value(&m, &series);
        // Batches of 1 to 10 requests, each size shown exactly.
        assert!((1.0..=10.0).contains(&size) && size.fract() == 0.0, "{series} = {size}\n{m}");
    }
    let median = metric_value(&m, "shotover_chain_latency_seconds{chain=\"valkey\",quantile=\"0.5\"}");
    assert!(median > 0.0 && median < 1.0, "{m}");
}

#[test]
fn filter_changes_logging_while_running() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let chain = format!("        - DebugPrinter\n{}", sink_single(valkey.port));
    let shotover = Shotover::start(&valkey_topology(port, &chain), port);
    raw_exchange(port, "SET first 1\r\n", 1);
    assert!(shotover.wait_for_log("first", Duration::from_secs(5)), "{}", shotover.output());

    let (status, body) = http_put(shotover.observability_port, "/filter", "warn").unwrap();
    assert_eq!(status, 200, "{body}");
    raw_exchange(port, "SET second 1\r\n", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!shotover.output().contains("second"), "{}", shotover.output());

    let (status, _) = http_put(shotover.observability_port, "/filter", "info, shotover=info").unwrap();
    assert_eq!(status, 200);
    raw_exchange(port, "SET third 1\r\n", 1);
    assert!(shotover.wait_for_log("third", Duration::from_secs(5)), "{}", shotover.output());

    let (status, body) = http_put(shotover.observability_port, "/filter", "shotover=loud").unwrap();
    assert_eq!(status, 400, "{body}");
}

#[test]
fn two_worker_cores_both_serve_connections_with_kernel_placement() {
    if !has_two_cpus() {
        return;
    }
    let valkey = ValkeyServer::start();
    let (shotover, port) = two_core_valkey_proxy(&sink_single(valkey.port), "kernel");
    for i in 0..40 {
        let out = raw_exchange(port, &format!("SET k{i} {i}\r\n"), 1);
        assert_eq!(out, "+OK\r\n");
    }
    let m = shotover.metrics();
    let core0 = metric_value(&m, "connections_opened{core=\"0\",source=\"valkey\"}");
    let core1 = metric_value(&m, "connections_opened{core=\"1\",source=\"valkey\"}");
    assert!(core0 > 0.0 && core1 > 0.0, "connections per core: {core0} and {core1}");
    // 40 checks plus the one wait_for connection.
    assert_eq!(core0 + core1, 41.0);
    assert!(shotover.output().contains("2 worker cores"));
}

/// A CPU-bound shell loop pinned to CPU 0: the rest of the box wants that CPU.
struct CpuHog(std::process::Child);

impl Drop for CpuHog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Busy clock ticks of `cpu` so far, counted as the placement counts them, for the failure
/// message of a placement test.
fn cpu_busy_ticks(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks = shotover_executor::placement::busy_ticks(&stat);
    ticks.iter().find(|(n, _)| *n == cpu).map(|(_, busy)| *busy).expect("a line for the CPU")
}

/// Each open connection sends PING and is kept open; returns the new connections each
/// worker core opened for them (both cores' series exist from the start: a missing one fails).
fn connections_per_core(shotover: &Shotover, port: u16, count: usize) -> ([f64; 2], Vec<redis::Connection>) {
    let series = |core: usize| format!("connections_opened{{core=\"{core}\",source=\"valkey\"}}");
    let opened = |m: &str| [0, 1].map(|core| metric_value(m, &series(core)));
    let before = opened(&shotover.metrics());
    let clients: Vec<redis::Connection> = (0..count)
        .map(|_| {
            let mut c = connect(port);
            let pong: String = redis::cmd("PING").query(&mut c).expect("PING through the proxy");
            assert_eq!(pong, "PONG");
            c
        })
        .collect();
    let after = opened(&shotover.metrics());
    ([after[0] - before[0], after[1] - before[1]], clients)
}

#[test]
fn new_connections_go_to_the_core_whose_cpu_the_box_leaves_room_on() {
    if !has_two_cpus() {
        return;
    }
    let valkey = ValkeyServer::start();
    let _hog = CpuHog(
        std::process::Command::new("taskset")
            .args(["-c", "0", "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("taskset"),
    );
    let (adaptive, adaptive_port) = two_core_valkey_proxy(&sink_single(valkey.port), "adaptive");
    let (kernel, kernel_port) = two_core_valkey_proxy(&sink_single(valkey.port), "kernel");
    // The shared Cassandra and Kafka clusters of a test run float over both CPUs and now and
    // then keep CPU 1 busy too: both CPUs are then full and either core is right (most likely
    // why a CI run of 2026-12-07 placed 9 and 11, taking 2.8 s where 0.6 s is usual). So up
    // to five rounds, each after 400 ms of quiet (the room is measured over at least 100 ms
    // from the last connection), and one of them must place all 20 on core 1. With the
    // kernel's spread a round would do that once in a million.
    let mut rounds = Vec::new();
    let mut clients = Vec::new();
    let mut all_on_1 = false;
    for _ in 0..5 {
        let cpu1_before = cpu_busy_ticks(1);
        std::thread::sleep(Duration::from_millis(400));
        let cpu1_busy = cpu_busy_ticks(1).saturating_sub(cpu1_before);
        let ([on_0, on_1], round) = connections_per_core(&adaptive, adaptive_port, 20);
        clients.extend(round);
        rounds.push(format!("{on_0} and {on_1} (CPU 1 busy {cpu1_busy} clock ticks in the 400 ms before)"));
        all_on_1 = (on_0, on_1) == (0.0, 20.0);
        if all_on_1 {
            break;
        }
    }
    assert!(all_on_1, "adaptive: with CPU 0 busy, no round put every connection on core 1: {rounds:?}");
    // A stop drains the connections core 0 handed to core 1 too, and the process exits.
    let mut adaptive = adaptive;
    let status = adaptive.terminate(Duration::from_secs(20)).expect("the proxy stops");
    assert_eq!(status.code(), Some(0), "{}", adaptive.output());
    drop(clients);
    let ([on_0, on_1], _clients) = connections_per_core(&kernel, kernel_port, 20);
    assert!(on_0 > 0.0 && on_1 > 0.0, "kernel: the hash spreads connections over both cores: {on_0} and {on_1}");
    assert_eq!(on_0 + on_1, 20.0);
}

#[test]
fn connection_span_attaches_connection_details_to_log_lines() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let chain = format!("        - DebugPrinter\n{}", sink_single(valkey.port));
    let config = "main_log_level: \"info, shotover::connection_span=debug\"\n";
    let shotover = Shotover::builder(&valkey_topology(port, &chain)).config(config).wait_for(port).start().unwrap();
    raw_exchange(port, "SET spanned 1\r\n", 1);
    assert!(shotover.wait_for_log("spanned", Duration::from_secs(5)));
    let line = shotover.output().lines().find(|l| l.contains("spanned")).unwrap_or_default().to_string();
    assert!(line.contains("connection{id=") && line.contains("peer=127.0.0.1:"), "{line}");
}

#[test]
fn json_log_format() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let shotover = Shotover::builder(&valkey_topology(port, &sink_single(valkey.port)))
        .arg("--log-format")
        .arg("json")
        .wait_for(port)
        .start()
        .unwrap();
    assert!(shotover.wait_for_log("shotover started", Duration::from_secs(5)));
    let line = shotover.output().lines().find(|l| l.contains("shotover started")).unwrap_or_default().to_string();
    assert!(line.starts_with('{') && line.contains("\"level\":\"INFO\""), "{line}");
}
