//! Everything a client does on a direct connection works the same through the proxy.

use crate::Setup;
use redis::{Commands, RedisResult, Value};
use shotover_integration_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn strings_hashes_lists_sets_sorted_sets_and_expiry() {
    let s = Setup::new();
    let mut c = s.client();
    let _: () = c.set("k", "v").unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    assert_eq!(c.incr::<_, _, i64>("n", 5).unwrap(), 5);
    assert_eq!(c.get::<_, Option<String>>("missing").unwrap(), None);
    let mget: Vec<Option<String>> = redis::cmd("MGET").arg("k").arg("missing").query(&mut c).unwrap();
    assert_eq!(mget, vec![Some("v".to_string()), None]);

    let _: () = c.hset_multiple("h", &[("a", "1"), ("b", "2")]).unwrap();
    assert_eq!(c.hget::<_, _, String>("h", "b").unwrap(), "2");
    assert_eq!(c.hlen::<_, usize>("h").unwrap(), 2);

    let _: () = c.rpush("l", &["x", "y", "z"]).unwrap();
    assert_eq!(c.lrange::<_, Vec<String>>("l", 0, -1).unwrap(), vec!["x", "y", "z"]);
    assert_eq!(c.lpop::<_, String>("l", None).unwrap(), "x");

    let _: () = c.sadd("s", &["a", "b", "a"]).unwrap();
    assert_eq!(c.scard::<_, usize>("s").unwrap(), 2);
    assert!(c.sismember::<_, _, bool>("s", "b").unwrap());

    let _: () = c.zadd_multiple("z", &[(1.0, "one"), (3.0, "three"), (2.0, "two")]).unwrap();
    assert_eq!(c.zrange::<_, Vec<String>>("z", 0, -1).unwrap(), vec!["one", "two", "three"]);
    assert_eq!(c.zscore::<_, _, f64>("z", "two").unwrap(), 2.0);

    let _: () = c.set_ex("e", "gone", 1).unwrap();
    let ttl: i64 = c.ttl("e").unwrap();
    assert!(ttl == 1 || ttl == 0, "ttl {ttl}");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(c.get::<_, Option<String>>("e").unwrap(), None);

    // The proxy's reply bytes match a direct connection's.
    let direct: Value = redis::cmd("HGETALL").arg("h").query(&mut s.valkey.client()).unwrap();
    let proxied: Value = redis::cmd("HGETALL").arg("h").query(&mut c).unwrap();
    assert_eq!(direct, proxied);
}

#[test]
fn pipeline_of_1000_commands_keeps_order() {
    let s = Setup::new();
    let mut c = s.client();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        if i % 2 == 0 {
            pipe.set(format!("p{i}"), i);
        } else {
            pipe.get(format!("p{}", i - 1));
        }
    }
    let replies: Vec<Value> = pipe.query(&mut c).unwrap();
    assert_eq!(replies.len(), 1000);
    for (i, reply) in replies.iter().enumerate() {
        if i % 2 == 1 {
            assert_eq!(reply, &Value::BulkString((i - 1).to_string().into_bytes()), "reply {i}");
        } else {
            assert_eq!(reply, &Value::Okay, "reply {i}");
        }
    }
}

#[test]
fn multi_exec_and_watch() {
    let s = Setup::new();
    let mut c = s.client();
    let (a, b): (i64, i64) = redis::pipe().atomic().incr("ma", 1).incr("mb", 2).query(&mut c).unwrap();
    assert_eq!((a, b), (1, 2));

    // WATCH: a change by another client aborts the transaction.
    let mut other = s.client();
    let _: () = redis::cmd("WATCH").arg("w").query(&mut c).unwrap();
    let _: () = other.set("w", "changed").unwrap();
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let queued: String = redis::cmd("SET").arg("w").arg("mine").query(&mut c).unwrap();
    assert_eq!(queued, "QUEUED");
    let exec: Value = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(exec, Value::Nil, "EXEC after a watched key changed must abort");
    assert_eq!(c.get::<_, String>("w").unwrap(), "changed");
}

