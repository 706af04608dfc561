//! The Valkey codec of the connection loop: RESP requests in, RESP replies out.
//!
//! Replies answer requests in order. A transform may hold requests back (Coalesce) and
//! answer them in a later batch, so the codec counts requests sent and answered; replies
//! beyond the outstanding requests are unsolicited (pub/sub). It also follows HELLO, so
//! replies the proxy makes itself use the protocol version the client chose.

use super::connection::{Malformed, SourceCodec};
use crate::message::{Message, Protocol};
use bytes::{Buf, BytesMut};
use shotover_protocols::valkey::command::{request_args, RequestView};
use shotover_protocols::valkey::frame::is_error_reply;
use shotover_protocols::valkey::framing::{Request, Scanner};
use shotover_protocols::valkey::RespVersion;
use std::collections::VecDeque;
use std::time::Instant;

/// What one Valkey connection remembers between batches.
pub struct ValkeyCodec {
    scanner: Scanner,
    /// The protocol the client negotiated with HELLO; replies made by the proxy use it.
    resp: RespVersion,
    /// Requests sent down the chain and responses returned for them so far.
    sent: u64,
    answered: u64,
    /// HELLO/RESET requests not answered yet: (request number, the protocol they switch to).
    switches: VecDeque<(u64, RespVersion)>,
}

impl ValkeyCodec {
    pub fn new() -> Self {
        ValkeyCodec {
            scanner: Scanner::default(),
            resp: RespVersion::Resp2,
            sent: 0,
            answered: 0,
            switches: VecDeque::new(),
        }
    }
}

impl Default for ValkeyCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceCodec for ValkeyCodec {
    fn decode(&mut self, buf: &mut BytesMut, now: Instant, batch: &mut Vec<Message>) -> Result<(), Malformed> {
        loop {
            match self.scanner.scan_request(buf) {
                Ok(Some(Request::Command(len))) => {
                    batch.push(Message::from_bytes(buf.split_to(len).freeze(), Protocol::Valkey, now))
                }
                // An empty line or `*0`: Valkey consumes it, runs nothing and answers nothing.
                Ok(Some(Request::Nothing(len))) => buf.advance(len),
                Ok(None) => return Ok(()),
                // As Valkey itself does: its own error reply (none when the query buffer
                // limit is passed), then the connection closes. The requests before the bad
                // bytes are in `batch` and are answered first.
                Err(e) => return Err(Malformed { reply: e.client_reply(), reason: e.to_string() }),
            }
        }
    }

    fn sent(&mut self, batch: &[Message]) {
        let first = self.sent;
        self.sent += batch.len() as u64;
        // Rare: only batches with HELLO or RESET pay for this.
        for (i, m) in batch.iter().enumerate() {
            if m.valkey_request().is_some_and(|v: RequestView<'_>| v.is("HELLO") || v.is("RESET")) {
                if let Some(version) = protocol_switch(m) {
                    self.switches.push_back((first + i as u64, version));
                }
            }
        }
    }

    fn encode(&mut self, mut responses: Vec<Message>, out: &mut BytesMut, connection: &str) {
        for response in &mut responses {
            if self.outstanding() > 0 {
                let number = self.answered;
                self.answered += 1;
                if self.switches.front().is_some_and(|(n, _)| *n == number) {
                    if let Some((_, version)) = self.switches.pop_front() {
                        if response.raw().is_some_and(|r| !is_error_reply(r)) {
                            self.resp = version;
                        }
                    }
                }
            }
            if response.raw().is_none() {
                response.set_resp_version(self.resp);
            }
            if let Err(e) = response.encode_into(out) {
                tracing::error!(%connection, "cannot encode a response: {e}");
                out.extend_from_slice(b"-ERR shotover: cannot encode the response\r\n");
            }
        }
    }

    fn chain_failed(&mut self, error: &str, out: &mut BytesMut) {
        let line = format!("-ERR shotover: {}\r\n", error.replace(['\r', '\n'], " "));
        for _ in 0..self.outstanding() {
            out.extend_from_slice(line.as_bytes());
        }
        self.answered = self.sent;
        self.switches.clear();
    }

    fn outstanding(&self) -> u64 {
        self.sent - self.answered
    }
}

/// The protocol a HELLO or RESET request switches to if it succeeds.
fn protocol_switch(request: &Message) -> Option<RespVersion> {
    let view = request.valkey_request()?;
    if view.is("RESET") {
        return Some(RespVersion::Resp2);
    }
    if !view.is("HELLO") || view.argc == 0 {
        return None;
    }
    match request_args(request.raw()?).first().map(|v| v.as_ref()) {
        Some(b"3") => Some(RespVersion::Resp3),
        Some(b"2") => Some(RespVersion::Resp2),
        _ => None,
    }
}
