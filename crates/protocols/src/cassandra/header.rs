//! The 9-byte frame header, and helpers that read or patch it in place without parsing.
//!
//! ```text
//! 0         8        16        24        32         40
//! +---------+---------+---------+---------+---------+
//! | version |  flags  |      stream       | opcode  |
//! +---------+---------+---------+---------+---------+
//! |                length                 |
//! +---------+---------+---------+---------+
//! ```
//! The version byte's top bit is set on responses. Stream ids are a big-endian `i16` (v3 and
//! later); the length is the body's, big-endian, limited to 256 MiB.

use super::{CassandraCodecError, Opcode, Result, Version};

/// Length of a frame header.
pub const HEADER_LEN: usize = 9;
/// Largest frame body accepted (the protocol's own limit).
pub const MAX_BODY_LEN: usize = 256 * 1024 * 1024;
/// The version byte's direction bit: set on responses.
pub const RESPONSE_BIT: u8 = 0x80;
/// Stream id of server-pushed EVENT frames.
pub const EVENT_STREAM_ID: i16 = -1;

/// Header flag bits.
pub mod flags {
    /// The body is compressed (v3/v4; ignored in v5, where segments compress).
    pub const COMPRESSION: u8 = 0x01;
    /// A request asks for tracing; a response starts its body with a tracing id.
    pub const TRACING: u8 = 0x02;
    /// The body carries a custom payload ([bytes map]) before the message.
    pub const CUSTOM_PAYLOAD: u8 = 0x04;
    /// A response carries warnings ([string list]) before the message.
    pub const WARNING: u8 = 0x08;
    /// The client opts in to a beta protocol version.
    pub const USE_BETA: u8 = 0x10;
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: Version,
    /// True for frames sent by the server.
    pub response: bool,
    /// Raw flag bits, see [`flags`].
    pub flags: u8,
    pub stream_id: i16,
    pub opcode: Opcode,
    /// Length of the body that follows the header.
    pub body_len: u32,
}

impl FrameHeader {
    /// Reads the header at the start of `frame`.
    pub fn parse(frame: &[u8]) -> Result<Self> {
        let Some(header) = frame.first_chunk::<HEADER_LEN>() else {
            return Err(CassandraCodecError::Truncated("frame header"));
        };
        let [v, flags, s0, s1, op, l0, l1, l2, l3] = *header;
        Ok(FrameHeader {
            version: version_from_byte(v)?,
            response: v & RESPONSE_BIT != 0,
            flags,
            stream_id: i16::from_be_bytes([s0, s1]),
            opcode: opcode_from_byte(op)?,
            body_len: u32::from_be_bytes([l0, l1, l2, l3]),
        })
    }

    /// The header as bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let direction = if self.response { RESPONSE_BIT } else { 0 };
        let [s0, s1] = self.stream_id.to_be_bytes();
        let [l0, l1, l2, l3] = self.body_len.to_be_bytes();
        [u8::from(self.version) | direction, self.flags, s0, s1, u8::from(self.opcode), l0, l1, l2, l3]
    }
}

/// The protocol version of a version byte (direction bit ignored): 3, 4 or 5.
pub fn version_from_byte(byte: u8) -> Result<Version> {
    match byte & !RESPONSE_BIT {
        3 => Ok(Version::V3),
        4 => Ok(Version::V4),
        5 => Ok(Version::V5),
        v => Err(CassandraCodecError::UnsupportedVersion(v)),
    }
}

/// The opcode of an opcode byte. Unlike `Opcode::try_from`, allocates nothing on error.
pub fn opcode_from_byte(byte: u8) -> Result<Opcode> {
    Ok(match byte {
        0x00 => Opcode::Error,
        0x01 => Opcode::Startup,
        0x02 => Opcode::Ready,
        0x03 => Opcode::Authenticate,
        0x05 => Opcode::Options,
        0x06 => Opcode::Supported,
        0x07 => Opcode::Query,
        0x08 => Opcode::Result,
        0x09 => Opcode::Prepare,
        0x0A => Opcode::Execute,
        0x0B => Opcode::Register,
        0x0C => Opcode::Event,
        0x0D => Opcode::Batch,
        0x0E => Opcode::AuthChallenge,
        0x0F => Opcode::AuthResponse,
        0x10 => Opcode::AuthSuccess,
        other => return Err(CassandraCodecError::UnknownOpcode(other)),
    })
}

