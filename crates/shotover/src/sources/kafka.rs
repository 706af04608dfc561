//! The Kafka codec of the connection loop: length-prefixed requests in, responses out.
//!
//! A broker answers the requests of one connection in order, and clients check that each
//! response's correlation id is the next one they expect; Produce with acks=0 gets no
//! response at all. So, as for Valkey, responses answer the outstanding requests in order,
//! and the codec keeps the requests that await one, to answer them with errors if the
//! chain fails.

use super::connection::{Malformed, SourceCodec};
use crate::chain::ChainError;
use crate::message::{Message, Protocol, ProxyError};
use bytes::{Bytes, BytesMut};
use shotover_protocols::kafka::framing;
use std::collections::VecDeque;
use std::time::Instant;

/// What one Kafka client connection remembers.
pub struct KafkaCodec {
    /// Requests that expect a response and have not had it, oldest first.
    waiting: VecDeque<Message>,
    /// Set when a response could not be made: the connection closes after this batch.
    broken: bool,
    /// The source's `max_request_bytes`, less the length prefix.
    max_message: usize,
}

impl KafkaCodec {
    /// A client connection whose requests may be at most `max_request` bytes, length
    /// prefix included.
    pub fn new(max_request: usize) -> Self {
        let max_message = max_request.saturating_sub(framing::LENGTH_PREFIX_LEN);
        KafkaCodec { waiting: VecDeque::new(), broken: false, max_message }
    }
}

impl SourceCodec for KafkaCodec {
    fn decode(&mut self, buf: &mut BytesMut, now: Instant, batch: &mut Vec<Message>) -> Result<(), Malformed> {
        loop {
            match framing::message_len_max(buf, self.max_message) {
                Ok(Some(len)) => batch.push(Message::from_bytes(buf.split_to(len).freeze(), Protocol::Kafka, now)),
                Ok(None) => {
                    framing::reserve_rest(buf);
                    return Ok(());
                }
                // Kafka has no reply to bytes it cannot frame: the broker closes, and so do we.
                Err(e) => return Err(Malformed { reply: Vec::new(), reason: e.to_string() }),
            }
        }
    }

    fn sent(&mut self, batch: &[Message]) {
        // A clone shares the request's bytes; only their header is read again later.
        self.waiting.extend(batch.iter().filter(|m| m.expects_response()).cloned());
    }

    fn encode(&mut self, responses: Vec<Message>, out: &mut BytesMut, connection: &str) {
        for response in responses {
            if response.raw().is_some_and(Bytes::is_empty) {
                tracing::warn!(%connection, "a Kafka request could not be answered: closing the connection");
                self.broken = true;
            }
            // The sink has logged why (its broker cannot be reached).
            self.broken |= response.closes_connection();
            self.waiting.pop_front();
            if let Err(e) = response.encode_into(out) {
                tracing::error!(%connection, "cannot encode a response: {e}");
                self.broken = true;
            }
        }
    }

    fn chain_failed(&mut self, error: &ChainError, out: &mut BytesMut) {
        // Every waiting request is answered here, but a sink below may still get the
        // broker's answers to some of them, which would then answer newer requests: close
        // after this write, and the client reconnects.
        self.broken = true;
        let text = format!("shotover: {error}");
        for request in self.waiting.drain(..) {
            // A request that cannot get an error answer gets none; the close tells the client.
            if let Some(bytes) = Message::error_to(&request, ProxyError::Upstream, &text).raw() {
                out.extend_from_slice(bytes);
            }
        }
    }

    fn outstanding(&self) -> u64 {
        self.waiting.len() as u64
    }

    fn must_close(&self) -> bool {
        self.broken
    }
}
