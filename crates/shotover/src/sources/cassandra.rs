//! The Cassandra codec of the connection loop: CQL frames in, CQL frames out.
//!
//! Requests are frames cut from the client's bytes (from v5 segments once the handshake has
//! switched them on). Responses go back in whatever order the chain returns them: the
//! client matches them to its requests by stream id. EVENTs (stream id -1) are unsolicited.

use super::connection::{Malformed, SourceCodec};
use crate::cql::CqlWire;
use crate::message::Message;
use bytes::{Bytes, BytesMut};
use shotover_protocols::cassandra::header::{self, FrameHeader};
use shotover_protocols::cassandra::response::{error_response, unsupported_version_response};
use shotover_protocols::cassandra::{ErrorCode, Version};
use std::time::Instant;

/// What one Cassandra client connection remembers.
#[derive(Default)]
pub struct CassandraCodec {
    wire: CqlWire,
    frames: Vec<Bytes>,
    /// The headers of the batch the chain is running, to answer them if it fails.
    batch: Vec<FrameHeader>,
    sent: u64,
    answered: u64,
}

impl CassandraCodec {
    pub fn new() -> Self {
        Self::default()
    }

    /// A protocol error for input that is not CQL, on stream 0 unless one can be read.
    fn malformed(&mut self, buf: &[u8], reason: String) -> Malformed {
        let reply = match unsupported_version_response(buf) {
            // Drivers probe versions: this reply tells them to try a lower one.
            Some(reply) => reply,
            None => {
                let header = FrameHeader {
                    version: self.wire.state.version.unwrap_or(Version::V4),
                    response: false,
                    flags: 0,
                    stream_id: header::stream_id(buf).unwrap_or(0),
                    opcode: shotover_protocols::cassandra::Opcode::Query,
                    body_len: 0,
                };
                let frame = Bytes::from(error_response(&header, ErrorCode::PROTOCOL_ERROR, &reason));
                let mut out = BytesMut::new();
                match self.wire.encode(std::slice::from_ref(&frame), &mut out) {
                    Ok(()) => out.to_vec(),
                    Err(_) => frame.to_vec(),
                }
            }
        };
        Malformed { reply, reason }
    }
}

impl SourceCodec for CassandraCodec {
    fn decode(&mut self, buf: &mut BytesMut, now: Instant, batch: &mut Vec<Message>) -> Result<(), Malformed> {
        let result = self.wire.decode(buf, &mut self.frames);
        let compression = self.wire.frame_compression();
        batch.extend(self.frames.drain(..).map(|frame| Message::from_cql(frame, compression, now)));
        result.map_err(|e| {
            let rest = buf.split().freeze();
            self.malformed(&rest, e.to_string())
        })
    }

    fn sent(&mut self, batch: &[Message]) {
        self.sent += batch.len() as u64;
        self.batch.clear();
        self.batch.extend(batch.iter().filter_map(Message::cql_header));
    }

    fn encode(&mut self, responses: Vec<Message>, out: &mut BytesMut, connection: &str) {
        let mut frames = Vec::with_capacity(responses.len());
        for response in &responses {
            match response.to_bytes() {
                Ok(bytes) => {
                    if header::stream_id(&bytes).is_ok_and(|id| id >= 0) {
                        self.answered += 1;
                    }
                    frames.push(bytes);
                }
                Err(e) => tracing::error!(%connection, "cannot encode a response: {e}"),
            }
        }
        if let Err(e) = self.wire.encode(&frames, out) {
            tracing::error!(%connection, "cannot write responses: {e}");
        }
    }

    fn chain_failed(&mut self, error: &str, out: &mut BytesMut) {
        let frames: Vec<Bytes> = self
            .batch
            .iter()
            .map(|h| Bytes::from(error_response(h, ErrorCode::SERVER_ERROR, &format!("shotover: {error}"))))
            .collect();
        self.answered += frames.len() as u64;
        if let Err(e) = self.wire.encode(&frames, out) {
            tracing::error!("cannot write error responses: {e}");
        }
    }

    fn outstanding(&self) -> u64 {
        self.sent.saturating_sub(self.answered)
    }
}
