//! Message boundaries in a RESP byte stream.
//!
//! Valkey has no length header, so the only way to know where a message ends is to walk its
//! type bytes. This walk never allocates and never builds a frame: the proxy forwards
//! unmodified messages as the exact bytes it received (zero-copy pass-through).
//!
//! ```text
//! *2\r\n$3\r\nGET\r\n$1\r\nk\r\n     an array of two bulk strings: 23 bytes
//! PING\r\n                            an inline command (requests only)
//! ```

use super::ValkeyCodecError;

/// Largest bulk string accepted, as Valkey's default `proto-max-bulk-len` (512 MiB).
pub const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;
/// Longest header line or inline request accepted, as Valkey's inline limit (64 KiB).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Largest single message accepted while it is still arriving (Valkey's default
/// `client-query-buffer-limit`, 1 GiB): a header that promises more is refused.
pub const MAX_MESSAGE_LEN: usize = 1024 * 1024 * 1024;

/// Length of the first whole message in `buf`.
///
/// `Ok(None)` means more bytes are needed. `allow_inline` accepts the inline request form
/// (`PING\r\n`), which clients may send and servers never do.
pub fn message_len(buf: &[u8], allow_inline: bool) -> Result<Option<usize>, ValkeyCodecError> {
    Scanner::default().scan(buf, allow_inline)
}

/// [`message_len`] that remembers how far it got in an incomplete message, so a large
/// message arriving over many reads is walked once, not once per read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanner {
    /// Offset of the first frame not yet walked.
    pos: usize,
    /// Frames still to walk before the message is complete; 0 means "start a new message".
    remaining: u64,
}

impl Scanner {
    /// Length of the first whole message in `buf`, which must start where it started at the
    /// previous call until that call returned `Some` or an error.
    pub fn scan(&mut self, buf: &[u8], allow_inline: bool) -> Result<Option<usize>, ValkeyCodecError> {
        if self.remaining == 0 {
            *self = Scanner { pos: 0, remaining: 1 };
        }
        let result = self.walk(buf, allow_inline);
        if !matches!(result, Ok(None)) {
            *self = Scanner::default();
        } else if buf.len() > MAX_MESSAGE_LEN {
            *self = Scanner::default();
            return Err(ValkeyCodecError::TooLarge(buf.len()));
        }
        result
    }

    fn walk(&mut self, buf: &[u8], allow_inline: bool) -> Result<Option<usize>, ValkeyCodecError> {
        while self.remaining > 0 {
            let pos = self.pos;
            let Some(&kind) = buf.get(pos) else {
                return Ok(None);
            };
            let Some((line, next)) = read_line(buf, pos + 1)? else {
                if kind_is_known(kind) || !allow_inline || pos != 0 {
                    return Ok(None);
                }
                return inline_len(buf);
            };
            match kind {
                b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => self.pos = next,
                b'$' | b'!' | b'=' => {
                    let len = parse_len(line)?;
                    if len == -1 && kind == b'$' {
                        self.pos = next;
                    } else {
                        if !(0..=MAX_BULK_LEN).contains(&len) {
                            return Err(ValkeyCodecError::InvalidLength(lossy(line)));
                        }
                        // len is within 0..=MAX_BULK_LEN, so the cast is exact.
                        let end = next + len as usize;
                        if buf.len() < end + 2 {
                            return Ok(None);
                        }
                        if buf.get(end..end + 2) != Some(b"\r\n") {
                            return Err(ValkeyCodecError::MissingCrlf);
                        }
                        self.pos = end + 2;
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let len = parse_len(line)?;
                    self.pos = next;
                    if !(len == -1 && kind == b'*') {
                        let len = u64::try_from(len).map_err(|_| ValkeyCodecError::InvalidLength(lossy(line)))?;
                        self.remaining += match kind {
                            b'%' => len * 2,
                            // An attribute map is followed by the value it describes.
                            b'|' => len * 2 + 1,
                            _ => len,
                        };
                    }
                }
                _ if pos == 0 && allow_inline => return inline_len(buf),
                _ => return Err(ValkeyCodecError::InvalidType(kind as char)),
            }
            self.remaining -= 1;
        }
        Ok(Some(self.pos))
    }
}

fn kind_is_known(kind: u8) -> bool {
    matches!(
        kind,
        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' | b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|'
    )
}

/// The line starting at `start` (without its CRLF) and the offset after the CRLF.
fn read_line(buf: &[u8], start: usize) -> Result<Option<(&[u8], usize)>, ValkeyCodecError> {
    let rest = buf.get(start..).unwrap_or_default();
    match memchr::memchr(b'\n', rest) {
        Some(i) if i > 0 && rest.get(i - 1) == Some(&b'\r') => Ok(Some((&rest[..i - 1], start + i + 1))),
        Some(_) => Err(ValkeyCodecError::MissingCrlf),
        None if rest.len() > MAX_LINE_LEN => Err(ValkeyCodecError::LineTooLong(rest.len())),
        None => Ok(None),
    }
}

fn inline_len(buf: &[u8]) -> Result<Option<usize>, ValkeyCodecError> {
    match memchr::memchr(b'\n', buf) {
        Some(i) => Ok(Some(i + 1)),
        None if buf.len() > MAX_LINE_LEN => Err(ValkeyCodecError::LineTooLong(buf.len())),
        None => Ok(None),
    }
}

/// Parses a RESP length: optional `-`, then ASCII digits. `?` (streamed) is refused.
pub(crate) fn parse_len(line: &[u8]) -> Result<i64, ValkeyCodecError> {
    if line == b"?" {
        return Err(ValkeyCodecError::Streamed);
    }
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(ValkeyCodecError::InvalidLength(lossy(line)));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(ValkeyCodecError::InvalidLength(lossy(line)));
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if neg { -n } else { n })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(32)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(b: &[u8]) -> Result<Option<usize>, ValkeyCodecError> {
        message_len(b, true)
    }

