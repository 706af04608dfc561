//! Upstream failures and bad client input: the protocol's error, then recovery.

use crate::Setup;
use redis::{Commands, RedisResult};
use shotover_integration_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn failed_requests(s: &Shotover) -> f64 {
    metric_value(&s.metrics(), "failed_requests{chain=\"valkey\",transform=\"ValkeySinkSingle\"}")
}

#[test]
fn valkey_down_at_start_then_up() {
    let valkey_port = free_port();
    let port = free_port();
    let shotover = Shotover::start(&valkey_topology(port, &sink_single(valkey_port)), port);
    let mut c = connect(port);
    let err: RedisResult<Option<String>> = c.get("k");
    let err = err.unwrap_err().to_string();
    assert!(err.contains("cannot connect to upstream"), "{err}");
    // redis-rs also sent CLIENT SETINFO on connect: those failed too.
    let failed = failed_requests(&shotover);
    assert!(failed >= 1.0, "{failed}");

    let _valkey = ValkeyServer::start_on(valkey_port, &[]);
    let _: () = c.set("k", "v").unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    assert_eq!(failed_requests(&shotover), failed, "no failures once the upstream is up");
}

#[test]
fn valkey_killed_mid_run_then_back() {
    let mut s = Setup::new();
    let mut c = s.client();
    let _: () = redis::cmd("SELECT").arg(2).query(&mut c).unwrap();
    let _: () = c.set("k", "v").unwrap();
    s.valkey.kill();
    let err: RedisResult<Option<String>> = c.get("k");
    assert!(err.is_err(), "a request to a dead upstream must get an error reply");
    // Every request of a pipeline gets its own error reply.
    let results: RedisResult<Vec<Option<String>>> = redis::pipe().get("a").get("b").query(&mut c);
    assert!(results.is_err());
    s.valkey.restart();
    let _: () = c.set("k2", "v2").unwrap();
    assert_eq!(c.get::<_, String>("k2").unwrap(), "v2");
    // The session (SELECT 2) was restored on the new upstream connection.
    let mut direct = s.valkey.client();
    let _: () = redis::cmd("SELECT").arg(2).query(&mut direct).unwrap();
    assert_eq!(direct.get::<_, String>("k2").unwrap(), "v2");
    assert!(failed_requests(&s.shotover) >= 3.0);
}

#[test]
fn malformed_resp_closes_only_that_connection() {
    let s = Setup::new();
    let mut good = s.client();
    let _: () = good.set("before", "1").unwrap();

    let mut bad = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A valid PING, then an array with a non-numeric length.
    bad.write_all(b"*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n").unwrap();
    let mut reply = Vec::new();
    bad.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("+PONG\r\n-ERR Protocol error"), "{reply:?}");

    assert_eq!(good.get::<_, String>("before").unwrap(), "1");
    let mut fresh = s.client();
    let _: () = fresh.set("after", "2").unwrap();
    assert!(s.shotover.wait_for_log("malformed request", Duration::from_secs(5)), "{}", s.shotover.output());
    let line = s.shotover.output().lines().find(|l| l.contains("malformed request")).unwrap_or_default().to_string();
    assert!(line.contains("WARN") && line.contains("connection="), "{line}");
}

#[test]
fn garbage_bytes_and_huge_lengths_do_not_hurt_the_proxy() {
    let s = Setup::new();
    // What Valkey refuses gets an error reply, then the proxy closes the connection (a
    // timeout fails the test); malformed.rs compares every case with Valkey byte for byte.
    for (payload, expected) in [
        (&b"*99999999999999999999\r\n"[..], "-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n$?\r\n", "-ERR Protocol error: invalid bulk length\r\n"),
    ] {
        let mut bad = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        bad.write_all(payload).unwrap();
        let mut reply = String::new();
        loop {
            match read_once(&mut bad, Duration::from_secs(5)) {
                ReadOutcome::Data(data) => reply.push_str(&data),
                ReadOutcome::Closed => break,
                ReadOutcome::TimedOut => panic!("{payload:?}: still open after {reply:?}"),
            }
        }
        assert_eq!(reply, expected, "{payload:?}");
    }
    // What Valkey reads as an inline command it does not know gets that error, and the
    // connection goes on, as on a direct connection.
    let until_pong = |port: u16, payload: &[u8]| {
        let mut odd = TcpStream::connect(("127.0.0.1", port)).unwrap();
        odd.write_all(payload).unwrap();
        odd.write_all(b"PING\r\n").unwrap();
        let mut reply = String::new();
        while !reply.ends_with("+PONG\r\n") {
            match read_once(&mut odd, Duration::from_secs(5)) {
                ReadOutcome::Data(data) => reply.push_str(&data),
                other => panic!("{payload:?}: {other:?} after {reply:?}"),
            }
        }
        reply
    };
    for payload in [&b"$-7\r\n"[..], b"*1\r\n$1\r\nab\r\n"] {
        let direct = until_pong(s.valkey.port, payload);
        assert!(direct.starts_with("-ERR unknown command"), "{payload:?}: Valkey said {direct:?}");
        assert_eq!(until_pong(s.port, payload), direct, "{payload:?}");
    }
    let mut c = s.client();
    let _: () = c.set("still", "alive").unwrap();
    assert_eq!(c.get::<_, String>("still").unwrap(), "alive");
}

#[test]
fn session_with_auth_then_hello_3_survives_an_upstream_restart() {
    let mut s = Setup::with_valkey(ValkeyServer::start_with(&["--requirepass", "secret"]));
    let url = format!("redis://127.0.0.1:{}/", s.port);
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("AUTH").arg("secret").query(&mut c).unwrap();
    let hello: redis::Value = redis::cmd("HELLO").arg(3).query(&mut c).unwrap();
    assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");
    s.valkey.restart();
    // The first request after the restart may fail; afterwards the session (AUTH, then
    // HELLO 3) is back: replies are RESP3 maps again.
    let _ = redis::cmd("PING").query::<redis::Value>(&mut c);
    let _: () = redis::cmd("HSET").arg("h").arg("f").arg("v").query(&mut c).unwrap();
    let map: redis::Value = redis::cmd("HGETALL").arg("h").query(&mut c).unwrap();
    assert!(matches!(map, redis::Value::Map(_)), "expected a RESP3 map: {map:?}");
}

#[test]
fn upstream_closing_an_idle_connection_is_invisible_to_the_client() {
    // Valkey closes clients idle for 1 s; the proxy reconnects before sending.
    let s = Setup::with_valkey(ValkeyServer::start_with(&["--timeout", "1"]));
    let mut c = s.client();
    let _: () = c.set("k", "v").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    assert_eq!(failed_requests(&s.shotover), 0.0);
}