#[test]
fn lua_eval() {
    let s = Setup::new();
    let mut c = s.client();
    let script = redis::Script::new("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1]) .. '!'");
    let out: String = script.key("lua").arg("hi").invoke(&mut c).unwrap();
    assert_eq!(out, "hi!");
    let n: i64 = redis::cmd("EVAL").arg("return #KEYS").arg(2).arg("a").arg("b").query(&mut c).unwrap();
    assert_eq!(n, 2);
}

#[test]
fn subscribe_and_psubscribe_receive_published_messages() {
    let s = Setup::new();
    let mut sub_conn = s.client();
    let mut publisher = s.client();
    let mut pubsub = sub_conn.as_pubsub();
    pubsub.subscribe("news").unwrap();
    pubsub.psubscribe("sport.*").unwrap();
    pubsub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n: i64 = publisher.publish("news", "hello").unwrap();
    assert_eq!(n, 1);
    let _: i64 = publisher.publish("sport.tennis", "ace").unwrap();
    let m1 = pubsub.get_message().unwrap();
    assert_eq!((m1.get_channel_name(), m1.get_payload::<String>().unwrap()), ("news", "hello".to_string()));
    let m2 = pubsub.get_message().unwrap();
    assert_eq!((m2.get_channel_name(), m2.get_pattern::<String>().unwrap()), ("sport.tennis", "sport.*".to_string()));
    pubsub.unsubscribe("news").unwrap();
    pubsub.punsubscribe("sport.*").unwrap();
    drop(pubsub);
    // Back to normal commands on the same connection.
    let _: () = sub_conn.set("after", "1").unwrap();
    assert_eq!(sub_conn.get::<_, String>("after").unwrap(), "1");
}

/// Pushed messages are delivered while the same connection's reads race with them: every
/// published message arrives exactly once and in order, under a steady publish load.
#[test]
fn pubsub_under_pipelined_load_loses_nothing() {
    let s = Setup::new();
    let mut sub_conn = s.client();
    let mut pubsub = sub_conn.as_pubsub();
    pubsub.subscribe("load").unwrap();
    pubsub.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let port = s.port;
    let publisher = std::thread::spawn(move || {
        let mut c = connect(port);
        for batch in 0..20 {
            let mut pipe = redis::pipe();
            for i in 0..100 {
                pipe.publish("load", batch * 100 + i).ignore();
                pipe.incr("counter", 1).ignore();
            }
            let _: () = pipe.query(&mut c).unwrap();
        }
    });
    for expected in 0..2000 {
        let msg = pubsub.get_message().unwrap();
        assert_eq!(msg.get_payload::<i64>().unwrap(), expected);
    }
    publisher.join().unwrap();
}

