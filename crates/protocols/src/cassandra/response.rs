//! Response bodies other than RESULT: ERROR, EVENT, and the schema change description that
//! EVENT and RESULT share. Also the ERROR frames the proxy makes up itself.
//!
//! ```text
//! ERROR          [int] code, [string] message, then code-specific fields (kept raw)
//! EVENT          [string] type, then
//!                TOPOLOGY_CHANGE / STATUS_CHANGE: [string] change, [inet] address
//!                SCHEMA_CHANGE: <change_type><target><options>, as below
//! schema change  [string] change type (CREATED, UPDATED, DROPPED), [string] target, then
//!                KEYSPACE: [string] keyspace; TABLE, TYPE: [string] keyspace, [string] name;
//!                FUNCTION, AGGREGATE: [string] keyspace, [string] name, [string list] args
//! ```

use super::header::{FrameHeader, HEADER_LEN, RESPONSE_BIT};
use super::wire::{self, Reader};
use super::{Opcode, Result, Version};
use bytes::Bytes;
use std::net::SocketAddr;

/// An ERROR code (section 9 of the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub i32);

impl ErrorCode {
    pub const SERVER_ERROR: ErrorCode = ErrorCode(0x0000);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x000A);
    pub const AUTHENTICATION_ERROR: ErrorCode = ErrorCode(0x0100);
    pub const UNAVAILABLE: ErrorCode = ErrorCode(0x1000);
    pub const OVERLOADED: ErrorCode = ErrorCode(0x1001);
    pub const IS_BOOTSTRAPPING: ErrorCode = ErrorCode(0x1002);
    pub const TRUNCATE_ERROR: ErrorCode = ErrorCode(0x1003);
    pub const WRITE_TIMEOUT: ErrorCode = ErrorCode(0x1100);
    pub const READ_TIMEOUT: ErrorCode = ErrorCode(0x1200);
    pub const READ_FAILURE: ErrorCode = ErrorCode(0x1300);
    pub const FUNCTION_FAILURE: ErrorCode = ErrorCode(0x1400);
    pub const WRITE_FAILURE: ErrorCode = ErrorCode(0x1500);
    pub const CDC_WRITE_FAILURE: ErrorCode = ErrorCode(0x1600);
    pub const CAS_WRITE_UNKNOWN: ErrorCode = ErrorCode(0x1700);
    pub const SYNTAX_ERROR: ErrorCode = ErrorCode(0x2000);
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(0x2100);
    pub const INVALID: ErrorCode = ErrorCode(0x2200);
    pub const CONFIG_ERROR: ErrorCode = ErrorCode(0x2300);
    pub const ALREADY_EXISTS: ErrorCode = ErrorCode(0x2400);
    pub const UNPREPARED: ErrorCode = ErrorCode(0x2500);

    /// True for the codes whose body is only the code and the message, so that an ERROR can
    /// be made up with [`ErrorBody::new`] and nothing else.
    pub fn has_no_extra_fields(self) -> bool {
        matches!(
            self,
            ErrorCode::SERVER_ERROR
                | ErrorCode::PROTOCOL_ERROR
                | ErrorCode::AUTHENTICATION_ERROR
                | ErrorCode::OVERLOADED
                | ErrorCode::IS_BOOTSTRAPPING
                | ErrorCode::TRUNCATE_ERROR
                | ErrorCode::SYNTAX_ERROR
                | ErrorCode::UNAUTHORIZED
                | ErrorCode::INVALID
                | ErrorCode::CONFIG_ERROR
        )
    }
}

/// An ERROR body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The code-specific fields (consistency and counts for timeouts, keyspace and table for
    /// ALREADY_EXISTS, the statement id for UNPREPARED, ...), as they came.
    pub extra: Bytes,
}

impl ErrorBody {
    /// An error with no code-specific fields (see [`ErrorCode::has_no_extra_fields`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody { code, message: message.into(), extra: Bytes::new() }
    }

    pub(crate) fn parse(r: &mut Reader) -> Result<Self> {
        Ok(ErrorBody { code: ErrorCode(r.i32("error code")?), message: r.string("error message")?, extra: r.rest() })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        wire::put_i32(out, self.code.0);
        wire::put_string(out, &self.message, "error message")?;
        out.extend_from_slice(&self.extra);
        Ok(())
    }
}

