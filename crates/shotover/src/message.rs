//! The unit that flows through a chain: one protocol message.
//!
//! A [`Message`] holds the raw bytes it arrived as and parses them into a [`Frame`] only
//! when a transform asks. Encoding writes the original bytes untouched unless a transform
//! changed the frame (zero-copy pass-through); the modified flag says which.

use bytes::{Bytes, BytesMut};
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
}

/// One protocol message: raw bytes, a lazily parsed frame, and ids.
#[derive(Debug, Clone)]
pub struct Message {
    /// The bytes as received. `None` for messages built from a frame.
    raw: Option<Bytes>,
    frame: Option<Frame>,
    /// True when `frame` differs from `raw`, so encoding must re-serialize.
    modified: bool,
    protocol: Protocol,
    resp_version: RespVersion,
    id: MessageId,
    request_id: Option<MessageId>,
    /// When the bytes were read from a socket, for the latency metrics.
    received_at: Option<Instant>,
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
            id: next_id(),
            request_id: None,
            received_at: Some(received_at),
        }
    }

    /// A message built by the proxy, such as a synthesized response.
    pub fn from_frame(frame: Frame) -> Self {
        let protocol = match frame {
            Frame::Valkey(_) => Protocol::Valkey,
        };
        Message {
            raw: None,
            frame: Some(frame),
            modified: true,
            protocol,
            resp_version: RespVersion::Resp2,
            id: next_id(),
            request_id: None,
            received_at: None,
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
    pub fn frame(&mut self) -> Result<&Frame, ValkeyCodecError> {
        self.parse()?;
        self.frame.as_ref().ok_or_else(|| ValkeyCodecError::Parse("message has no frame".into()))
    }

    /// The parsed frame for changing; marks the message modified.
    pub fn frame_mut(&mut self) -> Result<&mut Frame, ValkeyCodecError> {
        self.parse()?;
        self.modified = true;
        self.frame.as_mut().ok_or_else(|| ValkeyCodecError::Parse("message has no frame".into()))
    }

    fn parse(&mut self) -> Result<(), ValkeyCodecError> {
        if self.frame.is_none() {
            if let Some(raw) = &self.raw {
                let (frame, version) = valkey::frame::parse(raw)?;
                self.resp_version = version;
                self.frame = Some(Frame::Valkey(frame));
            }
        }
        Ok(())
    }

    /// The Valkey command name and argument count, read from the raw bytes without parsing.
    pub fn valkey_request(&self) -> Option<valkey::command::RequestView<'_>> {
        match (&self.raw, self.modified, &self.frame) {
            (Some(raw), false, _) => valkey::command::RequestView::new(raw),
            _ => None,
        }
    }

    /// Appends the wire form to `out`: the original bytes when unmodified.
    pub fn encode_into(&self, out: &mut BytesMut) -> Result<(), ValkeyCodecError> {
        match (&self.raw, self.modified, &self.frame) {
            (Some(raw), false, _) => {
                out.extend_from_slice(raw);
                Ok(())
            }
            (_, _, Some(Frame::Valkey(frame))) => valkey::frame::encode(frame, self.resp_version, out),
            (_, _, None) => Err(ValkeyCodecError::Parse("message has neither bytes nor frame".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmodified_message_is_written_as_received() {
        // Extra spaces in an inline command would be lost by a re-encode.
        let raw = Bytes::from_static(b"PING   \r\n");
        let mut m = Message::from_bytes(raw.clone(), Protocol::Valkey, Instant::now());
        assert!(m.frame().is_ok());
        let mut out = BytesMut::new();
        m.encode_into(&mut out).unwrap();
        assert_eq!(&out[..], &raw[..]);
        assert_eq!(m.valkey_request().unwrap().name, b"PING");
    }

    #[test]
    fn modified_message_is_re_encoded() {
        let mut m = Message::from_bytes(Bytes::from_static(b"$1\r\na\r\n"), Protocol::Valkey, Instant::now());
        *m.frame_mut().unwrap() = Frame::Valkey(valkey::frame::bulk("bb"));
        let mut out = BytesMut::new();
        m.encode_into(&mut out).unwrap();
        assert_eq!(&out[..], b"$2\r\nbb\r\n");
    }

    #[test]
    fn responses_carry_their_request_id() {
        let req = Message::from_bytes(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), Protocol::Valkey, Instant::now());
        let resp = Message::valkey_error_to(&req, "ERR no");
        assert_eq!(resp.request_id(), Some(req.id()));
    }
}
