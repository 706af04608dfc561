//! Parsing one whole Valkey message into a frame, and encoding frames.
//!
//! The frame type is redis-protocol's RESP3 [`BytesFrame`], a superset of RESP2, so
//! transforms see one type whichever protocol the connection negotiated. RESP2 bytes are
//! parsed with the RESP2 decoder (RESP2's `$-1` and `*-1` nulls mean something else in
//! RESP3) and remember that, so a modified frame is written back in the version it came in.

use super::{framing, inline, ValkeyCodecError};
use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};

/// A parsed Valkey message.
pub type ValkeyFrame = BytesFrame;

/// The RESP version a message was written in, and is written back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RespVersion {
    #[default]
    Resp2,
    Resp3,
}

/// Deepest nesting of aggregates a message may have to be parsed into a frame (see
/// [`framing::nests_deeper_than`]). Valkey's own replies nest a few levels; older hiredis
/// refused more than 7. Parsing takes stack for every level: redis-protocol's RESP3 decoder
/// took 1-2 KB a level in a release build and about 16 KB in a debug build (measured
/// 2026-12-07: 128 levels overflowed a 2 MiB stack in a debug build, 64 did not).
pub const MAX_NESTING: usize = 64;

/// Parses exactly one whole message (as delimited by [`framing::message_len`] or
/// [`framing::request_len`]).
pub fn parse(bytes: &Bytes) -> Result<(ValkeyFrame, RespVersion), ValkeyCodecError> {
    if framing::nests_deeper_than(bytes, MAX_NESTING) {
        return Err(ValkeyCodecError::Parse(format!("a message nested more than {MAX_NESTING} deep")));
    }
    match bytes.first() {
        Some(b'*' | b'$' | b'+' | b'-' | b':') => {
            match redis_protocol::resp2::decode::decode_bytes(bytes) {
                Ok(Some((frame, _))) => return Ok((from_resp2(frame), RespVersion::Resp2)),
                // A request line such as `$4` is an inline command to Valkey.
                Ok(None) if is_one_line(bytes) => return Ok((parse_inline(bytes)?, RespVersion::Resp2)),
                Ok(None) => return Err(ValkeyCodecError::Parse("incomplete message".into())),
                // RESP3 types nested in an array: fall through to the RESP3 decoder.
                Err(_) => {}
            }
        }
        Some(_) if framing::message_len(bytes).is_err() => return Ok((parse_inline(bytes)?, RespVersion::Resp2)),
        _ => {}
    }
    match redis_protocol::resp3::decode::complete::decode_bytes(bytes) {
        Ok(Some((frame, _))) => Ok((frame, RespVersion::Resp3)),
        Ok(None) => Err(ValkeyCodecError::Parse("incomplete message".into())),
        Err(e) => Err(ValkeyCodecError::Parse(e.details().to_string())),
    }
}

/// True when the only `\n` in `bytes` is the last byte.
fn is_one_line(bytes: &[u8]) -> bool {
    memchr::memchr(b'\n', bytes) == Some(bytes.len() - 1)
}

/// Splits an inline request (`SET k "a b"\r\n`) into an array of bulk strings, with Valkey's
/// quoting rules (see [`inline`]).
fn parse_inline(bytes: &[u8]) -> Result<ValkeyFrame, ValkeyCodecError> {
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = inline::args(line)?;
    Ok(BytesFrame::Array {
        data: args.into_iter().map(|arg| BytesFrame::BlobString { data: Bytes::from(arg), attributes: None }).collect(),
        attributes: None,
    })
}

fn from_resp2(frame: Resp2Frame) -> ValkeyFrame {
    match frame {
        Resp2Frame::SimpleString(data) => BytesFrame::SimpleString { data, attributes: None },
        Resp2Frame::Error(data) => BytesFrame::SimpleError { data, attributes: None },
        Resp2Frame::Integer(data) => BytesFrame::Number { data, attributes: None },
        Resp2Frame::BulkString(data) => BytesFrame::BlobString { data, attributes: None },
        Resp2Frame::Array(items) => {
            BytesFrame::Array { data: items.into_iter().map(from_resp2).collect(), attributes: None }
        }
        Resp2Frame::Null => BytesFrame::Null,
    }
}