#[test]
fn blpop_is_woken_by_another_client() {
    let s = Setup::new();
    let port = s.port;
    let waiter = std::thread::spawn(move || {
        let mut c = connect(port);
        let got: Option<(String, String)> = redis::cmd("BLPOP").arg("queue").arg(10).query(&mut c).unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut c = s.client();
    let _: () = c.rpush("queue", "job").unwrap();
    assert_eq!(waiter.join().unwrap(), Some(("queue".to_string(), "job".to_string())));
}

#[test]
fn select_is_isolated_per_connection() {
    let s = Setup::new();
    let mut a = s.client();
    let mut b = s.client();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut a).unwrap();
    let _: () = a.set("db", "three").unwrap();
    let _: () = b.set("db", "zero").unwrap();
    assert_eq!(a.get::<_, String>("db").unwrap(), "three");
    assert_eq!(b.get::<_, String>("db").unwrap(), "zero");
}

#[test]
fn auth_against_a_password_protected_server() {
    let s = Setup::with_valkey(ValkeyServer::start_with(&["--requirepass", "secret"]));
    let mut c = s.client();
    let err = c.get::<_, Option<String>>("k").unwrap_err();
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    let bad: RedisResult<()> = redis::cmd("AUTH").arg("wrong").query(&mut c);
    assert!(bad.unwrap_err().to_string().contains("WRONGPASS"));
    let _: () = redis::cmd("AUTH").arg("secret").query(&mut c).unwrap();
    let _: () = c.set("k", "v").unwrap();
    // Another connection through the same proxy is not authenticated by the first.
    let mut other = s.client();
    let err = other.get::<_, Option<String>>("k").unwrap_err();
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    let url = format!("redis://:secret@127.0.0.1:{}/", s.port);
    let mut authed = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert_eq!(authed.get::<_, String>("k").unwrap(), "v");
}

/// The length of the first complete RESP2/RESP3 value in `buf`, or None if it is not all there.
fn resp_value_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(&buf[1..line_end]).ok()?;
    let after = line_end + 2;
    match buf[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after),
        b'$' | b'!' | b'=' => match header.parse::<i64>().ok()? {
            n if n < 0 => Some(after),
            n => (buf.len() >= after + n as usize + 2).then_some(after + n as usize + 2),
        },
        kind @ (b'*' | b'~' | b'>' | b'%' | b'|') => {
            let count = header.parse::<i64>().ok()?;
            let items = if kind == b'%' || kind == b'|' { count * 2 } else { count };
            let mut at = after;
            for _ in 0..items.max(0) {
                at += resp_value_len(&buf[at..])?;
            }
            // An attribute is followed by the value it describes.
            if kind == b'|' {
                at += resp_value_len(&buf[at..])?;
            }
            Some(at)
        }
        other => panic!("not RESP: type byte {:?} in {:?}", other as char, String::from_utf8_lossy(buf)),
    }
}

