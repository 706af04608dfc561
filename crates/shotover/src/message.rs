//! The unit that flows through a chain: one protocol message.
//!
//! A [`Message`] holds the raw bytes it arrived as and parses them into a [`Frame`] only
//! when a transform asks. Encoding writes the original bytes untouched unless a transform
//! changed the frame (zero-copy pass-through); the modified flag says which.

use bytes::{Bytes, BytesMut};
use shotover_protocols::cassandra::{self, CassandraCodecError, CassandraFrame, Compression, ErrorCode, FrameHeader};
use shotover_protocols::kafka::{self, KafkaCodecError, KafkaFrame};
use shotover_protocols::valkey::{self, RespVersion, ValkeyCodecError, ValkeyFrame};
use std::cell::Cell;
use std::time::Instant;

/// Identifies a message within its core. Responses carry the id of their request.
pub type MessageId = u64;

thread_local! {
    static NEXT_ID: Cell<MessageId> = const { Cell::new(1) };
}

fn next_id() -> MessageId {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1));
        id
    })
}

/// The protocol a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Valkey,
    Cassandra,
    Kafka,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Valkey => "Valkey",
            Protocol::Cassandra => "Cassandra",
            Protocol::Kafka => "Kafka",
        })
    }
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Valkey(ValkeyFrame),
    /// Boxed: a CQL frame is several times the size of the other variants.
    Cassandra(Box<CassandraFrame>),
    Kafka(Box<KafkaFrame>),
}

/// Why a message could not be parsed or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Valkey(#[from] ValkeyCodecError),
    #[error(transparent)]
    Cassandra(#[from] CassandraCodecError),
    #[error(transparent)]
    Kafka(#[from] KafkaCodecError),
    #[error("{0}")]
    Other(String),
}

/// Why the proxy answers a request itself; each protocol has its own answer for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// A transform refused the request (QueryTypeFilter, Tee's FailOnMismatch, DebugReturner).
    Refused,
    /// Too many requests (RequestThrottling), or no upstream could take it: retry later.
    Overloaded,
    /// The upstream failed after the request may have been sent: only the client can retry.
    Upstream,
}

/// Where a Valkey request's name is in its bytes (offset, length), its argument count, what
/// its name says (see [`Message::valkey_request`]) and whether it is one command as clients
/// send it (see [`Message::is_valkey_command_array`]); 32-bit, to keep messages small (a
/// request too large for them is read again on each ask).
type KnownView = (u32, u32, u32, valkey::command::Special, bool);

/// One protocol message: raw bytes, a lazily parsed frame, and ids.
#[derive(Debug, Clone)]
pub struct Message {
    /// The bytes as received. `None` for messages built from a frame.
    raw: Option<Bytes>,
    /// Boxed: most messages pass through as bytes and never get a frame, and a smaller
    /// message is cheaper to move through a chain's lists (a Valkey frame inline made every
    /// message 224 bytes instead of 112).
    frame: Option<Box<Frame>>,
    /// True when `frame` differs from `raw`, so encoding must re-serialize.
    modified: bool,
    protocol: Protocol,
    resp_version: RespVersion,
    /// How a Cassandra frame's body is compressed on the connection it came from.
    compression: Compression,
    /// A Kafka response's request: its api key and version, which the response lacks.
    kafka_request: Option<(i16, i16)>,
    id: MessageId,
    request_id: Option<MessageId>,
    /// When the bytes were read from a socket, for the latency metrics.
    received_at: Option<Instant>,
    /// True for a message the upstream sent unasked (a pub/sub message, a RESP3 push,
    /// MONITOR output): it answers no request.
    pushed: bool,
    /// True for an answer after which the source closes the client connection (see
    /// [`Message::close_after`]).
    close_after: bool,
    /// [`Message::valkey_request`] worked out once (several transforms and the sink ask):
    /// the name's offset and length in `raw`, the argument count and what the name says;
    /// `Some(None)` when the bytes are not a command.
    valkey_view: Cell<Option<Option<KnownView>>>,
}

impl Message {
    /// A message as read from a socket.
    pub fn from_bytes(raw: Bytes, protocol: Protocol, received_at: Instant) -> Self {
        Message {
            raw: Some(raw),
            frame: None,
            modified: false,
            protocol,
            resp_version: RespVersion::Resp2,
            compression: Compression::None,
            kafka_request: None,
            id: next_id(),
            request_id: None,
            received_at: Some(received_at),
            pushed: false,
            close_after: false,
            valkey_view: Cell::new(None),
        }
    }