/// RESP3-only types are written in their closest RESP2 form, as Valkey itself does for
/// RESP2 clients.
fn to_resp2(frame: &ValkeyFrame) -> Resp2Frame {
    match frame {
        BytesFrame::SimpleString { data, .. } => Resp2Frame::SimpleString(data.clone()),
        BytesFrame::SimpleError { data, .. } => Resp2Frame::Error(data.clone()),
        BytesFrame::BlobError { data, .. } => Resp2Frame::Error(String::from_utf8_lossy(data).into_owned().into()),
        BytesFrame::Number { data, .. } => Resp2Frame::Integer(*data),
        BytesFrame::Boolean { data, .. } => Resp2Frame::Integer(i64::from(*data)),
        BytesFrame::Double { data, .. } => Resp2Frame::BulkString(Bytes::from(data.to_string())),
        BytesFrame::BigNumber { data, .. } | BytesFrame::BlobString { data, .. } => {
            Resp2Frame::BulkString(data.clone())
        }
        BytesFrame::VerbatimString { data, .. } => Resp2Frame::BulkString(data.clone()),
        BytesFrame::Null => Resp2Frame::Null,
        BytesFrame::Array { data, .. } | BytesFrame::Push { data, .. } => {
            Resp2Frame::Array(data.iter().map(to_resp2).collect())
        }
        BytesFrame::Set { data, .. } => Resp2Frame::Array(data.iter().map(to_resp2).collect()),
        BytesFrame::Map { data, .. } => {
            Resp2Frame::Array(data.iter().flat_map(|(k, v)| [to_resp2(k), to_resp2(v)]).collect())
        }
        other => Resp2Frame::Error(format!("ERR cannot encode {:?} in RESP2", other.kind()).into()),
    }
}

/// Appends the encoding of `frame` in `version` to `out`.
pub fn encode(frame: &ValkeyFrame, version: RespVersion, out: &mut BytesMut) -> Result<(), ValkeyCodecError> {
    let result = match version {
        RespVersion::Resp2 => redis_protocol::resp2::encode::extend_encode(out, &to_resp2(frame), false),
        RespVersion::Resp3 => redis_protocol::resp3::encode::complete::extend_encode(out, frame, false),
    };
    result.map(|_| ()).map_err(|e| ValkeyCodecError::Parse(e.details().to_string()))
}

/// True for a whole reply that is an error (`-ERR ...` or a RESP3 blob error), read from its
/// first byte without parsing.
pub fn is_error_reply(raw: &[u8]) -> bool {
    matches!(raw.first(), Some(b'-' | b'!'))
}

/// An error reply, `-ERR ...` style. `message` should start with an error code such as `ERR`.
pub fn error(message: impl Into<String>) -> ValkeyFrame {
    BytesFrame::SimpleError { data: message.into().into(), attributes: None }
}

