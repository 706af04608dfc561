//! The Cassandra codec of the connection loop: CQL frames in, CQL frames out.
//!
//! Requests are frames cut from the client's bytes (from v5 segments once the handshake has
//! switched them on). Responses go back in whatever order the chain returns them: the
//! client matches them to its requests by stream id. EVENTs (stream id -1) are unsolicited.

use super::connection::{Malformed, SourceCodec};
use crate::chain::ChainError;
use crate::message::Message;
use bytes::{Bytes, BytesMut};
use shotover_protocols::cassandra::connection::CqlWire;
use shotover_protocols::cassandra::header::{self, FrameHeader};
use shotover_protocols::cassandra::response::{error_response, unsupported_version_response};
use shotover_protocols::cassandra::{ErrorCode, Version};
use std::collections::HashMap;
use std::time::Instant;

/// What one Cassandra client connection remembers.
#[derive(Default)]
pub struct CassandraCodec {
    wire: CqlWire,
    frames: Vec<Bytes>,
    /// The requests sent down the chain and not answered yet, by stream id: answers come
    /// back in any order, and if the chain fails every one of them (from this batch or an
    /// earlier one) gets an error, so no client request waits forever.
    waiting: HashMap<i16, FrameHeader>,
}

impl CassandraCodec {
    /// A client connection whose frames may be at most `max_request` bytes, header included.
    pub fn new(max_request: usize) -> Self {
        CassandraCodec { wire: CqlWire::with_max_frame(max_request), ..Self::default() }
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
        // Every request's header is readable: the decoder cut it from a checked frame. A
        // negative stream id is the server's (EVENTs); a client that uses one is not waited
        // for, or it would keep its connection open at every idle close.
        for h in batch.iter().filter_map(Message::cql_header).filter(|h| h.stream_id >= 0) {
            self.waiting.insert(h.stream_id, h);
        }
    }

    fn encode(&mut self, responses: Vec<Message>, out: &mut BytesMut, connection: &str) {
        let mut frames = Vec::with_capacity(responses.len());
        for response in &responses {
            let encoded = response.to_bytes();
            let id = match &encoded {
                Ok(bytes) => header::stream_id(bytes).ok(),
                Err(_) => response.cql_header().map(|h| h.stream_id),
            };
            // A stream id of -1 is an EVENT, which answers nothing.
            let request = id.filter(|&id| id >= 0).and_then(|id| self.waiting.remove(&id));
            match encoded {
                Ok(bytes) => frames.push(bytes),
                Err(e) => {
                    tracing::error!(%connection, "cannot encode a response: {e}");
                    // The client still gets an answer on that stream.
                    if let Some(h) = request {
                        let message = format!("shotover: cannot encode the response: {e}");
                        frames.push(Bytes::from(error_response(&h, ErrorCode::SERVER_ERROR, &message)));
                    }
                }
            }
        }
        if let Err(e) = self.wire.encode(&frames, out) {
            tracing::error!(%connection, "cannot write responses: {e}");
        }
    }

    fn chain_failed(&mut self, error: &ChainError, out: &mut BytesMut) {
        let message = format!("shotover: {error}");
        let frames: Vec<Bytes> = self
            .waiting
            .drain()
            .map(|(_, h)| Bytes::from(error_response(&h, ErrorCode::SERVER_ERROR, &message)))
            .collect();
        if let Err(e) = self.wire.encode(&frames, out) {
            tracing::error!("cannot write error responses: {e}");
        }
    }

    fn outstanding(&self) -> u64 {
        self.waiting.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v4 QUERY request frame on `stream`.
    fn request(stream: i16) -> Bytes {
        let mut body = Vec::new();
        let text = b"SELECT * FROM t";
        body.extend_from_slice(&(text.len() as u32).to_be_bytes());
        body.extend_from_slice(text);
        body.extend_from_slice(&[0, 1, 0]);
        let mut frame = vec![0x04, 0];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.push(0x07);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        Bytes::from(frame)
    }

    fn decode_batch(codec: &mut CassandraCodec, streams: &[i16]) -> Vec<Message> {
        let mut buf = BytesMut::new();
        for &s in streams {
            buf.extend_from_slice(&request(s));
        }
        let mut batch = Vec::new();
        assert!(codec.decode(&mut buf, Instant::now(), &mut batch).is_ok());
        batch
    }

    /// The (stream id, opcode, error code) of each frame in `out`.
    fn answers(out: &[u8]) -> Vec<(i16, u8, u32)> {
        let mut at = 0;
        let mut seen = Vec::new();
        while let Ok(h) = FrameHeader::parse(&out[at..]) {
            let code = u32::from_be_bytes(out[at + 9..at + 13].try_into().unwrap());
            seen.push((h.stream_id, out[at + 4], code));
            at += 9 + h.body_len as usize;
        }
        seen
    }

    #[test]
    fn a_failed_chain_answers_every_waiting_request_not_only_the_last_batch() {
        let mut codec = CassandraCodec::default();
        let first = decode_batch(&mut codec, &[1, 2, 3]);
        codec.sent(&first);
        let second = decode_batch(&mut codec, &[4, 5]);
        codec.sent(&second);
        assert_eq!(codec.outstanding(), 5);
        // Stream 2 is answered (out of order) before the failure.
        let response = Message::from_cql(
            Bytes::from_static(&[0x84, 0, 0, 2, 0x08, 0, 0, 0, 4, 0, 0, 0, 1]),
            Default::default(),
            Instant::now(),
        );
        let mut out = BytesMut::new();
        codec.encode(vec![response], &mut out, "test");
        assert_eq!(codec.outstanding(), 4);
        out.clear();
        codec.chain_failed(&ChainError::upstream("the node went away"), &mut out);
        let mut got = answers(&out);
        got.sort();
        let server_error = 0x0000;
        assert_eq!(got, vec![(1, 0, server_error), (3, 0, server_error), (4, 0, server_error), (5, 0, server_error)]);
        assert_eq!(codec.outstanding(), 0);
    }

    #[test]
    fn events_answer_no_request() {
        let mut codec = CassandraCodec::default();
        let batch = decode_batch(&mut codec, &[7]);
        codec.sent(&batch);
        let event = Message::from_cql(
            Bytes::from_static(&[0x84, 0, 0xff, 0xff, 0x0c, 0, 0, 0, 0]),
            Default::default(),
            Instant::now(),
        );
        codec.encode(vec![event], &mut BytesMut::new(), "test");
        assert_eq!(codec.outstanding(), 1);
    }
}
