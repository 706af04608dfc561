//! Malformed and unusual client input: the proxy is invisible. For each input, a client sees
//! through the proxy exactly the bytes a direct connection to Valkey gives, and the
//! connection closes (or stays open) as Valkey's does.
//!
//! The answers of Valkey 8.0.1 to these inputs are listed in `Scanner::scan_request`'s unit
//! tests (crates/protocols/src/valkey/framing/tests.rs); here they are compared live.

use crate::Setup;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a connection is read before it counts as staying open.
const WAIT: Duration = Duration::from_secs(2);

/// How a read of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closed: end of stream.
    Eof,
    /// The server closed with unread input left on its side, which the kernel reports as a
    /// reset. Still a close by the server.
    Reset,
    /// Nothing more within [`WAIT`]: the connection stayed open. Never a close.
    Open,
}

impl End {
    fn closed(self) -> bool {
        matches!(self, End::Eof | End::Reset)
    }
}

/// Sends `input` on a new connection to `port` and reads until the server closes or
/// [`WAIT`] passes.
fn exchange(port: u16, input: &[u8]) -> (Vec<u8>, End) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The server may close before it has read everything (a too big line): reading still
    // tells what it answered.
    let _ = stream.write_all(input);
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, End::Open);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (out, End::Open),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
                return (out, End::Reset)
            }
            Err(e) => panic!("reading from {port}: {e}"),
        }
    }
}

fn repeat(prefix: &[u8], fill: u8, n: usize) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.resize(prefix.len() + n, fill);
    v
}