/// The bytes of an ERROR response to `request`: same version and stream id, uncompressed.
///
/// Messages longer than a `[string]` holds are cut (at a character boundary), so this cannot
/// fail. In v3/v4 an uncompressed frame is valid on a compressed connection; in v5, wrap it
/// in a segment like any other frame.
pub fn error_response(request: &FrameHeader, code: ErrorCode, message: &str) -> Vec<u8> {
    error_frame(u8::from(request.version) | RESPONSE_BIT, request.stream_id, code, message)
}

fn error_frame(version_byte: u8, stream_id: i16, code: ErrorCode, message: &str) -> Vec<u8> {
    let mut end = message.len().min(usize::from(u16::MAX));
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = message.get(..end).unwrap_or_default();
    let body_len = 4 + 2 + message.len();
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.push(version_byte);
    out.push(0);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(u8::from(Opcode::Error));
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    out
}

/// The reply Cassandra gives to a frame whose version it does not speak: a protocol error
/// that drivers read to retry with a lower version (the python driver opens with 0x42, DSE
/// v2, then 0x41, then 5). `None` if `frame` has a supported version or is shorter than its
/// first 4 bytes. The reply has the request's stream id; it is written as v4 for versions
/// above 5, and in the request's own version (8-byte header, 1-byte stream id) for v1 and v2.
pub fn unsupported_version_response(frame: &[u8]) -> Option<Vec<u8>> {
    unsupported_version_response_for(frame, &[Version::V3, Version::V4, Version::V5])
}

/// [`unsupported_version_response`] for a server that speaks only the `supported` versions
/// (a test server that speaks only v4 and v5, say). The message lists them the way Cassandra
/// does: `Invalid or unsupported protocol version (66); supported versions are (4/v4, 5/v5)`.
/// A version above the highest supported one is answered in v4, one below the lowest in
/// the request's own version (v1 and v2 with their 8-byte header), as Cassandra answers
/// versions it no longer supports.
pub fn unsupported_version_response_for(frame: &[u8], supported: &[Version]) -> Option<Vec<u8>> {
    let (&[version, _, s0, s1], _) = frame.split_first_chunk::<4>()?;
    let version = version & !RESPONSE_BIT;
    if supported.iter().any(|&v| u8::from(v) == version) {
        return None;
    }
    let listed: Vec<String> = supported.iter().map(|&v| format!("{0}/v{0}", u8::from(v))).collect();
    let message =
        format!("Invalid or unsupported protocol version ({version}); supported versions are ({})", listed.join(", "));
    if matches!(version, 1 | 2) {
        let mut out = vec![version | RESPONSE_BIT, 0, s0, u8::from(Opcode::Error)];
        out.extend_from_slice(&((4 + 2 + message.len()) as u32).to_be_bytes());
        out.extend_from_slice(&ErrorCode::PROTOCOL_ERROR.0.to_be_bytes());
        out.extend_from_slice(&(message.len() as u16).to_be_bytes());
        out.extend_from_slice(message.as_bytes());
        return Some(out);
    }
    let lowest = supported.iter().map(|&v| u8::from(v)).min().unwrap_or(u8::from(Version::V4));
    let reply_version = if (3..lowest).contains(&version) { version } else { u8::from(Version::V4) };
    Some(error_frame(reply_version | RESPONSE_BIT, i16::from_be_bytes([s0, s1]), ErrorCode::PROTOCOL_ERROR, &message))
}

/// What a schema change touched (RESULT kind 5, and SCHEMA_CHANGE events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaChange {
    /// CREATED, UPDATED or DROPPED.
    pub change_type: String,
    /// KEYSPACE, TABLE, TYPE, FUNCTION or AGGREGATE.
    pub target: String,
    pub keyspace: String,
    /// The table, type, function or aggregate; `None` for KEYSPACE.
    pub name: Option<String>,
    /// Argument types, for FUNCTION and AGGREGATE.
    pub arguments: Option<Vec<String>>,
}