/// A bulk string reply.
pub fn bulk(data: impl Into<Bytes>) -> ValkeyFrame {
    BytesFrame::BlobString { data: data.into(), attributes: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(raw: &'static [u8]) {
        let bytes = Bytes::from_static(raw);
        let (frame, version) = parse(&bytes).unwrap();
        let mut out = BytesMut::new();
        encode(&frame, version, &mut out).unwrap();
        assert_eq!(&out[..], raw, "{frame:?}");
    }

    /// `*1\r\n` `levels` times around `:1\r\n` (or a RESP3 map level by level).
    fn nested(levels: usize, header: &str) -> Bytes {
        Bytes::from(format!("{}:1\r\n", header.repeat(levels)))
    }

    #[test]
    fn nesting_past_the_limit_is_refused_before_any_recursion() {
        // Exactly at the limit: parsed, RESP2 and RESP3.
        assert!(parse(&nested(MAX_NESTING, "*1\r\n")).is_ok());
        let resp3 = Bytes::from(format!("{}_\r\n", "*1\r\n".repeat(MAX_NESTING)));
        assert_eq!(parse(&resp3).map(|(_, version)| version), Ok(RespVersion::Resp3));
        for header in ["*1\r\n", "~1\r\n", ">1\r\n"] {
            let err = parse(&nested(MAX_NESTING + 1, header)).unwrap_err();
            assert!(err.to_string().contains("nested more than 64 deep"), "{err}");
        }
        // A map's value nests too: `%1 :1 <value>` per level.
        assert!(parse(&nested(MAX_NESTING + 1, "%1\r\n:1\r\n")).is_err());
        // What would overflow a worker's stack: refused at once, also after empty strings
        // and nulls beside it.
        assert!(parse(&nested(200_000, "*1\r\n")).is_err());
        for before in ["$0\r\n\r\n", "!0\r\n\r\n", "$-1\r\n", "_\r\n", "+OK\r\n"] {
            let deep = Bytes::from(format!("*2\r\n{before}{}:1\r\n", "*1\r\n".repeat(MAX_NESTING + 1)));
            assert!(framing::nests_deeper_than(&deep, MAX_NESTING), "after {before:?}");
            assert!(parse(&deep).is_err(), "after {before:?}");
        }
        // Wide is not deep: a long flat array and bulk strings holding `*` bytes parse.
        let flat = Bytes::from(format!("*1000\r\n{}", "$4\r\n*1\r\n\r\n".repeat(1000)));
        assert!(parse(&flat).is_ok());
        let mixed = Bytes::from(format!("*2\r\n{}:1\r\n*1\r\n+x\r\n", "*1\r\n".repeat(MAX_NESTING - 1)));
        assert!(parse(&mixed).is_ok(), "two siblings, each under the limit");
    }

    #[test]
    fn set_from_valkey_cli_v2_1() {
        roundtrip(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }

    #[test]
    fn mget_reply_with_null_v2_1() {
        roundtrip(b"*2\r\n$1\r\na\r\n$-1\r\n");
        roundtrip(b"$-1\r\n");
        roundtrip(b"-ERR bad\r\n");
        roundtrip(b":42\r\n");
    }

    #[test]
    fn hello_reply_v3_1() {
        roundtrip(b"%1\r\n+proto\r\n:3\r\n");
        roundtrip(b">2\r\n$7\r\nmessage\r\n$2\r\nhi\r\n");
        roundtrip(b"_\r\n");
    }

    #[test]
    fn inline_is_split_into_bulk_strings() {
        let (frame, _) = parse(&Bytes::from_static(b"SET k \"a b\\n\" 'c'\r\n")).unwrap();
        let mut out = BytesMut::new();
        encode(&frame, RespVersion::Resp2, &mut out).unwrap();
        assert_eq!(&out[..], b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na b\n\r\n$1\r\nc\r\n");
        assert!(parse(&Bytes::from_static(b"SET \"k\r\n")).is_err());
        // Only `*` starts a request array: to Valkey, `$4` is an inline (unknown) command.
        let (frame, _) = parse(&Bytes::from_static(b"$4\r\n")).unwrap();
        assert_eq!(frame, BytesFrame::Array { data: vec![bulk("$4")], attributes: None });
    }

    #[test]
    fn resp3_frame_written_as_resp2() {
        let frame = BytesFrame::Map {
            data: [(bulk("a"), BytesFrame::Boolean { data: true, attributes: None })].into_iter().collect(),
            attributes: None,
        };
        let mut out = BytesMut::new();
        encode(&frame, RespVersion::Resp2, &mut out).unwrap();
        assert_eq!(&out[..], b"*2\r\n$1\r\na\r\n:1\r\n");
    }
}
