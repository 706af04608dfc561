//! Cassandra: the CQL native protocol, versions 3, 4 and 5.
//!
//! A CQL message is a *frame* (the v5 spec calls it an *envelope*): a 9-byte header (version
//! with the response bit, flags, stream id, opcode, body length) and a body. v3 and v4 put
//! frames straight on the wire, with the body optionally compressed (LZ4 or Snappy). v5 wraps
//! frames, once STARTUP is answered, in *segments* that carry CRCs and optional LZ4.
//!
//! Layout, from the wire inwards:
//! - [`segment`]: v5 segments: find them, check their CRCs, turn them into frames and back.
//! - [`framing`]: is a whole frame buffered, and how long is it? Cheap, allocation free.
//! - [`header`]: the 9-byte header, and in-place helpers (stream id, opcode, direction).
//! - [`compression`]: v3/v4 frame body compression (LZ4 with a length prefix, Snappy).
//! - [`state`]: per-connection codec state: version, compression, segments on or off.
//! - [`connection`]: [`connection::CqlWire`], one connection's frames in and out, either
//!   side of the proxy: segments or plain frames, as its own handshake decided.
//! - [`frame`]: [`CassandraFrame`], parsed from one whole frame only when asked, and encoded.
//!   Bodies live in [`request`], [`result`] and [`response`].
//! - [`mod@classify`]: sorts statements into query types, and remembers prepared statements'.
//! - [`token`]: routing keys and Murmur3 tokens, for token-aware routing.
//! - [`statement`]: CQL statements as data (tables, columns, values), for Protect and
//!   ValkeyCache.
//! - [`cells`]: the few typed cell values the proxy reads itself (addresses, tokens, ids).
//!
//! Start at [`framing::frame_len`], or at [`segment::SegmentDecoder`] for v5. A connection
//! reads its frames like this, parsing none of them:
//! ```
//! use bytes::{Bytes, BytesMut};
//! use shotover_protocols::cassandra::{framing, segment::SegmentDecoder, CassandraCodecState, Result};
//!
//! fn read_frames(buf: &mut BytesMut, state: &mut CassandraCodecState, segments: &mut SegmentDecoder) -> Result<Vec<Bytes>> {
//!     let mut frames = Vec::new();
//!     if let Some(compression) = state.segment_compression() {
//!         segments.decode(buf, compression, &mut frames)?;
//!     } else {
//!         while let Some(len) = framing::frame_len(buf)? {
//!             let frame = buf.split_to(len).freeze();
//!             state.observe(&frame)?; // STARTUP and its answer set version and compression
//!             frames.push(frame);
//!         }
//!     }
//!     Ok(frames)
//! }
//!
//! let mut buf = BytesMut::from(&[0x04, 0, 0, 0, 0x05, 0, 0, 0, 0, 0x04][..]); // OPTIONS, and a byte
//! let frames = read_frames(&mut buf, &mut CassandraCodecState::new(), &mut SegmentDecoder::new()).unwrap();
//! assert_eq!((frames.len(), buf.len()), (1, 1));
//! ```
//! The side that writes also feeds the handshake frames it sends to [`CassandraCodecState::observe`]:
//! in v5, the server's READY switches both directions to segments.
//!
//! ## Why the bodies are our own code
//! The project chose the `cassandra-protocol` crate. We use what of it is sound: its enums
//! ([`Version`], [`Opcode`], [`Consistency`]) as our public types, and its v5 CRC functions.
//! Its body decoders are not fit for bytes from the network: on malformed input they panic
//! (a string length past the end of the body slices out of range, a negative count reaches
//! `Vec::with_capacity`, a response with the tracing flag and a short body hits an `unwrap`,
//! a negative frame length overflows an addition), and a panic here would kill a whole core.
//! Its response encoding is test-only, its rows copy every cell, and its prepared metadata
//! encoder writes a v4 field into v3 frames. So framing, segments, parsing and encoding are
//! written here, with every length checked against the bytes that are really there.

#[cfg(test)]
pub(crate) mod captures;
pub mod cells;
pub mod classify;
pub mod compression;
pub mod connection;
pub mod frame;
pub mod framing;
pub mod header;
pub mod request;
pub mod response;
pub mod result;
pub mod segment;
pub mod state;
pub mod statement;
pub mod token;
mod wire;

pub use cassandra_protocol::consistency::Consistency;
pub use cassandra_protocol::frame::{Opcode, Version};
pub use classify::{classify, classify_request, PreparedQueryTypes, QueryType};
pub use compression::Compression;
pub use frame::{CassandraBody, CassandraFrame};
pub use header::FrameHeader;
pub use response::ErrorCode;
pub use state::CassandraCodecState;

/// Why bytes could not be read (or a frame could not be written) as CQL native protocol.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CassandraCodecError {
    #[error("Protocol error: unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("Protocol error: unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("Protocol error: frame body of {0} bytes is over the frame size limit")]
    FrameTooLarge(u64),
    #[error("Protocol error: a {opcode} {} was not expected", if *response { "response" } else { "request" })]
    UnexpectedOpcode { opcode: Opcode, response: bool },
    #[error("Protocol error: the message ended while reading {0}")]
    Truncated(&'static str),
    #[error("Protocol error: invalid length {len} for {what}")]
    InvalidLength { what: &'static str, len: i64 },
    #[error("Protocol error: {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("Protocol error: invalid {what} {value}")]
    InvalidValue { what: &'static str, value: i64 },
    #[error("Protocol error: column type nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("Protocol error: compressed frame, but no compression was negotiated")]
    CompressionNotNegotiated,
    #[error("Protocol error: unsupported compression {0:?}")]
    UnsupportedCompression(String),
    #[error("Protocol error: cannot decompress: {0}")]
    Decompression(String),
    #[error("Protocol error: segment header CRC24 is {actual:#08x}, computed {computed:#08x}")]
    SegmentHeaderCrc { actual: u32, computed: u32 },
    #[error("Protocol error: segment payload CRC32 is {actual:#010x}, computed {computed:#010x}")]
    SegmentPayloadCrc { actual: u32, computed: u32 },
    #[error("Protocol error: {0}")]
    SegmentSequence(&'static str),
    #[error("cannot encode {what}: {len} is over what its length field can hold")]
    TooLongToEncode { what: &'static str, len: usize },
}

/// Shorthand for this module's results.
pub type Result<T, E = CassandraCodecError> = std::result::Result<T, E>;