impl SchemaChange {
    pub(crate) fn parse(r: &mut Reader) -> Result<Self> {
        let change_type = r.string("schema change type")?;
        let target = r.string("schema change target")?;
        let keyspace = r.string("schema change keyspace")?;
        let (name, arguments) = match target.as_str() {
            "KEYSPACE" => (None, None),
            "FUNCTION" | "AGGREGATE" => {
                (Some(r.string("schema change name")?), Some(r.string_list("schema change arguments")?))
            }
            _ => (Some(r.string("schema change name")?), None),
        };
        Ok(SchemaChange { change_type, target, keyspace, name, arguments })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        wire::put_string(out, &self.change_type, "schema change type")?;
        wire::put_string(out, &self.target, "schema change target")?;
        wire::put_string(out, &self.keyspace, "schema change keyspace")?;
        if let Some(name) = &self.name {
            wire::put_string(out, name, "schema change name")?;
        }
        if let Some(args) = &self.arguments {
            wire::put_string_list(out, args, "schema change arguments")?;
        }
        Ok(())
    }
}

/// An EVENT pushed by the server (stream id -1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// NEW_NODE or REMOVED_NODE.
    TopologyChange {
        change: String,
        address: SocketAddr,
    },
    /// UP or DOWN.
    StatusChange {
        change: String,
        address: SocketAddr,
    },
    SchemaChange(SchemaChange),
    /// An event type this codec does not know, kept raw.
    Other {
        event_type: String,
        body: Bytes,
    },
}