/// (name, input, whether Valkey closes the connection): the last is only a check that the
/// case tests what it means to; the comparison is with the live server.
fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let c = |name, input: &[u8], closes| (name, input.to_vec(), closes);
    vec![
        // Skipped without a reply.
        c("empty line, then PING", b"\r\nPING\r\n", false),
        c("bare LF, then PING", b"\nPING\r\n", false),
        c("blank line, then PING", b"   \t \r\nPING\r\n", false),
        c("three empty lines, then PING", b"\r\n\r\n\r\nPING\r\n", false),
        c("*0, then PING", b"*0\r\nPING\r\n", false),
        c("*-1, then PING", b"*-1\r\nPING\r\n", false),
        c("*-10, then PING", b"*-10\r\nPING\r\n", false),
        c("PING, empty line, *0, *-1, PING", b"*1\r\n$4\r\nPING\r\n\r\n*0\r\n*-1\r\nPING\r\n", false),
        // invalid multibulk length
        c("*-0", b"*-0\r\nPING\r\n", true),
        c("*01", b"*01\r\n$4\r\nPING\r\n", true),
        c("*+1", b"*+1\r\n$4\r\nPING\r\n", true),
        c("*x", b"*x\r\nPING\r\n", true),
        c("* without a count", b"*\r\nPING\r\n", true),
        c("*1 with a trailing space", b"*1 \r\n$4\r\nPING\r\n", true),
        c("*2147483648", b"*2147483648\r\nPING\r\n", true),
        c("PING, PING, then *x", b"PING\r\n*1\r\n$4\r\nPING\r\n*x\r\n", true),
        // expected '$', got ...
        c("*2147483647, then PING", b"*2147483647\r\nPING\r\n", true),
        c("element foo", b"*1\r\nfoo\r\nPING\r\n", true),
        c("empty element line", b"*1\r\n\r\nPING\r\n", true),
        c("element starting with LF", b"*1\r\n\nfoo\r\n", true),
        c("element :1", b"*1\r\n:1\r\n", true),
        c("element byte 0xff", b"*1\r\n\xff\r\n", true),
        c("nested array", b"*1\r\n*1\r\n$4\r\nPING\r\n", true),
        c("ECHO, then an array", b"*2\r\n$4\r\nECHO\r\n*1\r\n", true),
        // invalid bulk length
        c("$-1 in a request", b"*1\r\n$-1\r\nPING\r\n", true),
        c("SET k $-1", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$-1\r\n", true),
        c("$x", b"*1\r\n$x\r\n", true),
        c("$ without a length", b"*1\r\n$\r\n", true),
        c("$-0", b"*2\r\n$4\r\nECHO\r\n$-0\r\n", true),
        c("$01", b"*2\r\n$4\r\nECHO\r\n$01\r\na\r\n", true),
        c("$ over proto-max-bulk-len", b"*1\r\n$536870913\r\n", true),
        c("$ at proto-max-bulk-len, waiting", b"*1\r\n$536870912\r\n", false),
        // Line ends as Valkey finds them.
        c("count line ended by CR and any byte", b"*1\rX$4\r\nPING\r\n", false),
        c("bulk data followed by two unchecked bytes", b"*1\r\n$4\r\nPINGxx*1\r\n$4\r\nPING\r\n", false),
        c("bulk data shorter than its length", b"*1\r\n$3\r\nPINGxx*1\r\n$4\r\nPING\r\n", false),
        c("bulk of 1 followed by ab", b"*1\r\n$1\r\nab\r\n", false),
        c("count line waiting for the byte after CR", b"*1\r", false),
        c("inline with CR CR LF", b"PING\r\r\nPING\r\n", false),
        c("inline with bare LFs", b"PING\n\nPING\n", false),
        // NUL bytes: Valkey's strchr stops at them, so these wait.
        c("NUL in an inline line", b"PI\0NG\r\nPING\r\n", false),
        c("NUL first in an inline line", b"\0PING\r\nPING\r\n", false),
        c("NUL in the count line", b"*1\0\r\n$4\r\nPING\r\n", false),
        c("NUL in bulk data", b"*2\r\n$4\r\nECHO\r\n$3\r\na\0b\r\n", false),
        // Only `*` starts a multibulk.
        c("$4 then PING, inline", b"$4\r\nPING\r\n", false),
        c("+PING, inline", b"+PING\r\n", false),
        c(":1, inline", b":1\r\n", false),
        // Inline quoting (sdssplitargs).
        c("unbalanced double quote", b"SET \"k\r\nPING\r\n", true),
        c("unbalanced single quote", b"SET 'k\r\nPING\r\n", true),
        c("closing quote followed by a letter", b"ECHO \"a\"b\r\nPING\r\n", true),
        c("escaped closing quote", b"ECHO \"a\\\"\r\n", true),
        c("PING, then unbalanced quote", b"PING\r\nECHO 'a\r\n", true),
        c("quote inside a word", b"ECHO a\"b c\"\r\n", false),
        c("hex escapes", b"ECHO \"\\x41\\x4\\n\"\r\n", false),
        c("escaped single quote", b"ECHO 'a\\'b'\r\n", false),
        c("closing quote then VT", b"ECHO \"a\"\x0bb\r\n", false),
        c("VT inside a word", b"ECHO a\x0bb\r\n", false),
        c("empty quoted argument", b"ECHO \"\"\r\n", false),
        // Too big lines.
        c("inline line of 64 KiB, waiting", &repeat(b"", b'a', 64 * 1024), false),
        c("too big inline request", &repeat(b"", b'a', 70_000), true),
        c("too big inline request after a NUL", &repeat(b"PING\0\r\n", b'a', 70_000), true),
        c("too big mbulk count string", &repeat(b"*", b'1', 70_000), true),
        c("too big bulk count string", &repeat(b"*1\r\n$", b'1', 70_000), true),
        c("too big bulk count string, before its $", &repeat(b"*1\r\n", b'X', 70_000), true),
    ]
}

#[test]
fn malformed_and_unusual_requests_get_valkeys_bytes_and_close() {
    let s = Setup::new();
    let (direct, proxy) = (s.valkey.port, s.port);
    // Every case waits up to WAIT on both connections: all at once.
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = cases()
            .into_iter()
            .map(|(name, input, closes)| {
                scope.spawn(move || {
                    let copy = input.clone();
                    let via_valkey = std::thread::spawn(move || exchange(direct, &copy));
                    let via_proxy = exchange(proxy, &input);
                    (name, closes, via_valkey.join().unwrap(), via_proxy)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for (name, closes, (valkey_bytes, valkey_end), (proxy_bytes, proxy_end)) in results {
        assert_eq!(valkey_end.closed(), closes, "{name}: Valkey did not behave as the case expects: {valkey_end:?}");
        if valkey_bytes != proxy_bytes || valkey_end.closed() != proxy_end.closed() {
            failures.push(format!(
                "{name}:\n  valkey {valkey_end:?} {:?}\n  proxy  {proxy_end:?} {:?}",
                String::from_utf8_lossy(&valkey_bytes),
                String::from_utf8_lossy(&proxy_bytes)
            ));
        }
    }
    assert!(failures.is_empty(), "the proxy differs from Valkey:\n{}", failures.join("\n"));
    // The proxy is still fine.
    let mut c = s.client();
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
}
