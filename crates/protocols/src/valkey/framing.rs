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
//!
//! Replies ([`Scanner::scan`]) are read as RESP2/RESP3. Requests ([`Scanner::scan_request`])
//! are read exactly as Valkey 8 reads a client's query buffer (`processInputBuffer` in
//! `networking.c`), so that the proxy cuts, skips and refuses the same bytes Valkey would:
//!
//! - a request starting with `*` is a multibulk: `*<count>` then `count` bulk strings
//!   `$<len>`; a header line ends at its first CR (the byte after it is not checked), and
//!   the two bytes after a bulk string's data are skipped unchecked;
//! - any other first byte starts an inline request, one line up to `\n`;
//! - `*0`, `*-10` and lines without arguments (`\r\n`, blanks) are consumed without
//!   running anything ([`Request::Nothing`]);
//! - a NUL byte hides the rest of the buffer from the search for a line's end (Valkey uses
//!   `strchr`): such a line waits for its end until it is too big;
//! - lengths are read with Valkey's `string2ll` (no `+`, no leading zeros, no `-0`).

use super::{inline, ValkeyCodecError};

/// Largest bulk string accepted, as Valkey's default `proto-max-bulk-len` (512 MiB).
pub const MAX_BULK_LEN: i64 = 512 * 1024 * 1024;
/// Longest header line or inline request accepted, as Valkey's inline limit (64 KiB).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Largest single message accepted while it is still arriving (Valkey's default
/// `client-query-buffer-limit`, 1 GiB): a header that promises more is refused.
pub const MAX_MESSAGE_LEN: usize = 1024 * 1024 * 1024;

/// Largest `*<count>` of a request, as Valkey's (`INT_MAX`).
const MAX_MULTIBULK_LEN: i64 = i32::MAX as i64;

/// Length of the first whole RESP2/RESP3 message (a reply, or any RESP value) in `buf`.
/// `Ok(None)` means more bytes are needed.
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, ValkeyCodecError> {
    Scanner::default().scan(buf)
}

/// The first request in a client's bytes, read as Valkey reads it (see the module docs).
pub fn request_len(buf: &[u8]) -> Result<Option<Request>, ValkeyCodecError> {
    Scanner::default().scan_request(buf)
}

/// What starts a client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A command of this many bytes: a multibulk or an inline line with arguments.
    Command(usize),
    /// This many bytes Valkey consumes without running anything and without a reply: an
    /// empty or blank inline line, or a multibulk count of zero or less (`*0`, `*-10`).
    Nothing(usize),
}

/// Where the parts of a multibulk request lie, noted while framing walked it (offsets from
/// the request's first byte), so that nothing has to read the request again to find them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestShape {
    /// The command name: offset and length.
    pub name: (u32, u32),
    /// Arguments after the name.
    pub argc: u32,
    /// Every bulk string is followed by exactly CRLF (Valkey skips those two bytes without
    /// looking): the request is one command as clients send it, which
    /// [`super::command::is_command_array`] checks on bytes framed elsewhere.
    pub strict: bool,
}

/// [`message_len`] and [`request_len`] that remember how far they got in an incomplete
/// message, so a large message arriving over many reads is walked once, not once per read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanner {
    /// Offset of the first frame not yet walked.
    pos: usize,
    /// Frames still to walk before the message is complete; 0 means "start a new message".
    remaining: u64,
    /// The multibulk count of the request being walked.
    count: u64,
    /// The shape of the multibulk request being walked, or last framed (`None` for an
    /// inline request, or one whose offsets do not fit 32 bits).
    shape: Option<RequestShape>,
}