/// True for the opcodes a client sends.
pub fn is_request_opcode(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::Startup
            | Opcode::Options
            | Opcode::Query
            | Opcode::Prepare
            | Opcode::Execute
            | Opcode::Register
            | Opcode::Batch
            | Opcode::AuthResponse
    )
}

/// The protocol version of a frame.
pub fn version(frame: &[u8]) -> Result<Version> {
    version_from_byte(*frame.first().ok_or(CassandraCodecError::Truncated("frame header"))?)
}

/// True if the frame was sent by the server.
pub fn is_response(frame: &[u8]) -> Result<bool> {
    Ok(frame.first().ok_or(CassandraCodecError::Truncated("frame header"))? & RESPONSE_BIT != 0)
}

/// The flag bits of a frame.
pub fn frame_flags(frame: &[u8]) -> Result<u8> {
    frame.get(1).copied().ok_or(CassandraCodecError::Truncated("frame header"))
}

/// The opcode of a frame.
pub fn opcode(frame: &[u8]) -> Result<Opcode> {
    opcode_from_byte(*frame.get(4).ok_or(CassandraCodecError::Truncated("frame header"))?)
}

/// The stream id of a frame.
pub fn stream_id(frame: &[u8]) -> Result<i16> {
    match frame.get(2..4) {
        Some(&[a, b]) => Ok(i16::from_be_bytes([a, b])),
        _ => Err(CassandraCodecError::Truncated("frame header")),
    }
}

/// Rewrites the stream id of a frame in place (a sink renumbers requests, then puts the
/// client's ids back on the responses).
pub fn set_stream_id(frame: &mut [u8], id: i16) -> Result<()> {
    let slot = frame.get_mut(2..4).ok_or(CassandraCodecError::Truncated("frame header"))?;
    slot.copy_from_slice(&id.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_v4_1() {
        // OPTIONS from cassandra-driver 3.30 (python), protocol v4.
        let frame = [0x04, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00];
        let h = FrameHeader::parse(&frame).unwrap();
        assert_eq!(h.version, Version::V4);
        assert!(!h.response);
        assert_eq!(h.opcode, Opcode::Options);
        assert_eq!(h.stream_id, 0);
        assert_eq!(h.body_len, 0);
        assert_eq!(h.to_bytes(), frame);
    }

    #[test]
    fn in_place_helpers_v5_1() {
        let mut frame = [0x85, 0x08, 0x01, 0x02, 0x08, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(version(&frame), Ok(Version::V5));
        assert_eq!(is_response(&frame), Ok(true));
        assert_eq!(opcode(&frame), Ok(Opcode::Result));
        assert_eq!(stream_id(&frame), Ok(0x0102));
        assert_eq!(frame_flags(&frame), Ok(flags::WARNING));
        set_stream_id(&mut frame, -1).unwrap();
        assert_eq!(stream_id(&frame), Ok(-1));
        assert_eq!(&frame[2..4], &[0xff, 0xff]);
    }

    #[test]
    fn short_and_bad_headers() {
        assert_eq!(stream_id(&[4, 0, 1]), Err(CassandraCodecError::Truncated("frame header")));
        assert!(set_stream_id(&mut [4, 0, 1], 3).is_err());
        assert_eq!(opcode(&[4, 0, 0, 0, 0x04]), Err(CassandraCodecError::UnknownOpcode(4)));
        assert_eq!(version(&[0x42]), Err(CassandraCodecError::UnsupportedVersion(0x42)));
        assert_eq!(version(&[]), Err(CassandraCodecError::Truncated("frame header")));
        assert!(FrameHeader::parse(&[4, 0, 0, 0, 7, 0, 0, 0]).is_err());
    }
}