    /// A Valkey request as a source framed it, with what framing already found out about it
    /// (`None` for an inline request): nothing reads its bytes again to find its name.
    pub fn valkey_request_from(raw: Bytes, shape: Option<valkey::framing::RequestShape>, received_at: Instant) -> Self {
        let message = Message::from_bytes(raw, Protocol::Valkey, received_at);
        if let Some(shape) = shape {
            let (start, len) = shape.name;
            let name = message
                .raw
                .as_ref()
                .and_then(|raw| raw.get(start as usize..(start as usize).checked_add(len as usize)?));
            if let Some(name) = name {
                let special = valkey::command::Special::of(name);
                message.valkey_view.set(Some(Some((start, len, shape.argc, special, shape.strict))));
            }
        }
        message
    }

    /// A message the upstream sent unasked (see [`Message::is_pushed`]).
    pub fn pushed(raw: Bytes, protocol: Protocol, received_at: Instant) -> Self {
        let mut m = Message::from_bytes(raw, protocol, received_at);
        m.pushed = true;
        m
    }

    /// True for a message that answers no request: a pub/sub message, a RESP3 push or
    /// MONITOR output. Such messages travel up the chain among the responses, where the
    /// upstream sent them; whoever pairs responses with requests skips them.
    pub fn is_pushed(&self) -> bool {
        self.pushed
    }

    /// Marks an answer after which the client connection is closed, as the server's
    /// would be: the client's own reconnect back-off then paces its retries. (The Kafka
    /// source honours it; a sink that cannot reach its broker answers so.)
    pub fn close_after(&mut self) {
        self.close_after = true;
    }

    pub fn closes_connection(&self) -> bool {
        self.close_after
    }

    /// The answer to a Valkey request whose reply the client must not see (`CLIENT REPLY
    /// OFF` or `SKIP` is in effect, or the request came after `QUIT`): it writes nothing.
    pub fn silent_response_to(request: &Message) -> Self {
        let mut m = Message::from_bytes(Bytes::new(), request.protocol, Instant::now());
        m.received_at = None;
        m.request_id = Some(request.id);
        m
    }

    /// A Kafka response, with the api key and version of the request it answers (needed to
    /// parse it).
    pub fn from_kafka_response(raw: Bytes, api_key: i16, api_version: i16, received_at: Instant) -> Self {
        let mut m = Message::from_bytes(raw, Protocol::Kafka, received_at);
        m.kafka_request = Some((api_key, api_version));
        m
    }

    /// A Cassandra frame as read from a connection that negotiated `compression`.
    pub fn from_cql(raw: Bytes, compression: Compression, received_at: Instant) -> Self {
        let mut m = Message::from_bytes(raw, Protocol::Cassandra, received_at);
        m.compression = compression;
        m
    }

    /// A message built by the proxy, such as a synthesized response.
    pub fn from_frame(frame: Frame) -> Self {
        let protocol = match frame {
            Frame::Valkey(_) => Protocol::Valkey,
            Frame::Cassandra(_) => Protocol::Cassandra,
            Frame::Kafka(_) => Protocol::Kafka,
        };
        Message {
            raw: None,
            frame: Some(Box::new(frame)),
            modified: true,
            protocol,
            resp_version: RespVersion::Resp2,
            compression: Compression::None,
            kafka_request: None,
            id: next_id(),
            request_id: None,
            received_at: None,
            pushed: false,
            close_after: false,
            valkey_view: Cell::new(None),
        }
    }

    /// A response built by the proxy for `request`, written in the request's RESP version.
    pub fn response_to(request: &Message, frame: Frame) -> Self {
        let mut m = Message::from_frame(frame);
        m.request_id = Some(request.id);
        m.resp_version = request.resp_version;
        m
    }

    /// A Valkey error reply to `request`; `text` starts with an error code such as `ERR`.
    pub fn valkey_error_to(request: &Message, text: impl Into<String>) -> Self {
        Message::response_to(request, Frame::Valkey(valkey::frame::error(text)))
    }