impl Scanner {
    /// Length of the first whole reply in `buf`, which must start where it started at the
    /// previous call until that call returned `Some` or an error.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ValkeyCodecError> {
        if self.remaining == 0 {
            *self = Scanner { pos: 0, remaining: 1, ..Scanner::default() };
        }
        let result = self.walk(buf);
        self.settle(buf, result, MAX_MESSAGE_LEN)
    }

    /// The first request in `buf`, which must start where it started at the previous call
    /// until that call returned `Some` or an error.
    pub fn scan_request(&mut self, buf: &[u8]) -> Result<Option<Request>, ValkeyCodecError> {
        self.scan_request_max(buf, MAX_MESSAGE_LEN)
    }

    /// [`Scanner::scan_request`] with requests limited to `max` bytes instead of
    /// [`MAX_MESSAGE_LEN`]. A request whose bulk lengths already promise more is refused as
    /// soon as the header that shows it has arrived, so its data is never buffered.
    pub fn scan_request_max(&mut self, buf: &[u8], max: usize) -> Result<Option<Request>, ValkeyCodecError> {
        let result = if self.remaining == 0 { self.start_request(buf, max) } else { self.walk_bulks(buf, max) };
        self.settle(buf, result, max)
    }

    /// The shape of the request the last [`Scanner::scan_request`] returned as a
    /// [`Request::Command`]; `None` for an inline one (or after any other result).
    pub fn last_shape(&self) -> Option<RequestShape> {
        self.shape.filter(|_| self.remaining == 0)
    }

    /// Starts afresh after a whole message or an error (keeping a whole request's shape for
    /// [`Scanner::last_shape`]); refuses an incomplete message over `max` bytes.
    fn settle<T>(
        &mut self,
        buf: &[u8],
        result: Result<Option<T>, ValkeyCodecError>,
        max: usize,
    ) -> Result<Option<T>, ValkeyCodecError> {
        match result {
            Ok(Some(_)) => *self = Scanner { shape: self.shape, ..Scanner::default() },
            Ok(None) if buf.len() > max => {
                *self = Scanner::default();
                return Err(ValkeyCodecError::TooLarge { len: buf.len(), max });
            }
            Ok(None) => {}
            Err(_) => *self = Scanner::default(),
        }
        result
    }

    fn walk(&mut self, buf: &[u8]) -> Result<Option<usize>, ValkeyCodecError> {
        while self.remaining > 0 {
            let pos = self.pos;
            let Some(&kind) = buf.get(pos) else {
                return Ok(None);
            };
            let Some((line, next)) = read_line(buf, pos + 1)? else {
                return Ok(None);
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
                        // Checked: nested huge counts from a broken server must not wrap.
                        let more = match kind {
                            b'%' => len.checked_mul(2),
                            // An attribute map is followed by the value it describes.
                            b'|' => len.checked_mul(2).and_then(|n| n.checked_add(1)),
                            _ => Some(len),
                        };
                        self.remaining = more
                            .and_then(|more| self.remaining.checked_add(more))
                            .ok_or_else(|| ValkeyCodecError::InvalidLength(lossy(line)))?;
                    }
                }
                _ => return Err(ValkeyCodecError::InvalidType(kind as char)),
            }
            self.remaining -= 1;
        }
        Ok(Some(self.pos))
    }

    /// A new request: a multibulk if it starts with `*`, else an inline line.
    fn start_request(&mut self, buf: &[u8], max: usize) -> Result<Option<Request>, ValkeyCodecError> {
        self.shape = None;
        match buf.first() {
            None => Ok(None),
            Some(b'*') => {
                let Some(cr) = header_end(buf, 0, ValkeyCodecError::TooBigMbulkCount)? else {
                    return Ok(None);
                };
                let count = buf
                    .get(1..cr)
                    .and_then(string2ll)
                    .filter(|n| *n <= MAX_MULTIBULK_LEN)
                    .ok_or(ValkeyCodecError::InvalidMultibulkLength)?;
                match u64::try_from(count) {
                    Ok(count) if count > 0 => {
                        let argc = u32::try_from(count - 1).ok();
                        let shape = argc.map(|argc| RequestShape { name: (0, 0), argc, strict: true });
                        *self = Scanner { pos: cr + 2, remaining: count, count, shape };
                        self.walk_bulks(buf, max)
                    }
                    _ => Ok(Some(Request::Nothing(cr + 2))),
                }
            }
            Some(_) => inline_request(buf),
        }
    }

    /// The `$<len>` bulk strings of a multibulk request, from `self.pos`.
    fn walk_bulks(&mut self, buf: &[u8], max: usize) -> Result<Option<Request>, ValkeyCodecError> {
        while self.remaining > 0 {
            let pos = self.pos;
            let Some(cr) = header_end(buf, pos, ValkeyCodecError::TooBigBulkCount)? else {
                return Ok(None);
            };
            match buf.get(pos) {
                Some(b'$') => {}
                Some(&other) => return Err(ValkeyCodecError::ExpectedDollar(other)),
                None => return Ok(None),
            }
            let len = buf
                .get(pos + 1..cr)
                .and_then(string2ll)
                .filter(|n| (0..=MAX_BULK_LEN).contains(n))
                .ok_or(ValkeyCodecError::InvalidBulkLength)?;
            // len is within 0..=MAX_BULK_LEN, so the cast is exact. The two bytes after
            // the data are skipped unchecked, as Valkey does.
            let end = cr + 2 + len as usize + 2;
            if end > max {
                return Err(ValkeyCodecError::TooLarge { len: end, max });
            }
            if buf.len() < end {
                return Ok(None);
            }
            let first = self.remaining == self.count;
            self.shape = self.shape.and_then(|mut shape| {
                if first {
                    // The first bulk string is the name.
                    shape.name = (u32::try_from(cr + 2).ok()?, u32::try_from(len).ok()?);
                }
                shape.strict &= buf.get(end - 2..end) == Some(b"\r\n".as_slice());
                Some(shape)
            });
            self.pos = end;
            self.remaining -= 1;
        }
        Ok(Some(Request::Command(self.pos)))
    }
}