    #[test]
    fn get_from_valkey_cli_v2_1() {
        let msg = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        assert_eq!(len(msg), Ok(Some(msg.len())));
        for cut in 0..msg.len() {
            assert_eq!(len(&msg[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn pipeline_takes_only_the_first() {
        let msg = b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(len(msg), Ok(Some(14)));
    }

    #[test]
    fn nulls_and_nested() {
        assert_eq!(len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(len(b"*-1\r\n"), Ok(Some(5)));
        let mget = b"*3\r\n$1\r\na\r\n$-1\r\n*2\r\n:1\r\n:2\r\n";
        assert_eq!(len(mget), Ok(Some(mget.len())));
    }

    #[test]
    fn resp3_types_v3_1() {
        let hello = b"%2\r\n+server\r\n+valkey\r\n+proto\r\n:3\r\n";
        assert_eq!(len(hello), Ok(Some(hello.len())));
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        assert_eq!(len(push), Ok(Some(push.len())));
        let attr = b"|1\r\n+ttl\r\n:3\r\n+OK\r\n";
        assert_eq!(len(attr), Ok(Some(attr.len())));
        assert_eq!(len(b"_\r\n,1.5\r\n#t\r\n"), Ok(Some(3)));
        assert_eq!(len(b"=8\r\ntxt:abcd\r\n"), Ok(Some(14)));
    }

    #[test]
    fn inline_ping() {
        assert_eq!(len(b"PING\r\n"), Ok(Some(6)));
        assert_eq!(len(b"PING"), Ok(None));
        assert_eq!(message_len(b"PING\r\n", false), Err(ValkeyCodecError::InvalidType('P')));
    }

    #[test]
    fn malformed() {
        assert!(len(b"*x\r\n").is_err());
        assert!(len(b"$3\r\nabcde\r\n").is_err());
        assert!(len(b"$-5\r\n").is_err());
        assert!(len(b"*?\r\n").is_err());
        assert!(len(b"*1\n").is_err());
        assert!(len(b"$99999999999999999999\r\n").is_err());
        let long = vec![b'a'; MAX_LINE_LEN + 10];
        assert!(len(&long).is_err());
    }

    #[test]
    fn scanner_resumes_where_it_stopped() {
        let msg = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n*1\r\n$4\r\nPING\r\n";
        let whole = 31;
        let mut scanner = Scanner::default();
        for cut in 1..whole {
            assert_eq!(scanner.scan(&msg[..cut], true), Ok(None), "cut at {cut}");
        }
        assert_eq!(scanner.scan(msg, true), Ok(Some(whole)));
        // It starts afresh for the next message.
        assert_eq!(scanner.scan(&msg[whole..], true), Ok(Some(14)));
    }

    #[test]
    fn huge_counts_do_not_overflow_or_panic() {
        assert_eq!(len(b"*999999999999999999\r\n"), Ok(None));
        assert_eq!(len(b"%999999999999999999\r\n"), Ok(None));
    }
}
