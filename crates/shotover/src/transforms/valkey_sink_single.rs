//! ValkeySinkSingle: sends requests to one Valkey server over a connection of each client
//! connection's own, so connection state (AUTH, SELECT, MULTI/EXEC, WATCH, subscriptions,
//! blocking commands, CLIENT commands) behaves as on a direct connection.
//!
//! ```yaml
//! - ValkeySinkSingle:
//!     remote_address: "127.0.0.1:6379"
//!     connect_timeout_ms: 3000
//! ```
//!
//! The whole batch is written in one write and its replies are read back in order. Replies
//! nobody asked for (pub/sub messages, MONITOR output, RESP3 pushes) are returned after the
//! batch's responses, or through [`Transform::poll_pushed`] while the client is idle.
//!
//! When the upstream is down, each request gets `-ERR` and `failed_requests` counts it; the
//! next batch reconnects and replays HELLO, AUTH, SELECT and CLIENT SETNAME so the client's
//! session carries over. Subscriptions cannot be carried over, so a subscribed client's
//! connection is closed instead.

use crate::chain::{
    BuildContext, ChainError, ChainResult, ChainState, Resolved, Transform, TransformBuilder, TransformConfig,
};
use crate::message::{Message, Protocol};
use crate::sinks::valkey::ValkeyConnection;
use crate::sinks::Upstream;
use crate::stream::ReadMode;
use crate::tls::TlsConnectorConfig;
use anyhow::Result;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use prometheus::{Histogram, IntCounter};
use serde::Deserialize;
use shotover_protocols::valkey::command::{array_strings, request_args, RequestView};
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValkeySinkSingleConfig {
    /// `host:port` of the Valkey server. Resolved once at startup.
    pub remote_address: String,
    /// Milliseconds to wait for a connection. Default 3000.
    #[serde(default = "crate::sinks::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// TLS to the server. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
    /// The fields above, resolved by `validate`.
    #[serde(skip)]
    upstream: Resolved<Upstream>,
}

impl TransformConfig for ValkeySinkSingleConfig {
    const NAME: &'static str = "ValkeySinkSingle";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey];
    fn validate(&mut self) -> Result<()> {
        let upstream = Upstream::resolve(&self.remote_address, self.tls.as_ref(), self.connect_timeout_ms, None)?;
        self.upstream.set(upstream);
        Ok(())
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let upstream = Rc::new(self.upstream.get()?.clone());
        let failed_requests = ctx.metrics.failed_requests.with_label_values(&[Self::NAME, &ctx.chain_name]);
        let source_to_sink = ctx.metrics.source_to_sink_latency.with_label_values(&[Self::NAME]);
        Ok(Box::new(move || ValkeySinkSingle::new(upstream.clone(), failed_requests.clone(), source_to_sink.clone())))
    }
}

/// Channels, patterns and shard channels the upstream connection is subscribed to.
#[derive(Default)]
struct Subscriptions {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard: HashSet<Bytes>,
}

impl Subscriptions {
    fn any(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty())
    }

    /// Updates the sets from a (un)subscribe confirmation; ignores other messages.
    fn track(&mut self, raw: &[u8]) {
        let items = array_strings(raw);
        let (Some(kind), name) = (items.first(), items.get(1)) else {
            return;
        };
        let name = || Bytes::copy_from_slice(name.copied().unwrap_or_default());
        match kind.to_ascii_lowercase().as_slice() {
            b"subscribe" => drop(self.channels.insert(name())),
            b"psubscribe" => drop(self.patterns.insert(name())),
            b"ssubscribe" => drop(self.shard.insert(name())),
            b"unsubscribe" => drop(self.channels.remove(&name())),
            b"punsubscribe" => drop(self.patterns.remove(&name())),
            b"sunsubscribe" => drop(self.shard.remove(&name())),
            _ => {}
        }
    }
}

/// Session commands replayed on a new upstream connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SessionCommand {
    Hello,
    Auth,
    Select,
    SetName,
}

impl SessionCommand {
    /// Replay order: authentication first (HELLO and AUTH in the order the client sent
    /// them, as HELLO may carry AUTH or need it), then what needs an authenticated session.
    fn phase(self) -> u8 {
        match self {
            SessionCommand::Hello | SessionCommand::Auth => 0,
            SessionCommand::Select => 1,
            SessionCommand::SetName => 2,
        }
    }
}