impl Event {
    pub(crate) fn parse(r: &mut Reader) -> Result<Self> {
        let event_type = r.string("event type")?;
        Ok(match event_type.as_str() {
            "TOPOLOGY_CHANGE" => {
                Event::TopologyChange { change: r.string("topology change")?, address: r.inet("node address")? }
            }
            "STATUS_CHANGE" => {
                Event::StatusChange { change: r.string("status change")?, address: r.inet("node address")? }
            }
            "SCHEMA_CHANGE" => Event::SchemaChange(SchemaChange::parse(r)?),
            _ => Event::Other { event_type, body: r.rest() },
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Event::TopologyChange { change, address } | Event::StatusChange { change, address } => {
                let kind =
                    if matches!(self, Event::TopologyChange { .. }) { "TOPOLOGY_CHANGE" } else { "STATUS_CHANGE" };
                wire::put_string(out, kind, "event type")?;
                wire::put_string(out, change, "event change")?;
                wire::put_inet(out, address);
            }
            Event::SchemaChange(change) => {
                wire::put_string(out, "SCHEMA_CHANGE", "event type")?;
                change.encode(out)?;
            }
            Event::Other { event_type, body } => {
                wire::put_string(out, event_type, "event type")?;
                out.extend_from_slice(body);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::captures::{hex, OPTIONS_DSE_V2};
    use crate::cassandra::framing::frame_len;
    use crate::cassandra::header::flags;

    #[test]
    fn error_response_v4_1() {
        let request = FrameHeader::parse(&[0x04, 0, 0x00, 0x2a, 0x07, 0, 0, 0, 0]).unwrap();
        let frame = error_response(&request, ErrorCode::OVERLOADED, "Too busy");
        assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
        assert_eq!(frame, hex("84 00 002a 00 0000000e 00001001 0008 546f6f2062757379"));
        let h = FrameHeader::parse(&frame).unwrap();
        assert!(h.response && h.flags & flags::COMPRESSION == 0);
        assert_eq!((h.version, h.stream_id, h.opcode), (Version::V4, 42, Opcode::Error));
    }

    #[test]
    fn error_response_long_message_is_cut() {
        let request = FrameHeader::parse(&[0x05, 0, 0, 1, 0x07, 0, 0, 0, 0]).unwrap();
        let long = "é".repeat(40_000);
        let frame = error_response(&request, ErrorCode::SERVER_ERROR, &long);
        assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
        assert_eq!(u16::from_be_bytes([frame[13], frame[14]]), 65534);
    }

    #[test]
    fn unsupported_version_v66_1() {
        let reply = unsupported_version_response(&hex(OPTIONS_DSE_V2)).unwrap();
        let h = FrameHeader::parse(&reply).unwrap();
        assert_eq!((h.version, h.response, h.opcode, h.stream_id), (Version::V4, true, Opcode::Error, 0));
        let text = String::from_utf8_lossy(&reply[15..]).into_owned();
        assert!(text.starts_with("Invalid or unsupported protocol version (66)"), "{text}");
        assert_eq!(unsupported_version_response(&hex("050000000500000000")), None);
        assert_eq!(unsupported_version_response(&[0x42, 0]), None);
        // A v2 STARTUP (8-byte header, stream 7) gets a v2 reply.
        let reply = unsupported_version_response(&[0x02, 0, 7, 0x01, 0, 0, 0, 0]).unwrap();
        assert_eq!(&reply[..4], &[0x82, 0, 7, 0x00]);
        assert_eq!(u32::from_be_bytes([reply[4], reply[5], reply[6], reply[7]]) as usize, reply.len() - 8);
    }

    #[test]
    fn unsupported_version_for_v4_v5_only() {
        let supported = [Version::V4, Version::V5];
        // DSE v2 (0x42) and v6: a v4 reply that lists only v4 and v5.
        for probe in [hex(OPTIONS_DSE_V2), hex("060000030500000000")] {
            let reply = unsupported_version_response_for(&probe, &supported).unwrap();
            assert_eq!(frame_len(&reply), Ok(Some(reply.len())));
            let h = FrameHeader::parse(&reply).unwrap();
            assert_eq!((h.version, h.response, h.opcode), (Version::V4, true, Opcode::Error));
            assert_eq!(h.stream_id, i16::from(probe[3]));
            let code = i32::from_be_bytes([reply[9], reply[10], reply[11], reply[12]]);
            assert_eq!(ErrorCode(code), ErrorCode::PROTOCOL_ERROR);
            let text = String::from_utf8_lossy(&reply[15..]).into_owned();
            let expected =
                format!("Invalid or unsupported protocol version ({}); supported versions are (4/v4, 5/v5)", probe[0]);
            assert_eq!(text, expected);
        }
        // v3 is below what it speaks: the reply is in v3, which a v3 client reads.
        let reply = unsupported_version_response_for(&hex("030000070500000000"), &supported).unwrap();
        assert_eq!(&reply[..5], &[0x83, 0, 0, 7, 0]);
        assert_eq!(frame_len(&reply), Ok(Some(reply.len())));
        assert!(String::from_utf8_lossy(&reply[15..]).starts_with("Invalid or unsupported protocol version (3)"));
        assert_eq!(unsupported_version_response_for(&hex("040000000500000000"), &supported), None);
        assert_eq!(unsupported_version_response_for(&hex("050000000500000000"), &supported), None);
        // The default still answers 0x42 in v4 and lists v3 to v5.
        let reply = unsupported_version_response(&hex(OPTIONS_DSE_V2)).unwrap();
        assert!(String::from_utf8_lossy(&reply[15..]).ends_with("(3/v3, 4/v4, 5/v5)"));
    }

    #[test]
    fn events_round_trip() {
        let events = [
            Event::TopologyChange { change: "NEW_NODE".into(), address: "10.0.0.1:9042".parse().unwrap() },
            Event::StatusChange { change: "DOWN".into(), address: "[::1]:9042".parse().unwrap() },
            Event::SchemaChange(SchemaChange {
                change_type: "CREATED".into(),
                target: "FUNCTION".into(),
                keyspace: "ks".into(),
                name: Some("f".into()),
                arguments: Some(vec!["int".into()]),
            }),
            Event::Other { event_type: "NEW_THING".into(), body: Bytes::from_static(b"xyz") },
        ];
        for event in events {
            let mut out = Vec::new();
            event.encode(&mut out).unwrap();
            let b = Bytes::from(out);
            assert_eq!(Event::parse(&mut Reader::new(&b)).unwrap(), event);
        }
    }
}
