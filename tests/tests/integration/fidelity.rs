//! Valkey fidelity through ValkeySinkSingle: what a client sees through the proxy is what it
//! sees on a direct connection, byte for byte and in the same order, and a client that
//! leaves takes nothing with it.
//!
//! Most tests run the same bytes on a direct connection and through the proxy and compare
//! everything read. A conversation ends with `ECHO <marker>`, and is read until that
//! marker's reply: never until a read times out, which would prove nothing.

use crate::Setup;
use shotover_integration_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A raw connection.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw(stream)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    /// Reads until what was read ends with `end`; a read timeout fails the test.
    pub fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        while !got.ends_with(end) {
            match self.0.read(&mut buf) {
                Ok(0) => panic!("connection closed before {:?}; got {:?}", lossy(end), lossy(&got)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("no {:?} within the timeout ({e}); got {:?}", lossy(end), lossy(&got)),
            }
        }
        got
    }

    /// Reads until the server closes the connection; a read timeout fails the test.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("the connection did not close ({e}); got {:?}", lossy(&got)),
            }
        }
    }

    /// Sends `bytes` then `ECHO <marker>`, and returns everything read up to that echo,
    /// the echo itself left out.
    pub fn talk(&mut self, bytes: &[u8]) -> Vec<u8> {
        // The echo's reply, `$20\r\n<marker>\r\n`, in RESP2 and RESP3 alike.
        const ECHOED: &[u8] = b"$20\r\nfidelity-marker-7f3a\r\n";
        self.send(bytes);
        self.send(b"ECHO fidelity-marker-7f3a\r\n");
        let mut got = self.read_until(ECHOED);
        got.truncate(got.len() - ECHOED.len());
        got
    }
}

pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `steps` (bytes sent before each marker) on a connection to `port`.
fn conversation(port: u16, steps: &[&[u8]]) -> Vec<String> {
    let mut raw = Raw::connect(port);
    steps.iter().map(|step| lossy(&raw.talk(step))).collect()
}

/// The same steps directly and through the proxy give the same bytes. The database is
/// emptied before each, so what the direct run wrote cannot stand in for the proxied run.
fn same_as_direct(s: &Setup, steps: &[&[u8]]) -> Vec<String> {
    let flush = || redis::cmd("FLUSHALL").query::<()>(&mut s.valkey.client()).unwrap();
    flush();
    let direct = conversation(s.valkey.port, steps);
    flush();
    let proxied = conversation(s.port, steps);
    assert_eq!(proxied, direct, "through the proxy (left) and direct (right) differ");
    direct
}

#[test]
fn unsubscribe_when_not_subscribed_gets_the_servers_one_reply_and_the_connection_goes_on() {
    let s = Setup::new();
    let replies = same_as_direct(
        &s,
        &[
            b"UNSUBSCRIBE foo bar quux\r\n",
            b"PING\r\n",
            b"PUNSUBSCRIBE a* b*\r\n",
            b"SUNSUBSCRIBE s1 s2\r\n",
            b"*1\r\n$11\r\nUNSUBSCRIBE\r\n",
            b"PING\r\n",
        ],
    );
    assert_eq!(replies[1], "+PONG\r\n");
}

#[test]
fn subscribing_to_many_channels_and_unsubscribing_from_all_match_a_direct_connection() {
    let s = Setup::new();
    let replies = same_as_direct(
        &s,
        &[b"SUBSCRIBE a b c\r\nPSUBSCRIBE p*\r\nPING\r\nUNSUBSCRIBE\r\nPUNSUBSCRIBE\r\n", b"PING\r\n"],
    );
    // 3 subscribe, 1 psubscribe, 3 unsubscribe, 1 punsubscribe.
    assert_eq!(replies[0].matches("subscribe").count(), 8, "{replies:?}");
    assert_eq!(replies[1], "+PONG\r\n");
}

#[test]
fn client_reply_off_skip_and_on_behave_as_on_a_direct_connection() {
    let s = Setup::new();
    let replies = same_as_direct(
        &s,
        &[
            b"CLIENT REPLY OFF\r\nSET fk1 v1\r\nGET fk1\r\nCLIENT REPLY ON\r\nGET fk1\r\n",
            b"CLIENT REPLY SKIP\r\nGET fk1\r\nGET fk1\r\n",
            b"CLIENT REPLY BOGUS\r\n",
        ],
    );
    assert_eq!(replies[0], "+OK\r\n$2\r\nv1\r\n");
    assert_eq!(replies[1], "$2\r\nv1\r\n");
    // The SET sent through the proxy with replies off did run (the database was emptied
    // before the proxied conversation).
    let value: String = redis::cmd("GET").arg("fk1").query(&mut s.valkey.client()).unwrap();
    assert_eq!(value, "v1");
}