pub struct ValkeySinkSingle {
    upstream: Rc<Upstream>,
    connection: Option<ValkeyConnection>,
    write_buf: BytesMut,
    /// Unsolicited messages waiting for delivery, in arrival order.
    pushed: VecDeque<Message>,
    /// The last successful session commands, as sent by the client.
    session: Vec<(SessionCommand, Bytes)>,
    subscriptions: Subscriptions,
    /// After MONITOR every upstream message is unsolicited.
    monitor: bool,
    /// After HELLO 3 the server may push messages at any time (client tracking).
    resp3: bool,
    /// Set when the upstream connection was lost with state that cannot be restored.
    lost: Option<String>,
    failed_requests: IntCounter,
    source_to_sink: Histogram,
}

/// What the sink does with one request.
enum Plan {
    Send,
    /// Answered by the proxy without sending.
    Answer(&'static str),
}

fn plan(request: &Message) -> Plan {
    let Some(view) = request.valkey_request() else {
        return Plan::Send;
    };
    if view.is("CLIENT") {
        let args = request.raw().map(|r| request_args(r)).unwrap_or_default();
        let reply_mode = args.get(1).map(|m| m.to_ascii_uppercase());
        if args.first().is_some_and(|a| a.eq_ignore_ascii_case(b"REPLY")) && reply_mode.as_deref() != Some(b"ON") {
            // Without replies the proxy could not pair responses with requests.
            return Plan::Answer("ERR CLIENT REPLY OFF and SKIP are not supported through shotover");
        }
    }
    Plan::Send
}

impl ValkeySinkSingle {
    fn new(upstream: Rc<Upstream>, failed_requests: IntCounter, source_to_sink: Histogram) -> Self {
        ValkeySinkSingle {
            upstream,
            connection: None,
            write_buf: BytesMut::new(),
            pushed: VecDeque::new(),
            session: Vec::new(),
            subscriptions: Subscriptions::default(),
            monitor: false,
            resp3: false,
            lost: None,
            failed_requests,
            source_to_sink,
        }
    }

    /// Replies the request at hand will produce; the first is its response, the rest are
    /// delivered as unsolicited messages.
    fn expected_replies(&self, view: &RequestView<'_>) -> usize {
        let by_kind = |set: &HashSet<Bytes>| {
            if view.argc > 0 {
                view.argc
            } else {
                set.len().max(1)
            }
        };
        if view.is("SUBSCRIBE") || view.is("PSUBSCRIBE") || view.is("SSUBSCRIBE") {
            view.argc.max(1)
        } else if view.is("UNSUBSCRIBE") {
            by_kind(&self.subscriptions.channels)
        } else if view.is("PUNSUBSCRIBE") {
            by_kind(&self.subscriptions.patterns)
        } else if view.is("SUNSUBSCRIBE") {
            by_kind(&self.subscriptions.shard)
        } else {
            1
        }
    }

    /// True for upstream messages that answer no request.
    fn is_unsolicited(&self, raw: &[u8], request: Option<&RequestView<'_>>) -> bool {
        if self.monitor {
            // MONITOR output is all simple strings; RESET (or QUIT) ends it with its reply.
            let ends_monitor = request.is_some_and(|v| v.is("RESET") || v.is("QUIT"));
            return !(ends_monitor && (raw == b"+RESET\r\n" || raw == b"+OK\r\n"));
        }
        let kind_is = |kinds: &[&[u8]]| {
            array_strings(raw).first().is_some_and(|k| kinds.iter().any(|want| k.eq_ignore_ascii_case(want)))
        };
        match raw.first() {
            Some(b'>') => !kind_is(&[
                b"subscribe",
                b"psubscribe",
                b"ssubscribe",
                b"unsubscribe",
                b"punsubscribe",
                b"sunsubscribe",
            ]),
            Some(b'*') if self.subscriptions.any() => kind_is(&[b"message", b"pmessage", b"smessage"]),
            _ => false,
        }
    }

    fn remember_session(&mut self, view: &RequestView<'_>, raw: &Bytes) {
        let kind = if view.is("HELLO") {
            SessionCommand::Hello
        } else if view.is("AUTH") {
            SessionCommand::Auth
        } else if view.is("SELECT") {
            SessionCommand::Select
        } else if view.is("CLIENT") && request_args(raw).first().is_some_and(|a| a.eq_ignore_ascii_case(b"SETNAME")) {
            SessionCommand::SetName
        } else if view.is("RESET") {
            self.session.clear();
            self.subscriptions = Subscriptions::default();
            self.monitor = false;
            self.resp3 = false;
            return;
        } else {
            return;
        };
        if kind == SessionCommand::Hello {
            self.resp3 = request_args(raw).first().is_some_and(|v| *v == b"3");
        }
        self.session.retain(|(k, _)| *k != kind);
        self.session.push((kind, raw.clone()));
        // A stable sort keeps the client's order within a phase.
        self.session.sort_by_key(|(k, _)| k.phase());
    }

