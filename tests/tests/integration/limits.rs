//! connection_limit, hard_connection_limit and the idle timeout.

use redis::Commands;
use shotover_integration_tests::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A Valkey source on `port` with extra source `fields`, in front of the Valkey on `valkey`.
pub fn topology(port: u16, valkey: u16, fields: &str) -> String {
    format!(
        "sources:\n  - Valkey:\n      name: \"valkey\"\n      listen_addr: \"127.0.0.1:{port}\"\n{fields}      chain:\n{}",
        sink_single(valkey)
    )
}

/// Sends PING on a raw connection; returns what one read within `timeout` saw.
fn ping(stream: &mut TcpStream, timeout: Duration) -> ReadOutcome {
    match stream.write_all(b"PING\r\n") {
        Ok(()) => {}
        // The proxy already closed it (and the reset arrived before this write).
        Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => return ReadOutcome::Closed,
        Err(e) => panic!("cannot write PING: {e}"),
    }
    read_once(stream, timeout)
}

fn pong() -> ReadOutcome {
    ReadOutcome::Data("+PONG\r\n".to_string())
}

#[test]
fn hard_connection_limit_drops_excess_connections() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let fields = "      connection_limit: 2\n      hard_connection_limit: true\n";
    let shotover = Shotover::start(&topology(port, valkey.port, fields), port);
    // The connection that waited for the port must have been accepted and closed before
    // the test starts.
    let available = || metric_value(&shotover.metrics(), "shotover_available_connections_count{source=\"valkey\"}");
    let opened = || metric_sum(&shotover.metrics(), "connections_opened", "source=\"valkey\"");
    // The series appears once the worker has counted that connection, which may be a moment
    // after the port answered: wait for it too (metric_sum fails on a missing series).
    let counted = || shotover.metrics().contains("connections_opened{");
    assert!(
        wait_until(Duration::from_secs(5), || counted() && opened() >= 1.0 && available() == 2.0),
        "the connection that waited for the port was not counted and closed:\n{}",
        shotover.metrics()
    );
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(ping(&mut a, Duration::from_secs(5)), pong(), "{}", shotover.output());
    assert_eq!(ping(&mut b, Duration::from_secs(5)), pong(), "{}", shotover.output());
    assert_eq!(available(), 0.0);
    // The third connection is accepted by the kernel, then closed by the proxy: its PING is
    // never answered, and the proxy ends the stream (a hung connection fails here).
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(ping(&mut c, Duration::from_secs(5)), ReadOutcome::Closed, "the third connection must be closed");
    assert_eq!(available(), 0.0, "the closed connection took no slot");
    drop(a);
    assert!(wait_until(Duration::from_secs(5), || available() == 1.0), "{}", shotover.metrics());
    let mut d = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(ping(&mut d, Duration::from_secs(5)), pong());
    assert!(shotover.output().contains("connection limit reached"));
}

#[test]
fn soft_connection_limit_makes_excess_connections_wait() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let fields = "      connection_limit: 1\n      hard_connection_limit: false\n";
    let _shotover = Shotover::start(&topology(port, valkey.port, fields), port);
    let mut a = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(ping(&mut a, Duration::from_secs(5)), pong());
    let mut b = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(ping(&mut b, Duration::from_millis(500)), ReadOutcome::TimedOut, "the second connection must wait");
    drop(a);
    // Its PING was already sent; the reply comes once the first connection is gone.
    b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = b.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
}

#[test]
fn idle_timeout_closes_idle_connections_only() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let _shotover = Shotover::start(&topology(port, valkey.port, "      timeout: 1\n"), port);
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(ping(&mut idle, Duration::from_secs(5)), pong());
    let mut busy = connect(port);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(250));
        let _: () = busy.set("k", "v").unwrap();
    }
    // 2.5 s later the idle one is closed, the busy one still works.
    assert_closed_by_peer(&mut idle, Duration::from_secs(5), "the idle connection");
    assert_eq!(busy.get::<_, String>("k").unwrap(), "v");
}

/// The largest timeout YAML can give is a wait past what the clock can hold: it means
/// "never", and the core that arms it does not panic.
#[test]
fn the_largest_idle_timeout_serves_connections() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let shotover = Shotover::start(&topology(port, valkey.port, "      timeout: 18446744073709551615\n"), port);
    for _ in 0..2 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(ping(&mut c, Duration::from_secs(5)), pong());
    }
    assert!(!shotover.output().contains("panicked"), "{}", shotover.output());
}

#[test]
fn idle_timeout_counts_messages_pushed_to_a_subscriber() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let _shotover = Shotover::start(&topology(port, valkey.port, "      timeout: 1\n"), port);
    let mut sub = connect(port);
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("tick").unwrap();
    pubsub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let publisher = std::thread::spawn(move || {
        let mut c = connect(port);
        for i in 0..8 {
            std::thread::sleep(Duration::from_millis(300));
            let _: i64 = c.publish("tick", i).unwrap();
        }
    });
    for i in 0..8 {
        let msg = pubsub.get_message().expect("the subscriber was disconnected");
        assert_eq!(msg.get_payload::<i64>().unwrap(), i);
    }
    publisher.join().unwrap();
}