    /// An "empty" answer to `request` in its protocol: a Valkey null, a CQL RESULT Void, or
    /// a Kafka response of the request's own type with no error and every field at its
    /// default. A Kafka request that gets no response (Produce with acks=0) must get none:
    /// check [`Message::expects_response`].
    pub fn empty_response_to(request: &Message) -> Self {
        match (request.protocol, request.cql_header()) {
            (Protocol::Cassandra, Some(header)) => {
                let frame = CassandraFrame {
                    version: header.version,
                    response: true,
                    flags: 0,
                    stream_id: header.stream_id,
                    tracing_id: None,
                    warnings: Vec::new(),
                    custom_payload: None,
                    body: cassandra::CassandraBody::Result(cassandra::result::ResultBody::Void),
                };
                Message::response_to(request, Frame::Cassandra(Box::new(frame)))
            }
            // A request a transform changed has no raw bytes left: its encoding has the header.
            (Protocol::Kafka, _) => {
                let answer = (request.to_bytes().map_err(|e| e.to_string()))
                    .and_then(|raw| kafka::safe_error::empty_response(&raw).map_err(|e| e.to_string()));
                match answer {
                    Ok(Some(bytes)) => Message::kafka_answer_to(request, bytes),
                    Ok(None) => Message::kafka_answer_to(request, Bytes::new()),
                    // An empty message: the source closes the connection, as after error_to's
                    // answer to a request it cannot answer.
                    Err(e) => {
                        crate::warn_limited!("cannot answer a Kafka request with an empty response: {e}");
                        Message::kafka_answer_to(request, Bytes::new())
                    }
                }
            }
            _ => Message::response_to(request, Frame::Valkey(ValkeyFrame::Null)),
        }
    }

    /// [`Message::error_to`] with `Overloaded` for a Kafka request, with the response's
    /// `throttle_time_ms` (where its version has one) set to `wait`, as a broker does when a
    /// quota is exceeded.
    pub fn kafka_throttled_to(request: &Message, text: &str, wait: std::time::Duration) -> Self {
        let code = kafka::error_response::THROTTLING_QUOTA_EXCEEDED;
        let frame = match request.raw().map(|raw| kafka::safe_error::safe_error_frame(raw, code)) {
            Some(Ok(Some(frame))) => frame,
            // No answer is due (acks=0), or none can be made: what error_to gives then, without
            // walking the request a second time.
            Some(Ok(None)) | None => return Message::kafka_answer_to(request, Bytes::new()),
            Some(Err(e)) => {
                tracing::warn!("cannot answer a Kafka request with an error ({text}): {e}");
                return Message::kafka_answer_to(request, Bytes::new());
            }
        };
        let mut frame = frame;
        if let kafka::KafkaFrame::Response { body, .. } = &mut frame {
            let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
            kafka::api::set_throttle_time_ms(body, ms);
        }
        match frame.to_bytes() {
            Ok(bytes) => Message::kafka_answer_to(request, bytes),
            Err(_) => Message::error_to(request, ProxyError::Overloaded, text),
        }
    }

    /// The proxy's own Kafka answer to `request`, from its bytes.
    fn kafka_answer_to(request: &Message, bytes: Bytes) -> Self {
        let mut m = Message::from_bytes(bytes, Protocol::Kafka, Instant::now());
        m.received_at = None;
        m.request_id = Some(request.id);
        m
    }