    /// Connects if needed, replaying the session on a new connection. Its errors come before
    /// any of the client's requests is written: all are retry-safe.
    async fn connection(&mut self) -> ChainResult<&mut ValkeyConnection> {
        if self.connection.as_ref().is_some_and(|c| c.closed_while_idle()) {
            tracing::debug!("upstream {} closed an idle connection; reconnecting", self.upstream.address);
            self.connection_lost("closed while idle");
            if let Some(reason) = &self.lost {
                return Err(ChainError::upstream(reason.clone()).retry_safe());
            }
        }
        if self.connection.is_none() {
            let up = &self.upstream;
            let mut conn =
                ValkeyConnection::connect(up.address, up.connect_timeout, up.tls.as_ref()).await.map_err(|e| {
                    ChainError::upstream(format!("cannot connect to upstream {}", up.address)).caused_by(e).retry_safe()
                })?;
            let restore = |e: std::io::Error| {
                ChainError::upstream("cannot restore the session on a new upstream connection")
                    .caused_by(e)
                    .retry_safe()
            };
            for (_, raw) in &self.session {
                conn.write_all(raw).await.map_err(restore)?;
                let reply = conn.next().await.map_err(restore)?;
                if is_error(&reply) {
                    return Err(ChainError::upstream(format!(
                        "upstream refused to restore the session: {}",
                        String::from_utf8_lossy(&reply).trim_end()
                    ))
                    .retry_safe());
                }
            }
            self.connection = Some(conn);
        }
        self.connection.as_mut().ok_or_else(|| ChainError::proxy("no upstream connection").retry_safe())
    }

    /// Drops a broken connection; remembers if that lost state the client relies on.
    fn connection_lost(&mut self, reason: &str) {
        self.connection = None;
        if self.subscriptions.any() || self.monitor {
            self.lost = Some(format!("upstream connection lost while subscribed or monitoring: {reason}"));
        }
    }

    fn error_to(&self, request: &Message, reason: &str) -> Message {
        self.failed_requests.inc();
        Message::valkey_error_to(request, format!("ERR shotover: {reason}"))
    }

    /// Sends the batch and reads one response per request.
    async fn send(&mut self, requests: Vec<Message>) -> Vec<Message> {
        let plans: Vec<Plan> = requests.iter().map(plan).collect();
        self.write_buf.clear();
        for (request, plan) in requests.iter().zip(&plans) {
            if matches!(plan, Plan::Send) {
                if let Err(e) = request.encode_into(&mut self.write_buf) {
                    tracing::warn!("cannot encode request: {e}");
                }
            }
        }
        let mut responses = Vec::with_capacity(requests.len());
        let write_buf = std::mem::take(&mut self.write_buf);
        // A failed write may have sent part of the batch: retry-unsafe.
        let written = match self.connection().await {
            Ok(conn) => {
                conn.write_all(&write_buf).await.map_err(|e| ChainError::upstream("upstream write failed").caused_by(e))
            }
            Err(e) => Err(e),
        };
        self.write_buf = write_buf;
        if let Some(at) = requests.first().and_then(|r| r.received_at()) {
            self.source_to_sink.observe(at.elapsed().as_secs_f64());
        }
        if let Err(e) = written {
            let reason = e.to_string();
            self.connection_lost(&reason);
            return requests.iter().map(|r| self.error_to(r, &reason)).collect();
        }
        let mut failure: Option<String> = None;
        for (request, plan) in requests.iter().zip(plans) {
            if let Plan::Answer(text) = plan {
                responses.push(Message::valkey_error_to(request, text));
                continue;
            }
            if let Some(reason) = &failure {
                responses.push(self.error_to(request, reason));
                continue;
            }
            match self.read_replies(request).await {
                Ok(response) => responses.push(response),
                Err(e) => {
                    let reason = e.to_string();
                    responses.push(self.error_to(request, &reason));
                    self.connection_lost(&reason);
                    failure = Some(reason);
                }
            }
        }
        responses
    }

