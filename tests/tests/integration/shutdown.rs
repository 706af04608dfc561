//! SIGTERM: stop accepting, answer every request of the connected clients, exit 0.

use nix::sys::signal::Signal;
use redis::Commands;
use shotover_integration_tests::*;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn sigterm_during_load_answers_every_request_and_exits_0() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let mut shotover = Shotover::start(&valkey_topology(port, &sink_single(valkey.port)), port);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut c = connect(port);
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let mut pipe = redis::pipe();
                    for j in 0..10 {
                        pipe.set(format!("t{t}-{j}"), i + j).ignore();
                        pipe.get(format!("t{t}-{j}"));
                    }
                    let got: Vec<u64> = pipe.query(&mut c).expect("a request went unanswered");
                    assert_eq!(got, (i..i + 10).collect::<Vec<_>>());
                    answered.fetch_add(20, Ordering::Relaxed);
                    i += 10;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let before = answered.load(Ordering::Relaxed);
    shotover.signal(Signal::SIGTERM).unwrap();
    // Connected clients keep being served while the proxy drains...
    std::thread::sleep(Duration::from_millis(500));
    assert!(shotover.output().contains("received SIGTERM"), "{}", shotover.output());
    // ...but new connections are refused.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the listener must close on SIGTERM");
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().expect("a client saw an error");
    }
    assert!(answered.load(Ordering::Relaxed) > before, "clients were served during the drain");
    let started = Instant::now();
    let status = shotover.wait_exit(Duration::from_secs(15)).unwrap_or_else(|_| {
        panic!("shotover did not exit: {}", shotover.output());
    });
    assert_eq!(status.code(), Some(0), "{}", shotover.output());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(shotover.output().contains("shotover stopped"));
    let mut direct = valkey.client();
    let _: () = direct.set("valkey", "fine").unwrap();
}

#[test]
fn a_second_signal_while_draining_exits_at_once() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let mut shotover = Shotover::start(&valkey_topology(port, &sink_single(valkey.port)), port);
    // A client that keeps its connection busy would hold the drain open for 10 s.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = connect(port);
            while !stop.load(Ordering::Acquire) {
                if c.set::<_, _, ()>("k", "v").is_err() {
                    break;
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    shotover.signal(Signal::SIGINT).unwrap();
    assert!(shotover.wait_for_log("received SIGINT", Duration::from_secs(5)));
    let started = Instant::now();
    shotover.signal(Signal::SIGINT).unwrap();
    let status = shotover.wait_exit(Duration::from_secs(5)).unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(shotover.output().contains("while draining"), "{}", shotover.output());
    stop.store(true, Ordering::Release);
    busy.join().unwrap();
}