    /// The proxy's own error answer to `request`, in the request's protocol:
    /// - Valkey: `-ERR <text>` (the text should not start with an error code);
    /// - Cassandra: an ERROR frame on the request's stream: Server error for `Refused` and
    ///   `Upstream`, Overloaded for `Overloaded`;
    /// - Kafka: the request's own response type with an error code everywhere the client
    ///   reads one: POLICY_VIOLATION for `Refused`, THROTTLING_QUOTA_EXCEEDED for
    ///   `Overloaded`, REQUEST_TIMED_OUT for `Upstream` (see `kafka::error_response`). A
    ///   request that gets no response (Produce with acks=0) gets none: check
    ///   [`Message::expects_response`]. A request
    ///   whose response has no place for an error gets an empty message, on which the
    ///   source closes the connection (the client then retries on a new one).
    pub fn error_to(request: &Message, kind: ProxyError, text: &str) -> Self {
        match request.protocol {
            Protocol::Valkey => Message::valkey_error_to(request, format!("ERR {text}")),
            Protocol::Kafka => {
                let code = match kind {
                    ProxyError::Refused => kafka::error_response::POLICY_VIOLATION,
                    ProxyError::Overloaded => kafka::error_response::THROTTLING_QUOTA_EXCEEDED,
                    ProxyError::Upstream => kafka::error_response::UPSTREAM_UNAVAILABLE,
                };
                let raw = request.raw.as_ref().map(|raw| kafka::safe_error::safe_error_response(raw, code));
                let bytes = match raw {
                    Some(Ok(Some(bytes))) => bytes,
                    Some(Ok(None)) => Bytes::new(),
                    Some(Err(e)) => {
                        tracing::warn!("cannot answer a Kafka request with an error ({text}): {e}");
                        Bytes::new()
                    }
                    None => Bytes::new(),
                };
                Message::kafka_answer_to(request, bytes)
            }
            Protocol::Cassandra => {
                let code = match kind {
                    ProxyError::Overloaded => ErrorCode::OVERLOADED,
                    ProxyError::Refused | ProxyError::Upstream => ErrorCode::SERVER_ERROR,
                };
                // A request made by a transform has no bytes but a frame; either gives the header.
                let header = request.cql_header().unwrap_or(FrameHeader {
                    version: cassandra::Version::V4,
                    response: false,
                    flags: 0,
                    stream_id: 0,
                    opcode: cassandra::Opcode::Query,
                    body_len: 0,
                });
                Message::response_to(request, Frame::Cassandra(Box::new(CassandraFrame::error(&header, code, text))))
            }
        }
    }

    pub fn id(&self) -> MessageId {
        self.id
    }

    pub fn request_id(&self) -> Option<MessageId> {
        self.request_id
    }