    /// Reads the replies of one request: returns the first, queues the rest as unsolicited.
    /// Its errors come after the request was written: retry-unsafe.
    async fn read_replies(&mut self, request: &Message) -> ChainResult<Message> {
        let view = request.valkey_request();
        let expected = view.as_ref().map(|v| self.expected_replies(v)).unwrap_or(1);
        let mut response = None;
        let mut received = 0;
        while received < expected {
            let conn = self.connection.as_mut().ok_or_else(|| ChainError::upstream("upstream connection closed"))?;
            let raw = conn.next().await.map_err(|e| ChainError::upstream("upstream read failed").caused_by(e))?;
            let now = Instant::now();
            if self.is_unsolicited(&raw, view.as_ref()) {
                self.pushed.push_back(Message::from_bytes(raw, Protocol::Valkey, now));
                continue;
            }
            received += 1;
            self.subscriptions.track(&raw);
            let mut message = Message::from_bytes(raw, Protocol::Valkey, now);
            message.set_request_id(request.id());
            if response.is_none() {
                response = Some(message);
            } else {
                self.pushed.push_back(message);
            }
        }
        let response = response.ok_or_else(|| ChainError::proxy("no reply"))?;
        if let (Some(view), Some(raw)) = (view, request.raw()) {
            if !response.raw().is_some_and(|r| is_error(r)) {
                if view.is("MONITOR") {
                    self.monitor = true;
                }
                self.remember_session(&view, raw);
            }
        }
        Ok(response)
    }
}

#[async_trait(?Send)]
impl Transform for ValkeySinkSingle {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        if let Some(reason) = self.lost.take() {
            // The batch in hand is not written; the subscriptions cannot be restored.
            return Err(ChainError::upstream(reason).retry_safe().close_connection());
        }
        let requests = std::mem::take(&mut state.requests);
        let mut responses = if requests.is_empty() { Vec::new() } else { self.send(requests).await };
        // If the upstream was lost while subscribed, this batch is still answered; `lost`
        // makes poll_pushed ready at once and the next call closes the client connection.
        responses.extend(self.pushed.drain(..));
        Ok(responses)
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.pushed.is_empty() || self.lost.is_some() {
            return Poll::Ready(());
        }
        // Only a subscribed, monitoring or RESP3 connection is sent anything unasked; waiting
        // on any other would cost a wakeup per reply.
        if !(self.subscriptions.any() || self.monitor || self.resp3) {
            return Poll::Pending;
        }
        let Some(conn) = self.connection.as_mut() else {
            return Poll::Pending;
        };
        let mut error = None;
        loop {
            match conn.poll_next(cx, ReadMode::Wait) {
                Poll::Ready(Ok(raw)) => {
                    self.subscriptions.track(&raw);
                    self.pushed.push_back(Message::from_bytes(raw, Protocol::Valkey, Instant::now()));
                }
                Poll::Ready(Err(e)) => {
                    error = Some(e);
                    break;
                }
                Poll::Pending => break,
            }
        }
        if let Some(e) = error {
            // An idle connection that closes is simply reopened on the next request.
            self.connection_lost(&e.to_string());
        }
        if self.pushed.is_empty() && self.lost.is_none() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Retry, Side};
    use crate::sinks::testing::{closed_port, on_a_core};
    use prometheus::HistogramOpts;
    use std::time::Duration;

    fn sink(address: std::net::SocketAddr) -> ValkeySinkSingle {
        let upstream = Upstream { address, tls: None, connect_timeout: Duration::from_secs(1), read_timeout: None };
        let failed = IntCounter::new("failed", "failed").unwrap();
        let latency = Histogram::with_opts(HistogramOpts::new("latency", "latency")).unwrap();
        ValkeySinkSingle::new(Rc::new(upstream), failed, latency)
    }

    fn get() -> Message {
        Message::from_bytes(Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), Protocol::Valkey, Instant::now())
    }

    #[test]
    fn an_unreachable_upstream_is_an_upstream_failure_safe_to_retry() {
        let address = closed_port();
        let (side, retry, close, text, reply) = on_a_core(move || async move {
            let mut sink = sink(address);
            let e = sink.connection().await.err().expect("nothing listens there");
            let mut state = ChainState::last(vec![get()]);
            let responses = sink.transform(&mut state).await.expect("each request gets its own error");
            let reply =
                responses.first().and_then(|r| r.to_bytes().ok()).map(|r| String::from_utf8_lossy(&r).into_owned());
            (e.side(), e.retry(), e.closes_connection(), e.to_string(), reply)
        });
        assert_eq!((side, retry, close), (Side::Upstream, Retry::Safe, false));
        let expected = format!("cannot connect to upstream {address}: ");
        assert!(text.starts_with(&expected), "{text}");
        // The client's reply carries the same text as before the typed error.
        assert_eq!(reply, Some(format!("-ERR shotover: {text}\r\n")));
    }

    #[test]
    fn subscriptions_lost_with_the_upstream_close_the_client_connection() {
        let e = futures_lite::future::block_on(async {
            let mut sink = sink(closed_port());
            sink.subscriptions.channels.insert(Bytes::from_static(b"news"));
            sink.connection_lost("upstream read failed: connection reset");
            sink.transform(&mut ChainState::last(vec![get()])).await.expect_err("the connection closes")
        });
        assert_eq!((e.side(), e.retry(), e.closes_connection()), (Side::Upstream, Retry::Safe, true));
        assert_eq!(
            e.to_string(),
            "upstream connection lost while subscribed or monitoring: upstream read failed: connection reset"
        );
    }
}
