//! One whole frame parsed into a [`CassandraFrame`], and encoded back.
//!
//! A body is, in order: a tracing id (`[uuid]`, responses with the TRACING flag), warnings
//! (`[string list]`, responses with the WARNING flag), a custom payload (`[bytes map]`, with
//! the CUSTOM_PAYLOAD flag), then the message of the opcode. Parsing happens only when a
//! transform asks; unmodified messages travel as the bytes they came in. Bytes past the end
//! of a known message are ignored, as the spec asks of clients.
//!
//! The message bodies are in [`super::request`], [`super::result`] and [`super::response`];
//! this module only dispatches on the opcode.

use super::compression::{decompress_frame, Compression};
use super::header::{flags, is_request_opcode, FrameHeader, HEADER_LEN, MAX_BODY_LEN};
use super::request::{Batch, Execute, Prepare, Query, Register, Startup};
use super::response::{ErrorBody, ErrorCode, Event};
use super::result::ResultBody;
use super::wire::{self, Reader};
use super::{CassandraCodecError, Opcode, Result, Version};
use bytes::Bytes;

/// A parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CassandraFrame {
    pub version: Version,
    /// True for frames sent by the server.
    pub response: bool,
    /// The header flags as received, with COMPRESSION cleared once the body is decompressed.
    /// TRACING (on responses), WARNING and CUSTOM_PAYLOAD are recomputed from the fields on
    /// encoding; other bits are written as they are.
    pub flags: u8,
    pub stream_id: i16,
    /// A response's tracing session id.
    pub tracing_id: Option<[u8; 16]>,
    /// A response's warnings.
    pub warnings: Vec<String>,
    pub custom_payload: Option<Vec<(String, Option<Bytes>)>>,
    pub body: CassandraBody,
}

/// The message of a frame, by opcode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CassandraBody {
    // Requests.
    Startup(Startup),
    Options,
    Query(Query),
    Prepare(Prepare),
    Execute(Execute),
    Batch(Batch),
    Register(Register),
    /// A SASL token.
    AuthResponse(Option<Bytes>),
    // Responses.
    Error(ErrorBody),
    Ready,
    /// The authenticator's class name.
    Authenticate(String),
    /// Supported STARTUP options and their values.
    Supported(Vec<(String, Vec<String>)>),
    Result(ResultBody),
    Event(Event),
    /// A SASL challenge.
    AuthChallenge(Option<Bytes>),
    /// The final SASL token.
    AuthSuccess(Option<Bytes>),
}

impl CassandraBody {
    pub fn opcode(&self) -> Opcode {
        match self {
            CassandraBody::Startup(_) => Opcode::Startup,
            CassandraBody::Options => Opcode::Options,
            CassandraBody::Query(_) => Opcode::Query,
            CassandraBody::Prepare(_) => Opcode::Prepare,
            CassandraBody::Execute(_) => Opcode::Execute,
            CassandraBody::Batch(_) => Opcode::Batch,
            CassandraBody::Register(_) => Opcode::Register,
            CassandraBody::AuthResponse(_) => Opcode::AuthResponse,
            CassandraBody::Error(_) => Opcode::Error,
            CassandraBody::Ready => Opcode::Ready,
            CassandraBody::Authenticate(_) => Opcode::Authenticate,
            CassandraBody::Supported(_) => Opcode::Supported,
            CassandraBody::Result(_) => Opcode::Result,
            CassandraBody::Event(_) => Opcode::Event,
            CassandraBody::AuthChallenge(_) => Opcode::AuthChallenge,
            CassandraBody::AuthSuccess(_) => Opcode::AuthSuccess,
        }
    }

    fn parse(r: &mut Reader, opcode: Opcode, version: Version) -> Result<Self> {
        Ok(match opcode {
            Opcode::Startup => CassandraBody::Startup(Startup::parse(r)?),
            Opcode::Options => CassandraBody::Options,
            Opcode::Query => CassandraBody::Query(Query::parse(r, version)?),
            Opcode::Prepare => CassandraBody::Prepare(Prepare::parse(r, version)?),
            Opcode::Execute => CassandraBody::Execute(Execute::parse(r, version)?),
            Opcode::Batch => CassandraBody::Batch(Batch::parse(r, version)?),
            Opcode::Register => CassandraBody::Register(Register::parse(r)?),
            Opcode::AuthResponse => CassandraBody::AuthResponse(r.bytes("auth token")?),
            Opcode::Error => CassandraBody::Error(ErrorBody::parse(r)?),
            Opcode::Ready => CassandraBody::Ready,
            Opcode::Authenticate => CassandraBody::Authenticate(r.string("authenticator")?),
            Opcode::Supported => CassandraBody::Supported(r.string_multimap("supported options")?),
            Opcode::Result => CassandraBody::Result(ResultBody::parse(r, version)?),
            Opcode::Event => CassandraBody::Event(Event::parse(r)?),
            Opcode::AuthChallenge => CassandraBody::AuthChallenge(r.bytes("auth token")?),
            Opcode::AuthSuccess => CassandraBody::AuthSuccess(r.bytes("auth token")?),
            // `Opcode` is non-exhaustive: a newer cassandra-protocol may add opcodes.
            other => return Err(CassandraCodecError::UnknownOpcode(u8::from(other))),
        })
    }

    fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        match self {
            CassandraBody::Startup(b) => b.encode(out),
            CassandraBody::Options | CassandraBody::Ready => Ok(()),
            CassandraBody::Query(b) => b.encode(out, version),
            CassandraBody::Prepare(b) => b.encode(out, version),
            CassandraBody::Execute(b) => b.encode(out, version),
            CassandraBody::Batch(b) => b.encode(out, version),
            CassandraBody::Register(b) => b.encode(out),
            CassandraBody::AuthResponse(t) | CassandraBody::AuthChallenge(t) | CassandraBody::AuthSuccess(t) => {
                wire::put_bytes(out, t.as_deref(), "auth token")
            }
            CassandraBody::Error(b) => b.encode(out),
            CassandraBody::Authenticate(name) => wire::put_string(out, name, "authenticator"),
            CassandraBody::Supported(options) => wire::put_string_multimap(out, options, "supported options"),
            CassandraBody::Result(b) => b.encode(out, version),
            CassandraBody::Event(b) => b.encode(out),
        }
    }
}

impl CassandraFrame {
    /// Parses one whole frame, as measured by [`super::framing::frame_len`]. A v3/v4 body
    /// with the compression flag is decompressed with the connection's `compression`.
    pub fn parse(frame: &Bytes, compression: Compression) -> Result<Self> {
        let header = FrameHeader::parse(frame)?;
        if is_request_opcode(header.opcode) == header.response {
            return Err(CassandraCodecError::UnexpectedOpcode { opcode: header.opcode, response: header.response });
        }
        let frame = decompress_frame(frame, compression)?;
        let flag_bits = if header.version >= Version::V5 { header.flags } else { header.flags & !flags::COMPRESSION };
        let announced = usize::try_from(FrameHeader::parse(&frame)?.body_len).unwrap_or(usize::MAX);
        let end = HEADER_LEN.saturating_add(announced);
        if frame.len() < end {
            return Err(CassandraCodecError::Truncated("frame body"));
        }
        let body = frame.slice(HEADER_LEN..end);
        let mut r = Reader::new(&body);
        let tracing_id =
            if header.response && flag_bits & flags::TRACING != 0 { Some(r.uuid("tracing id")?) } else { None };
        let warnings =
            if header.response && flag_bits & flags::WARNING != 0 { r.string_list("warnings")? } else { Vec::new() };
        let custom_payload =
            if flag_bits & flags::CUSTOM_PAYLOAD != 0 { Some(r.bytes_map("custom payload")?) } else { None };
        Ok(CassandraFrame {
            version: header.version,
            response: header.response,
            flags: flag_bits,
            stream_id: header.stream_id,
            tracing_id,
            warnings,
            custom_payload,
            body: CassandraBody::parse(&mut r, header.opcode, header.version)?,
        })
    }

    pub fn opcode(&self) -> Opcode {
        self.body.opcode()
    }

    /// The header flags that match the fields (COMPRESSION cleared).
    pub fn effective_flags(&self) -> u8 {
        let mut bits = self.flags & !(flags::COMPRESSION | flags::WARNING | flags::CUSTOM_PAYLOAD);
        if self.response {
            bits &= !flags::TRACING;
            if self.tracing_id.is_some() {
                bits |= flags::TRACING;
            }
            if !self.warnings.is_empty() {
                bits |= flags::WARNING;
            }
        }
        if self.custom_payload.is_some() {
            bits |= flags::CUSTOM_PAYLOAD;
        }
        bits
    }

    /// The frame as uncompressed bytes. Compress them with
    /// [`super::compression::compress_frame`] on a v3/v4 connection that negotiated it, or
    /// wrap them in segments ([`super::segment::encode_segments`]) on a v5 one.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = vec![0; HEADER_LEN];
        if self.response {
            if let Some(id) = &self.tracing_id {
                out.extend_from_slice(id);
            }
            if !self.warnings.is_empty() {
                wire::put_string_list(&mut out, &self.warnings, "warnings")?;
            }
        }
        if let Some(payload) = &self.custom_payload {
            wire::put_bytes_map(&mut out, payload, "custom payload")?;
        }
        self.body.encode(&mut out, self.version)?;
        let body_len = out.len() - HEADER_LEN;
        if body_len > MAX_BODY_LEN {
            return Err(CassandraCodecError::FrameTooLarge(body_len as u64));
        }
        let header = FrameHeader {
            version: self.version,
            response: self.response,
            flags: self.effective_flags(),
            stream_id: self.stream_id,
            opcode: self.opcode(),
            body_len: body_len as u32,
        };
        out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        Ok(out)
    }

    /// An ERROR response to `request` (same version and stream id).
    pub fn error(request: &FrameHeader, code: ErrorCode, message: impl Into<String>) -> Self {
        CassandraFrame::response(request, CassandraBody::Error(ErrorBody::new(code, message)))
    }

    /// A response to `request` (same version and stream id) carrying `body`: READY,
    /// SUPPORTED, a RESULT, ... with no tracing id, warnings or custom payload.
    pub fn response(request: &FrameHeader, body: CassandraBody) -> Self {
        CassandraFrame {
            version: request.version,
            response: true,
            flags: 0,
            stream_id: request.stream_id,
            tracing_id: None,
            warnings: Vec::new(),
            custom_payload: None,
            body,
        }
    }
}

#[cfg(test)]
mod tests;