/// Writes `request` and reads exactly one complete reply: its raw bytes.
fn raw_reply(stream: &mut TcpStream, request: &str) -> Vec<u8> {
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while resp_value_len(&reply) != Some(reply.len()) {
        assert!(resp_value_len(&reply).is_none(), "more than one reply to {request:?}: {reply:?}");
        let n = stream.read(&mut buf).unwrap_or_else(|e| panic!("{request:?}: {e}, after {reply:?}"));
        assert!(n > 0, "closed while reading the reply to {request:?}: {:?}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

/// A HELLO 3 reply with the value of its `id` field (the client id) replaced by `:0`: the
/// only field that differs between two connections.
fn hello_without_client_id(reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply).into_owned();
    let (before, after) = text.split_once("$2\r\nid\r\n:").unwrap_or_else(|| panic!("no id field: {text:?}"));
    let (_, rest) = after.split_once("\r\n").unwrap();
    format!("{before}$2\r\nid\r\n:0\r\n{rest}")
}

#[test]
fn resp3_via_hello_3() {
    let s = Setup::new();
    // The same RESP3 session on a direct connection and through the proxy: the reply bytes
    // must be identical (keys differ by prefix, which no reply contains).
    let session = |port: u16, prefix: &str| -> Vec<Vec<u8>> {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let hello = raw_reply(&mut c, "HELLO 3\r\n");
        let mut replies = vec![hello_without_client_id(&hello).into_bytes()];
        for request in [
            format!("HSET {prefix}h3 f v\r\n"),
            format!("HGETALL {prefix}h3\r\n"),
            format!("GET {prefix}nope\r\n"),
            format!("ZADD {prefix}z3 1.5 m\r\n"),
            format!("ZSCORE {prefix}z3 m\r\n"),
            format!("SADD {prefix}s3 a\r\n"),
            format!("SMEMBERS {prefix}s3\r\n"),
            format!("EXISTS {prefix}h3\r\n"),
        ] {
            replies.push(raw_reply(&mut c, &request));
        }
        replies
    };
    let direct = session(s.valkey.port, "direct:");
    let proxied = session(s.port, "proxied:");
    let show = |r: &[Vec<u8>]| r.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<Vec<_>>();
    assert_eq!(show(&proxied), show(&direct), "RESP3 replies through the proxy differ from Valkey's");
    // And they are RESP3: HELLO answers with a map that says proto 3, a hash is a map, a
    // null is `_`, a score a double, a set a set.
    let hello = String::from_utf8_lossy(&proxied[0]).into_owned();
    assert!(hello.starts_with('%') && hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello:?}");
    assert_eq!(
        show(&proxied[1..]),
        [
            ":1\r\n",
            "%1\r\n$1\r\nf\r\n$1\r\nv\r\n",
            "_\r\n",
            ":1\r\n",
            ",1.5\r\n",
            ":1\r\n",
            "~1\r\n$1\r\na\r\n",
            ":1\r\n"
        ]
    );

    // valkey-cli -3 prints the same through the proxy as from Valkey (HELLO's id aside).
    let cli = |port: u16, args: &[&str]| {
        let port = port.to_string();
        let mut all = vec!["-3", "-p", &port];
        all.extend(args);
        let (status, out) = run_tool("valkey-cli", &all);
        assert!(status.success(), "{out}");
        out
    };
    // Without a terminal it prints one `field value` line per map entry.
    let hello_lines = |out: String| {
        let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
        let id = lines.iter().position(|l| l.starts_with("id ")).unwrap_or_else(|| panic!("no id in {out}"));
        lines[id] = "id <client id>".to_string();
        lines
    };
    let from_proxy = hello_lines(cli(s.port, &["HELLO", "3"]));
    assert_eq!(from_proxy, hello_lines(cli(s.valkey.port, &["HELLO", "3"])));
    assert!(from_proxy.iter().any(|l| l == "proto 3"), "{from_proxy:?}");
    assert_eq!(cli(s.port, &["HGETALL", "proxied:h3"]), cli(s.valkey.port, &["HGETALL", "direct:h3"]));
    assert_eq!(cli(s.port, &["GET", "nope"]).trim(), "", "a null prints as nothing without a terminal");

    // redis-rs over RESP3: the same types arrive as RESP3 values.
    let url = format!("redis://127.0.0.1:{}/?protocol=resp3", s.port);
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = c.set("r3", 1.5).unwrap();
    let v: Value = redis::cmd("INCRBYFLOAT").arg("r3").arg(1).query(&mut c).unwrap();
    assert_eq!(v, Value::BulkString(b"2.5".to_vec()));
    let map: Value = redis::cmd("HGETALL").arg("proxied:h3").query(&mut c).unwrap();
    assert_eq!(map, Value::Map(vec![(Value::BulkString(b"f".to_vec()), Value::BulkString(b"v".to_vec()))]));
    let score: Value = redis::cmd("ZSCORE").arg("proxied:z3").arg("m").query(&mut c).unwrap();
    assert_eq!(score, Value::Double(1.5));
}

#[test]
fn valkey_cli_and_inline_commands() {
    let s = Setup::new();
    let port = s.port.to_string();
    let (status, out) = run_tool("valkey-cli", &["-p", &port, "SET", "cli", "works"]);
    assert!(status.success() && out.contains("OK"), "{out}");
    let (_, out) = run_tool("valkey-cli", &["-p", &port, "GET", "cli"]);
    assert_eq!(out.trim(), "works");
    // PING_INLINE and SET/GET from valkey-benchmark, pipelined and not: no errors.
    let (status, out) = run_tool(
        "valkey-benchmark",
        &["-p", &port, "-c", "10", "-n", "2000", "-t", "ping_inline,set,get", "-P", "8", "-q", "--csv"],
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("PING_INLINE") && out.contains("\"GET\""), "{out}");
}

#[test]
fn monitor_streams_commands_and_reset_ends_it() {
    use std::io::{Read, Write};
    let s = Setup::new();
    let mut monitor = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    monitor.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = monitor.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n");
    let mut other = s.client();
    let _: () = other.set("watched-key", "1").unwrap();
    let mut seen = String::new();
    while !seen.contains("watched-key") {
        let n = monitor.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    monitor.write_all(b"RESET\r\n").unwrap();
    let mut tail = String::new();
    while !tail.contains("+RESET\r\n") {
        let n = monitor.read(&mut buf).unwrap();
        assert!(n > 0);
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    monitor.write_all(b"PING\r\n").unwrap();
    let n = monitor.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
}