#[test]
fn hello_switches_the_protocol_mid_connection() {
    let s = Setup::new();
    let setup = |port: u16| {
        let mut raw = Raw::connect(port);
        raw.talk(b"DEL fz\r\nZADD fz 1.5 a 2 b\r\n");
        // HELLO's reply names the connection (its id), so it is read but not compared.
        raw.talk(b"HELLO 3\r\n");
        let resp3 = lossy(&raw.talk(b"ZRANGE fz 0 -1 WITHSCORES\r\nHGETALL nohash\r\nGET nokey\r\n"));
        raw.talk(b"HELLO 2\r\n");
        let resp2 = lossy(&raw.talk(b"ZRANGE fz 0 -1 WITHSCORES\r\nGET nokey\r\n"));
        (resp3, resp2)
    };
    let direct = setup(s.valkey.port);
    assert_eq!(setup(s.port), direct);
    assert!(direct.0.contains(",1.5\r\n") && direct.0.contains("_\r\n"), "RESP3 doubles and nulls: {direct:?}");
    assert!(direct.1.contains("$-1\r\n"), "RESP2 null: {direct:?}");
}

#[test]
fn resp3_commands_on_a_subscribed_connection_keep_their_pushes_in_place() {
    // In RESP3 a subscribed connection runs any command. A PUBLISH to its own channel makes
    // Valkey push the message right after PUBLISH's reply, before the next command's.
    let s = Setup::new();
    let run = |port: u16| {
        let mut raw = Raw::connect(port);
        raw.talk(b"HELLO 3\r\n");
        lossy(
            &raw.talk(b"SUBSCRIBE r3ch\r\nPUBLISH r3ch hi\r\nGET nokey\r\nPUBLISH r3ch again\r\nUNSUBSCRIBE r3ch\r\n"),
        )
    };
    let direct = run(s.valkey.port);
    assert!(direct.contains(":1\r\n>3\r\n$7\r\nmessage\r\n$4\r\nr3ch\r\n$2\r\nhi\r\n_\r\n"), "{direct:?}");
    assert_eq!(run(s.port), direct);
}

#[test]
fn reset_ends_subscriptions_and_quit_closes_like_valkey() {
    let s = Setup::new();
    same_as_direct(&s, &[b"SUBSCRIBE r1 r2\r\nRESET\r\n", b"PING\r\n"]);
    let quit = |port: u16| {
        let mut raw = Raw::connect(port);
        raw.send(b"PING\r\nQUIT\r\nPING\r\nSET after-quit 1\r\n");
        lossy(&raw.read_to_end())
    };
    let direct = quit(s.valkey.port);
    assert_eq!(direct, "+PONG\r\n+OK\r\n");
    assert_eq!(quit(s.port), direct, "the proxy closes after QUIT's reply, and answers nothing after it");
    let exists: i64 = redis::cmd("EXISTS").arg("after-quit").query(&mut s.valkey.client()).unwrap();
    assert_eq!(exists, 0, "nothing after QUIT ran");
}

#[test]
fn monitor_streams_and_reset_ends_it() {
    let s = Setup::new();
    let mut raw = Raw::connect(s.port);
    raw.send(b"MONITOR\r\n");
    assert_eq!(raw.read_until(b"\r\n"), b"+OK\r\n");
    let mut other = s.valkey.client();
    let _: () = redis::cmd("SET").arg("monitored-key").arg("1").query(&mut other).unwrap();
    let line = lossy(&raw.read_until(b"\"monitored-key\" \"1\"\r\n"));
    assert!(line.starts_with('+') && line.contains("\"SET\""), "{line:?}");
    raw.send(b"RESET\r\n");
    let rest = lossy(&raw.read_until(b"+RESET\r\n"));
    assert!(rest.lines().all(|l| l.starts_with('+')), "only MONITOR lines before +RESET: {rest:?}");
    assert_eq!(lossy(&raw.talk(b"PING\r\n")), "+PONG\r\n");
}

#[test]
fn a_resp3_push_keeps_its_place_before_the_reply_it_came_with() {
    // An eviction during GETBIT invalidates a tracked key: Valkey writes the invalidation
    // push, then GETBIT's reply. The client must see that order through the proxy too.
    let s = Setup::new();
    let mut admin = s.valkey.client();
    let run = |port: u16, admin: &mut redis::Connection| {
        let _: () = redis::cmd("FLUSHALL").query(admin).unwrap();
        let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query(admin).unwrap();
        let _: () =
            redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("volatile-random").query(admin).unwrap();
        let mut raw = Raw::connect(port);
        raw.talk(b"HELLO 3\r\n");
        let mut seen =
            vec![lossy(&raw.talk(b"CLIENT TRACKING on\r\nSET volatile-key v EX 1000\r\nGET volatile-key\r\n"))];
        let info: String = redis::cmd("INFO").arg("memory").query(admin).unwrap();
        let used: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory");
        let limit = (used + 512 * 1024).to_string();
        let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(&limit).query(admin).unwrap();
        seen.push(lossy(&raw.talk(b"SETBIT bigkey 8388608 1\r\nGETBIT bigkey 0\r\n")));
        let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query(admin).unwrap();
        seen
    };
    let direct = run(s.valkey.port, &mut admin);
    assert!(direct[1].contains("invalidate"), "the scenario must produce a push: {direct:?}");
    let push_at = direct[1].find("invalidate").unwrap();
    assert!(push_at < direct[1].rfind(":0\r\n").unwrap(), "push before GETBIT's reply: {direct:?}");
    assert_eq!(run(s.port, &mut admin), direct);
}

