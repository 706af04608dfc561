//! The Valkey codec of the connection loop: RESP requests in, RESP replies out.
//!
//! Replies answer requests in order. A transform may hold requests back (Coalesce) and
//! answer them in a later batch, so the codec counts requests sent and answered; messages
//! the upstream pushed unasked ([`Message::is_pushed`]: pub/sub, RESP3 pushes, MONITOR
//! output) are written where they came and answer nothing. It also follows HELLO and RESET,
//! so replies the proxy makes itself use the protocol version the client chose, and QUIT:
//! once QUIT is answered the connection closes, as Valkey closes it.

use super::connection::{Malformed, SourceCodec};
use crate::chain::ChainError;
use crate::message::Message;
use bytes::{Buf, BytesMut};
use shotover_protocols::valkey::command::{may_block, request_args, Special};
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
    /// HELLO, RESET and QUIT requests not answered yet, by request number.
    switches: VecDeque<(u64, Switch)>,
    /// Set once QUIT is answered: the connection closes after this write.
    quit: bool,
    /// The source's `max_request_bytes`.
    max_request: usize,
}

/// What a request changes once it is answered without an error.
#[derive(Debug, Clone, Copy)]
enum Switch {
    Protocol(RespVersion),
    Quit,
}

impl ValkeyCodec {
    pub fn new(max_request: usize) -> Self {
        ValkeyCodec {
            max_request,
            scanner: Scanner::default(),
            resp: RespVersion::Resp2,
            sent: 0,
            answered: 0,
            switches: VecDeque::new(),
            quit: false,
        }
    }
}

impl Default for ValkeyCodec {
    fn default() -> Self {
        Self::new(shotover_protocols::valkey::framing::MAX_MESSAGE_LEN)
    }
}

impl SourceCodec for ValkeyCodec {
    fn decode(&mut self, buf: &mut BytesMut, now: Instant, batch: &mut Vec<Message>) -> Result<(), Malformed> {
        loop {
            match self.scanner.scan_request_max(buf, self.max_request) {
                Ok(Some(Request::Command(len))) => {
                    let raw = buf.split_to(len).freeze();
                    batch.push(Message::valkey_request_from(raw, self.scanner.last_shape(), now))
                }
                // An empty line or `*0`: Valkey consumes it, runs nothing and answers nothing.
                Ok(Some(Request::Nothing(len))) => buf.advance(len),
                Ok(None) => return Ok(()),
                // As Valkey itself does: its own error reply, then the connection closes.
                // The requests before the bad bytes are in `batch` and are answered first.
                Err(e) => return Err(Malformed { reply: e.client_reply(), reason: e.to_string() }),
            }
        }
    }

    fn sent(&mut self, batch: &[Message]) {
        let first = self.sent;
        self.sent += batch.len() as u64;
        // Rare: only batches with HELLO, RESET or QUIT pay for this.
        for (i, m) in batch.iter().enumerate() {
            let Some(view) = m.valkey_request() else { continue };
            let switch = match view.special {
                Special::Hello | Special::Reset => protocol_switch(m).map(Switch::Protocol),
                Special::Quit => Some(Switch::Quit),
                _ => None,
            };
            if let Some(switch) = switch {
                self.switches.push_back((first + i as u64, switch));
            }
        }
    }

    fn encode(&mut self, mut responses: Vec<Message>, out: &mut BytesMut, connection: &str) {
        for response in &mut responses {
            if !response.is_pushed() && self.outstanding() > 0 {
                let number = self.answered;
                self.answered += 1;
                if self.switches.front().is_some_and(|(n, _)| *n == number) {
                    if let Some((_, switch)) = self.switches.pop_front() {
                        let ok = response.raw().is_some_and(|r| !r.is_empty() && !is_error_reply(r));
                        match switch {
                            Switch::Protocol(version) if ok => self.resp = version,
                            Switch::Quit if ok => self.quit = true,
                            _ => {}
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

    fn chain_failed(&mut self, error: &ChainError, out: &mut BytesMut) {
        let line = format!("-ERR shotover: {}\r\n", error.to_string().replace(['\r', '\n'], " "));
        for _ in 0..self.outstanding() {
            out.extend_from_slice(line.as_bytes());
        }
        self.answered = self.sent;
        self.switches.clear();
    }

    fn outstanding(&self) -> u64 {
        self.sent - self.answered
    }

    fn must_close(&self) -> bool {
        self.quit
    }

    fn may_block(&self, batch: &[Message]) -> bool {
        batch.iter().any(|m| m.valkey_request().is_some_and(|v| may_block(&v)))
    }
}

/// The protocol a HELLO or RESET request switches to if it succeeds.
fn protocol_switch(request: &Message) -> Option<RespVersion> {
    let view = request.valkey_request()?;
    if view.special == Special::Reset {
        return Some(RespVersion::Resp2);
    }
    if view.special != Special::Hello || view.argc == 0 {
        return None;
    }
    match request_args(request.raw()?).first().copied() {
        Some([b'3']) => Some(RespVersion::Resp3),
        Some([b'2']) => Some(RespVersion::Resp2),
        _ => None,
    }
}