/// The offset of the CR ending the request header line that starts at `start`, once the
/// byte after it has arrived. As Valkey's `strchr`, the search stops at a NUL byte; with no
/// CR found, over [`MAX_LINE_LEN`] bytes buffered from `start` is `too_big`.
fn header_end(buf: &[u8], start: usize, too_big: ValkeyCodecError) -> Result<Option<usize>, ValkeyCodecError> {
    let rest = buf.get(start..).unwrap_or_default();
    match memchr::memchr2(b'\r', 0, rest) {
        Some(i) if rest.get(i) == Some(&b'\r') => Ok((i + 2 <= rest.len()).then_some(start + i)),
        _ if rest.len() > MAX_LINE_LEN => Err(too_big),
        _ => Ok(None),
    }
}

/// An inline request: one line up to `\n` (a CR before it is dropped), split as Valkey
/// splits it. The search for `\n` stops at a NUL byte, as Valkey's `strchr` does.
fn inline_request(buf: &[u8]) -> Result<Option<Request>, ValkeyCodecError> {
    match memchr::memchr2(b'\n', 0, buf) {
        Some(i) if buf.get(i) == Some(&b'\n') => {
            let line = buf.get(..i).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some(match inline::split(line, |_| {})? {
                0 => Request::Nothing(i + 1),
                _ => Request::Command(i + 1),
            }))
        }
        _ if buf.len() > MAX_LINE_LEN => Err(ValkeyCodecError::TooBigInlineRequest),
        _ => Ok(None),
    }
}

/// Whether the first message in `buf` nests aggregates (arrays, maps, sets, pushes,
/// attributes) more than `max` deep. Parsing a message into a frame recurses once per level
/// (in redis-protocol's decoders, and in every walk of the frame after), so a reply nested
/// a hundred thousand deep (`*1\r\n` repeated: 400 KB, which a Lua script or a broken server
/// can send) would overflow a worker's stack. Framing needs no such limit: it counts items
/// without recursing. Each level takes at least 4 bytes (`*1\r\n`), so a message shorter
/// than `4 * max` is not walked at all. A malformed message gives `false`: the parser then
/// refuses it itself.
pub fn nests_deeper_than(buf: &[u8], max: usize) -> bool {
    if buf.len() < max.saturating_mul(4) {
        return false;
    }
    // Items still to read at each open level; the message itself is the one item of level 0.
    let mut open: Vec<u64> = vec![1];
    let mut pos = 0;
    while let Some(left) = open.last_mut() {
        if *left == 0 {
            open.pop();
            continue;
        }
        *left -= 1;
        let (Some(&kind), Ok(Some((line, next)))) = (buf.get(pos), read_line(buf, pos + 1)) else {
            return false;
        };
        pos = next;
        let len = match kind {
            b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|' => match parse_len(line) {
                Ok(len) => len,
                Err(_) => return false,
            },
            _ => 0,
        };
        match kind {
            // `$-1` (a RESP2 null) has no data; `$0` has its CRLF.
            b'$' | b'!' | b'=' if len >= 0 => pos = pos.saturating_add(len as usize).saturating_add(2),
            b'*' | b'~' | b'>' | b'%' | b'|' if len > 0 => {
                // A map's and an attribute's entries are pairs; an attribute's described
                // value is counted as inside it, which can only overstate the depth by one.
                let items = if kind == b'%' || kind == b'|' { len.saturating_mul(2) } else { len };
                open.push(items as u64 + u64::from(kind == b'|'));
                if open.len() > max.saturating_add(1) {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
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

/// Valkey's `string2ll`: `0`, or an optional `-` then a digit 1-9 then digits, within `i64`.
/// No `+`, no blanks, no leading zeros, no `-0`.
pub(crate) fn string2ll(s: &[u8]) -> Option<i64> {
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(32)]).into_owned()
}

#[cfg(test)]
mod tests;