#[test]
fn a_huge_inline_pipeline_is_answered_in_full_and_in_order() {
    let s = Setup::new();
    let pid = s.shotover.pid();
    let rss_before = rss_kib(pid);
    let mut raw = Raw::connect(s.port);
    let writer = raw.0.try_clone().unwrap();
    const PAIRS: usize = 100_000;
    // Everything is written before a single reply is read.
    let sent = std::thread::spawn(move || {
        let mut writer = writer;
        let mut request = Vec::with_capacity(PAIRS * 40);
        for i in 0..PAIRS {
            request.extend_from_slice(format!("SET key:{i} v{i}\r\nGET key:{i}\r\n").as_bytes());
        }
        writer.write_all(&request).unwrap();
    });
    sent.join().unwrap();
    let mut expected = Vec::with_capacity(PAIRS * 20);
    for i in 0..PAIRS {
        let value = format!("v{i}");
        expected.extend_from_slice(format!("+OK\r\n${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    let last = format!("v{}\r\n", PAIRS - 1);
    let got = raw.read_until(last.as_bytes());
    assert!(got == expected, "{} bytes read, {} expected; they differ", got.len(), expected.len());
    let growth = rss_kib(pid).saturating_sub(rss_before);
    assert!(growth < 64 * 1024, "the proxy grew by {growth} KiB for one pipelining client");
}

pub fn blocked_clients(admin: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(admin).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("blocked_clients in INFO clients")
}

/// Three clients block on an empty list through the proxy, then leave. The server must
/// stop blocking for them at once, and an element pushed afterwards must stay in the list.
/// The keys share a hash tag, so that a cluster serves them too (`admin` must reach them).
pub fn orphaned_blocking_commands_steal_nothing(
    proxy_port: u16,
    mut blocked: impl FnMut() -> u64,
    mut admin: redis::Connection,
) {
    let mut clients: Vec<Raw> = (0..3).map(|_| Raw::connect(proxy_port)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let command = match i {
            0 => "BLPOP {orphan}list 0\r\n",
            1 => "BRPOP {orphan}list 0\r\n",
            _ => "BLMOVE {orphan}list {orphan}dest LEFT RIGHT 0\r\n",
        };
        c.send(command.as_bytes());
    }
    assert!(wait_until(Duration::from_secs(5), || blocked() == 3), "the three clients never blocked");
    let left = Instant::now();
    drop(clients);
    let mut unblocked_after = None;
    while left.elapsed() < Duration::from_secs(2) {
        if blocked() == 0 {
            unblocked_after = Some(left.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = unblocked_after.expect("the server still blocks for clients that left");
    assert!(after <= Duration::from_millis(100), "blocked_clients went to 0 only after {after:?}");
    let _: () = redis::cmd("LPUSH").arg("{orphan}list").arg("x").query(&mut admin).unwrap();
    let list: Vec<String> = redis::cmd("LRANGE").arg("{orphan}list").arg(0).arg(-1).query(&mut admin).unwrap();
    assert_eq!(list, vec!["x"], "an element pushed after the clients left is still there");
}

#[test]
fn a_client_that_leaves_while_blocked_takes_nothing_with_it() {
    let s = Setup::new();
    let mut counter = s.valkey.client();
    orphaned_blocking_commands_steal_nothing(s.port, || blocked_clients(&mut counter), s.valkey.client());
}

/// A request sent while a blocking command waits is answered as soon as the block ends,
/// as on a direct connection, without the client having to send anything more. (The proxy
/// reads such bytes early, to see a blocked client go away; they were left unread until the
/// client sent more, so a client waiting for their answer waited for good.)
#[test]
fn a_request_sent_while_a_blocking_command_waits_is_answered_when_it_ends() {
    let s = Setup::new();
    let mut admin = s.valkey.client();
    for (target, port) in [("direct", s.valkey.port), ("proxy", s.port)] {
        let key = format!("waiting-{target}");
        let mut raw = Raw::connect(port);
        raw.send(format!("*3\r\n$5\r\nBLPOP\r\n${}\r\n{key}\r\n$1\r\n0\r\n", key.len()).as_bytes());
        let deadline = Instant::now() + Duration::from_secs(5);
        while blocked_clients(&mut admin) == 0 {
            assert!(Instant::now() < deadline, "{target}: BLPOP never blocked");
            std::thread::sleep(Duration::from_millis(10));
        }
        raw.send(b"*2\r\n$4\r\nECHO\r\n$5\r\nafter\r\n");
        // Long enough for the proxy to have read the ECHO while BLPOP still waits.
        std::thread::sleep(Duration::from_millis(200));
        let _: i64 = redis::cmd("RPUSH").arg(&key).arg("x").query(&mut admin).unwrap();
        let got = lossy(&raw.read_until(b"$5\r\nafter\r\n"));
        assert_eq!(got, format!("*2\r\n${}\r\n{key}\r\n$1\r\nx\r\n$5\r\nafter\r\n", key.len()), "{target}");
    }
}