    pub fn set_request_id(&mut self, id: MessageId) {
        self.request_id = Some(id);
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn received_at(&self) -> Option<Instant> {
        self.received_at
    }

    /// The RESP version messages from the proxy should be written in on this connection.
    pub fn set_resp_version(&mut self, v: RespVersion) {
        self.resp_version = v;
    }

    /// The raw bytes, if this message has not been modified since it was read.
    pub fn raw(&self) -> Option<&Bytes> {
        if self.modified {
            None
        } else {
            self.raw.as_ref()
        }
    }

    pub fn is_modified(&self) -> bool {
        self.modified
    }

    /// The parsed frame, parsing on first access.
    pub fn frame(&mut self) -> Result<&Frame, CodecError> {
        self.parse()?;
        self.frame.as_deref().ok_or_else(|| CodecError::Other("message has no frame".into()))
    }

    /// The parsed frame for changing; marks the message modified.
    pub fn frame_mut(&mut self) -> Result<&mut Frame, CodecError> {
        self.parse()?;
        self.modified = true;
        self.frame.as_deref_mut().ok_or_else(|| CodecError::Other("message has no frame".into()))
    }

    fn parse(&mut self) -> Result<(), CodecError> {
        if self.frame.is_none() {
            if let Some(raw) = &self.raw {
                self.frame = Some(Box::new(match self.protocol {
                    Protocol::Valkey => {
                        let (frame, version) = valkey::frame::parse(raw)?;
                        self.resp_version = version;
                        Frame::Valkey(frame)
                    }
                    Protocol::Cassandra => Frame::Cassandra(Box::new(CassandraFrame::parse(raw, self.compression)?)),
                    Protocol::Kafka => match self.kafka_request {
                        Some((key, version)) => {
                            let key = kafka::ApiKey::try_from(key)
                                .map_err(|()| CodecError::Other(format!("unknown Kafka api key {key}")))?;
                            Frame::Kafka(Box::new(KafkaFrame::parse_response(raw, key, version)?))
                        }
                        // kafka-protocol sizes arrays from counts on the wire before reading
                        // them, so a crafted request could abort the process: only the
                        // requests `walk` checks field by field first are parsed in full.
                        None if kafka::header::request_ids(raw)
                            .ok()
                            .and_then(|ids| kafka::ApiKey::try_from(ids.api_key).ok())
                            .is_some_and(kafka::walk::is_walked) =>
                        {
                            Frame::Kafka(Box::new(KafkaFrame::parse_request(raw)?))
                        }
                        None => return Err(CodecError::Other(
                            "Kafka requests are not parsed in full (untrusted array counts); read their header instead"
                                .into(),
                        )),
                    },
                }));
            }
        }
        Ok(())
    }

    /// False for requests that get no response: Kafka Produce with acks=0.
    pub fn expects_response(&self) -> bool {
        match (self.protocol, self.raw()) {
            (Protocol::Kafka, Some(raw)) => kafka::produce::expects_response(raw).unwrap_or(true),
            _ => true,
        }
    }

    /// How the raw bytes of a Cassandra message are compressed (see [`Message::from_cql`]).
    pub fn cql_compression(&self) -> Compression {
        self.compression
    }

    /// The header of a Cassandra message, read from its bytes (or its frame) without parsing.
    pub fn cql_header(&self) -> Option<FrameHeader> {
        match (&self.raw, self.modified, self.frame.as_deref()) {
            (Some(raw), false, _) => FrameHeader::parse(raw).ok(),
            (_, _, Some(Frame::Cassandra(f))) => Some(FrameHeader {
                version: f.version,
                response: f.response,
                flags: f.effective_flags(),
                stream_id: f.stream_id,
                opcode: f.opcode(),
                body_len: 0,
            }),
            _ => None,
        }
    }

    /// The Valkey command name and argument count, read from the raw bytes without parsing.
    pub fn valkey_request(&self) -> Option<valkey::command::RequestView<'_>> {
        let raw = match (&self.raw, self.modified) {
            (Some(raw), false) => raw,
            _ => return None,
        };
        if let Some(known) = self.valkey_view.get() {
            let (start, len, argc, special, _) = known?;
            let (start, len) = (start as usize, len as usize);
            let name = raw.get(start..start.checked_add(len)?)?;
            return Some(valkey::command::RequestView { name, argc: argc as usize, special });
        }
        let view = valkey::command::RequestView::new(raw);
        // The name is a slice of `raw`: its offset is the distance between the two pointers.
        let known = match view {
            None => Some(None),
            Some(v) => {
                let start = (v.name.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
                let small = |n: usize| u32::try_from(n).ok();
                match (small(start), small(v.name.len()), small(v.argc)) {
                    (Some(start), Some(len), Some(argc)) => {
                        Some(Some((start, len, argc, v.special, valkey::command::is_command_array(raw))))
                    }
                    _ => None,
                }
            }
        };
        if let Some(known) = known {
            self.valkey_view.set(Some(known));
        }
        view
    }

    /// True when this is an unmodified Valkey request of exactly one command as clients send
    /// it, an array of bulk strings ([`valkey::command::is_command_array`]): such a request
    /// gets exactly one reply.
    pub fn is_valkey_command_array(&self) -> bool {
        self.valkey_request().is_some()
            && match self.valkey_view.get() {
                Some(Some((_, _, _, _, array))) => array,
                // The view was too large to keep: read the bytes.
                _ => self.raw.as_ref().is_some_and(|raw| valkey::command::is_command_array(raw)),
            }
    }

    /// Appends the wire form to `out`: the original bytes when unmodified. A modified
    /// Cassandra frame is written uncompressed (valid on any v3/v4 connection; v5 writers
    /// wrap frames in segments).
    pub fn encode_into(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        match (&self.raw, self.modified, self.frame.as_deref()) {
            (Some(raw), false, _) => {
                out.extend_from_slice(raw);
                Ok(())
            }
            (_, _, Some(Frame::Valkey(frame))) => Ok(valkey::frame::encode(frame, self.resp_version, out)?),
            (_, _, Some(Frame::Cassandra(frame))) => {
                out.extend_from_slice(&frame.encode()?);
                Ok(())
            }
            (_, _, Some(Frame::Kafka(frame))) => Ok(frame.encode(out)?),
            (_, _, None) => Err(CodecError::Other("message has neither bytes nor frame".into())),
        }
    }

    /// The wire form as one buffer: the original bytes (no copy) when unmodified.
    pub fn to_bytes(&self) -> Result<Bytes, CodecError> {
        if let Some(raw) = self.raw() {
            return Ok(raw.clone());
        }
        let mut out = BytesMut::new();
        self.encode_into(&mut out)?;
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests;
