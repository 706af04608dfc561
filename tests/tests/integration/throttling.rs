//! RequestThrottling: one limit over every connection and every worker core.

use shotover_integration_tests::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LIMIT: f64 = 500.0;

fn throttled_proxy(valkey: &ValkeyServer) -> (Shotover, u16) {
    let port = free_port();
    let chain = format!(
        "        - RequestThrottling:\n            max_requests_per_second: {LIMIT}\n{}",
        sink_single(valkey.port)
    );
    let shotover = Shotover::builder(&valkey_topology(port, &chain))
        .arg("--worker-cores")
        .arg("0-1")
        .wait_for(port)
        .start()
        .unwrap();
    (shotover, port)
}

/// The worker core (the `core` label) whose `connections_opened` grew.
fn cores_opened(shotover: &Shotover) -> [f64; 2] {
    let m = shotover.metrics();
    [0, 1].map(|core| metric_value(&m, &format!("connections_opened{{core=\"{core}\",source=\"valkey\"}}")))
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
