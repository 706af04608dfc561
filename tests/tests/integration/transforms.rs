//! The non-sink transforms, driven by real clients.

use redis::{Commands, RedisResult, Value};
use shotover_integration_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const FILTERED: &str = "ERR Message was filtered out by shotover";

fn proxy(chain: &str) -> (Shotover, u16) {
    let port = free_port();
    (Shotover::start(&valkey_topology(port, chain), port), port)
}

#[test]
fn query_type_filter_allow_list_answers_filtered_requests_with_errors() {
    let valkey = ValkeyServer::start();
    let chain = format!("        - QueryTypeFilter:\n            AllowList: [Read]\n{}", sink_single(valkey.port));
    let (_s, port) = proxy(&chain);
    let mut c = connect(port);
    let err: RedisResult<()> = c.set("k", "v");
    assert!(err.unwrap_err().to_string().contains("filtered out by shotover"));
    assert_eq!(c.get::<_, Option<String>>("k").unwrap(), None);
    // Order is kept in a pipeline (one write) that mixes allowed and filtered requests.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"PING\r\nSET a 1\r\nEXISTS a\r\nDEL a\r\nECHO end\r\n").unwrap();
    let expected = format!("+PONG\r\n-{FILTERED}\r\n:0\r\n-{FILTERED}\r\n$3\r\nend\r\n");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < expected.len() {
        let n = raw.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), expected);
    // Server administration is not a read.
    let config: RedisResult<()> = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query(&mut c);
    assert!(config.unwrap_err().to_string().contains("filtered out"));
    // Nothing filtered reached Valkey.
    assert!(!valkey.client().exists::<_, bool>("k").unwrap());
}

#[test]
fn query_type_filter_deny_list() {
    let valkey = ValkeyServer::start();
    let chain = format!(
        "        - QueryTypeFilter:\n            DenyList: [Write, ReadWrite, SchemaChange, PubSubMessage]\n{}",
        sink_single(valkey.port)
    );
    let (_s, port) = proxy(&chain);
    let mut c = connect(port);
    assert!(c.incr::<_, _, i64>("n", 1).is_err());
    assert!(redis::cmd("FLUSHALL").query::<()>(&mut c).is_err());
    assert!(c.publish::<_, _, i64>("ch", "x").is_err());
    let _: () = valkey.client().set("seen", "yes").unwrap();
    assert_eq!(c.get::<_, String>("seen").unwrap(), "yes");
}

#[test]
fn debug_returner_answers_every_request() {
    let (_s, port) = proxy("        - DebugReturner:\n            Valkey: \"42\"\n");
    let mut c = connect(port);
    assert_eq!(c.get::<_, String>("anything").unwrap(), "42");
    let out: Vec<String> = redis::pipe().get("a").get("b").query(&mut c).unwrap();
    assert_eq!(out, vec!["42", "42"]);
}

#[test]
fn debug_returner_fail_gives_errors_and_keeps_the_connection() {
    let (s, port) = proxy("        - DebugReturner: Fail\n");
    let mut c = connect(port);
    for _ in 0..3 {
        let err = c.get::<_, String>("a").unwrap_err().to_string();
        assert!(err.contains("Intentional fail"), "{err}");
    }
    let m = s.metrics();
    assert!(metric_value(&m, "shotover_chain_failures_count{chain=\"valkey\"}") >= 3.0, "{m}");
    assert!(metric_value(&m, "shotover_transform_failures_count{transform=\"DebugReturner\"}") >= 3.0, "{m}");
}

#[test]
fn null_sink_answers_nil() {
    let (_s, port) = proxy("        - NullSink\n");
    let mut c = connect(port);
    assert_eq!(c.get::<_, Option<String>>("a").unwrap(), None);
    let v: Value = redis::cmd("SET").arg("a").arg("b").query(&mut c).unwrap();
    assert_eq!(v, Value::Nil);
}

/// A reply nested deeper than the proxy parses (a Lua table 1000 levels deep, 4 KB) reaches
/// the client byte for byte; DebugPrinter logs it as unparseable instead of recursing into it.
#[test]
fn a_reply_nested_1000_deep_passes_through_debug_printer_unchanged() {
    let valkey = ValkeyServer::start();
    let chain = format!("        - DebugPrinter\n{}", sink_single(valkey.port));
    let (s, port) = proxy(&chain);
    let script = "local t = {} local c = t for i = 1, 999 do local n = {} c[1] = n c = n end c[1] = 7 return t";
    let request = format!("*3\r\n$4\r\nEVAL\r\n${}\r\n{script}\r\n$1\r\n0\r\n", script.len());
    let expected = format!("{}:7\r\n", "*1\r\n".repeat(1000));
    let exchange = |port: u16| {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while got.len() < expected.len() {
            let n = c.read(&mut buf).expect("the whole reply within 5 s");
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        String::from_utf8(got).unwrap()
    };
    assert_eq!(exchange(valkey.port), expected, "Valkey's own reply");
    assert_eq!(exchange(port), expected, "through the proxy");
    assert!(s.wait_for_log("nested more than 64 deep", Duration::from_secs(5)), "{}", s.output());
}

#[test]
fn debug_printer_logs_requests_and_responses() {
    let valkey = ValkeyServer::start();
    let chain = format!("        - DebugPrinter\n{}", sink_single(valkey.port));
    let (s, port) = proxy(&chain);
    let mut c = connect(port);
    let _: () = c.set("printed", "value").unwrap();
    assert!(s.wait_for_log("printed", Duration::from_secs(5)));
    let out = s.output();
    assert!(out.contains("Request:") && out.contains("Response:"), "{out}");
    assert_eq!(c.get::<_, String>("printed").unwrap(), "value");
}
