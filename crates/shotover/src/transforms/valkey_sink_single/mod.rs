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
//! The whole batch is written in one write and its replies are read back in order. Which
//! upstream message answers which request follows what the server sends
//! ([`crate::sinks::valkey_follow`]): a `SUBSCRIBE` to three channels waits for three
//! confirmations, an `UNSUBSCRIBE` the server refuses with one `-NOSUB` waits for no more.
//! Messages nobody asked for (pub/sub messages, MONITOR output, RESP3 pushes such as
//! client-tracking invalidations) are returned where they came among the responses, marked
//! pushed, or through [`Transform::poll_pushed`] while the client is idle.
//!
//! `CLIENT REPLY OFF|SKIP|ON` is played by the proxy: the server keeps replying, and the
//! proxy answers the requests whose replies the client turned off with nothing. After
//! `QUIT`'s reply, the requests behind it are neither sent nor answered, and the client
//! connection closes (the server closed its side).
//!
//! With `multiplex: true` (the default), a client starts out on the core's one shared
//! connection to the server ([`Mux`]): its batches go out back to back with every other such
//! client's, in one write, and Valkey reads and answers them as one pipeline, which costs it
//! and the proxy far fewer system calls per request than a connection per client. The first
//! command that binds state to its connection ([`keeps_state`]: AUTH, HELLO, SELECT, MULTI,
//! WATCH, CLIENT, the subscribe family, blocking commands, MONITOR, QUIT, ...) moves the
//! client to a connection of its own for the rest of its life, before that command is sent;
//! everything above then applies.
//!
//! When the upstream is down, each request gets `-ERR` and `failed_requests` counts it; the
//! next batch reconnects and replays HELLO, AUTH, SELECT and CLIENT SETNAME so the client's
//! session carries over. Subscriptions cannot be carried over, so a subscribed client's
//! connection is closed instead.

use crate::chain::{
    BuildContext, ChainError, ChainResult, ChainState, Resolved, Transform, TransformBuilder, TransformConfig,
};
use crate::message::{Message, Protocol};
use crate::observability::metrics::SourceToSink;
use crate::sinks::valkey::ValkeyConnection;
use crate::sinks::valkey_follow::{Class, Expect, Follower};
use crate::sinks::valkey_mux::{keeps_state, Mux, MuxError};
use crate::sinks::Upstream;
use crate::stream::ReadMode;
use crate::tls::TlsConnectorConfig;
use anyhow::Result;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use serde::Deserialize;
use shotover_protocols::valkey::command::{request_args, RequestView, Special};
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use std::collections::VecDeque;
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
    /// Share one upstream connection per worker core between the clients that keep no
    /// state on their connection. Default true.
    #[serde(default = "multiplex_by_default")]
    pub multiplex: bool,
    /// The fields above, resolved by `validate`.
    #[serde(skip)]
    upstream: Resolved<Upstream>,
}

fn multiplex_by_default() -> bool {
    true
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
        let source_to_sink = ctx.metrics.source_to_sink(Self::NAME);
        // Built once per worker core: the core's clients share it.
        let shared = self.multiplex.then(|| {
            let tls = upstream.tls.clone();
            Rc::new(Mux::new(upstream.address, "upstream", upstream.connect_timeout, tls))
        });
        Ok(Box::new(move || {
            let mut sink = ValkeySinkSingle::new(upstream.clone(), failed_requests.clone(), source_to_sink.clone());
            sink.shared = shared.clone();
            sink
        }))
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
    /// The core's shared connection, while this client keeps no state on its connection;
    /// `None` once it has a connection of its own (or with `multiplex: false`).
    shared: Option<Rc<Mux>>,
    connection: Option<ValkeyConnection>,
    write_buf: BytesMut,
    /// Unsolicited messages waiting for delivery, in arrival order.
    pushed: VecDeque<Message>,
    /// The last successful session commands, as sent by the client.
    session: Vec<(SessionCommand, Bytes)>,
    /// Subscriptions, MONITOR and RESP3, as the server's replies show them.
    follower: Follower,
    /// `CLIENT REPLY`, as the client last set it (the server itself always replies).
    reply_mode: ReplyMode,
    /// Set when the upstream connection was lost with state that cannot be restored.
    lost: Option<String>,
    failed_requests: IntCounter,
    source_to_sink: SourceToSink,
}

/// Whether the client wants replies (`CLIENT REPLY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    /// No reply for the next command, then on again.
    SkipNext,
}

/// What the sink does with one request of a batch.
enum Step {
    /// Sent upstream; `silent` when the client turned its reply off.
    Send { expect: Expect, silent: bool },
    /// Answered by the proxy without sending.
    Answer(Message),
}

/// `CLIENT REPLY ON|OFF|SKIP` in its exact form.
fn client_reply(request: &Message, view: &RequestView<'_>) -> Option<ReplyMode> {
    if !view.is("CLIENT") || view.argc != 2 {
        return None;
    }
    let args = request_args(request.raw()?);
    if !args.first()?.eq_ignore_ascii_case(b"REPLY") {
        return None;
    }
    match args.get(1)?.to_ascii_uppercase().as_slice() {
        b"ON" => Some(ReplyMode::On),
        b"OFF" => Some(ReplyMode::Off),
        b"SKIP" => Some(ReplyMode::SkipNext),
        _ => None,
    }
}

impl ValkeySinkSingle {
    fn new(upstream: Rc<Upstream>, failed_requests: IntCounter, source_to_sink: SourceToSink) -> Self {
        ValkeySinkSingle {
            upstream,
            shared: None,
            connection: None,
            write_buf: BytesMut::new(),
            pushed: VecDeque::new(),
            session: Vec::new(),
            follower: Follower::default(),
            reply_mode: ReplyMode::On,
            lost: None,
            failed_requests,
            source_to_sink,
        }
    }

    fn remember_session(&mut self, view: &RequestView<'_>, raw: &Bytes) {
        let kind = match view.special {
            Special::Hello => SessionCommand::Hello,
            Special::Auth => SessionCommand::Auth,
            Special::Select => SessionCommand::Select,
            Special::Client if request_args(raw).first().is_some_and(|a| a.eq_ignore_ascii_case(b"SETNAME")) => {
                SessionCommand::SetName
            }
            Special::Reset => {
                self.session.clear();
                self.reply_mode = ReplyMode::On;
                return;
            }
            _ => return,
        };
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
        // The first loss is the one to report: a second call for the same loss (the batch
        // that found the connection gone) would wrap the reason in itself.
        if (self.follower.subscribed() || self.follower.monitor) && self.lost.is_none() {
            self.lost = Some(format!("upstream connection lost while subscribed or monitoring: {reason}"));
        }
    }

    fn error_to(&self, request: &Message, reason: &str) -> Message {
        self.failed_requests.inc();
        Message::valkey_error_to(request, format!("ERR shotover: {reason}"))
    }

    /// What to do with each request of a batch, in order: `CLIENT REPLY` is played here,
    /// and nothing after `QUIT` is sent.
    fn steps(&mut self, requests: &[Message]) -> Vec<Step> {
        let mut quit = false;
        let mut steps = Vec::with_capacity(requests.len());
        for request in requests {
            let view = request.valkey_request();
            if quit {
                steps.push(Step::Answer(Message::silent_response_to(request)));
                continue;
            }
            // In RESP2 while subscribed the server refuses CLIENT REPLY: let it say so.
            let resp2_subscribed = self.follower.subscribed() && !self.follower.resp3;
            if let Some(mode) = view.as_ref().and_then(|v| client_reply(request, v)).filter(|_| !resp2_subscribed) {
                self.reply_mode = mode;
                let answer = match mode {
                    ReplyMode::On => {
                        let mut ok =
                            Message::from_bytes(Bytes::from_static(b"+OK\r\n"), Protocol::Valkey, Instant::now());
                        ok.set_request_id(request.id());
                        ok
                    }
                    _ => Message::silent_response_to(request),
                };
                steps.push(Step::Answer(answer));
                continue;
            }
            let silent = match self.reply_mode {
                ReplyMode::On => false,
                ReplyMode::Off => true,
                ReplyMode::SkipNext => {
                    self.reply_mode = ReplyMode::On;
                    true
                }
            };
            quit = view.as_ref().is_some_and(|v| v.special == Special::Quit);
            steps.push(Step::Send { expect: view.as_ref().map_or(Expect::One, Expect::of), silent });
        }
        steps
    }

    /// Sends the batch over the core's shared connection: every request is a plain command
    /// array that gets exactly one reply (checked by the caller with [`keeps_state`]).
    async fn send_shared(&mut self, mux: &Mux, requests: Vec<Message>) -> Vec<Message> {
        let ticket = mux.submit_with(requests.len(), |outbox| {
            for request in &requests {
                if let Err(e) = request.encode_into(outbox) {
                    tracing::warn!("cannot encode request: {e}");
                }
            }
        });
        self.source_to_sink.written(requests.first().and_then(Message::received_at));
        match ticket.wait().await {
            Ok(replies) if replies.len() == requests.len() => {
                let now = Instant::now();
                requests
                    .iter()
                    .zip(replies)
                    .map(|(request, raw)| {
                        let mut message = Message::from_bytes(raw, Protocol::Valkey, now);
                        message.set_request_id(request.id());
                        message
                    })
                    .collect()
            }
            Ok(replies) => {
                let reason = format!("{} replies for {} requests", replies.len(), requests.len());
                requests.iter().map(|r| self.error_to(r, &reason)).collect()
            }
            Err(MuxError::NotSent(reason) | MuxError::Lost(reason)) => {
                requests.iter().map(|r| self.error_to(r, &reason)).collect()
            }
        }
    }

    /// Sends the batch and reads back every request's replies, with anything pushed among
    /// them where it came.
    async fn send(&mut self, requests: Vec<Message>) -> Vec<Message> {
        // Empty: each send takes it for its write and empties it after.
        let steps = self.steps(&requests);
        for (request, step) in requests.iter().zip(&steps) {
            if matches!(step, Step::Send { .. }) {
                if let Err(e) = request.encode_into(&mut self.write_buf) {
                    tracing::warn!("cannot encode request: {e}");
                }
            }
        }
        let mut responses = Vec::with_capacity(requests.len());
        if !self.write_buf.is_empty() {
            let write_buf = std::mem::take(&mut self.write_buf);
            // A failed write may have sent part of the batch: retry-unsafe.
            let written = match self.connection().await {
                Ok(conn) => conn
                    .write_all(&write_buf)
                    .await
                    .map_err(|e| ChainError::upstream("upstream write failed").caused_by(e)),
                Err(e) => Err(e),
            };
            self.write_buf = write_buf;
            shotover_executor::io::clear_and_release(&mut self.write_buf);
            self.source_to_sink.written(requests.first().and_then(Message::received_at));
            if let Err(e) = written {
                let reason = e.to_string();
                self.connection_lost(&reason);
                for (request, step) in requests.iter().zip(steps) {
                    responses.push(match step {
                        Step::Answer(answer) => answer,
                        Step::Send { .. } => self.error_to(request, &reason),
                    });
                }
                return responses;
            }
        }
        let mut failure: Option<String> = None;
        for (request, step) in requests.iter().zip(steps) {
            let (mut expect, silent) = match step {
                Step::Answer(answer) => {
                    responses.push(answer);
                    continue;
                }
                Step::Send { expect, silent } => (expect, silent),
            };
            if let Some(reason) = &failure {
                responses.push(self.error_to(request, reason));
                continue;
            }
            match self.read_replies(request, &mut expect, silent, &mut responses).await {
                Ok(()) => {}
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

    /// Reads until `request` is answered, as the server decides: its first reply is its
    /// response (nothing, when `silent`), further confirmations and anything pushed go to
    /// `out` as pushed messages, in the order they came. Its errors come after the request
    /// was written: retry-unsafe.
    async fn read_replies(
        &mut self,
        request: &Message,
        expect: &mut Expect,
        silent: bool,
        out: &mut Vec<Message>,
    ) -> ChainResult<()> {
        let view = request.valkey_request();
        let mut answered = false;
        loop {
            let conn = self.connection.as_mut().ok_or_else(|| ChainError::upstream("upstream connection closed"))?;
            let raw = conn.next().await.map_err(|e| ChainError::upstream("upstream read failed").caused_by(e))?;
            let now = Instant::now();
            let class = self.follower.classify(&raw, Some(expect));
            self.follower.observe(&raw);
            if class == Class::Pushed {
                out.push(Message::pushed(raw, Protocol::Valkey, now));
                continue;
            }
            let done = self.follower.reply_completes(&raw, expect);
            if !answered {
                answered = true;
                if let (Some(view), Some(request_raw)) = (&view, request.raw()) {
                    self.follower.answered(view, &raw);
                    if !is_error(&raw) {
                        self.remember_session(view, request_raw);
                    }
                }
                // A RESP3 confirmation is a push, which the server sends even with replies off.
                if silent && raw.first() != Some(&b'>') {
                    out.push(Message::silent_response_to(request));
                } else {
                    let mut message = Message::from_bytes(raw, Protocol::Valkey, now);
                    message.set_request_id(request.id());
                    out.push(message);
                }
            } else if !(silent && raw.first() != Some(&b'>')) {
                out.push(Message::pushed(raw, Protocol::Valkey, now));
            }
            if done {
                if view.as_ref().is_some_and(|v| v.special == Special::Quit) {
                    // The server closes its side after QUIT's reply.
                    self.connection = None;
                }
                return Ok(());
            }
        }
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
        // Pushed messages that came while the client was idle go first.
        let mut responses: Vec<Message> = self.pushed.drain(..).collect();
        if requests.is_empty() {
            return Ok(responses);
        }
        if self.shared.is_some() && requests.iter().any(keeps_state) {
            // From now on this client has a connection of its own.
            self.shared = None;
        }
        match self.shared.clone() {
            Some(mux) => responses.extend(self.send_shared(&mux, requests).await),
            None => responses.extend(self.send(requests).await),
        }
        // If the upstream was lost while subscribed, this batch is still answered; `lost`
        // makes poll_pushed ready at once and the next call closes the client connection.
        Ok(responses)
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.pushed.is_empty() || self.lost.is_some() {
            return Poll::Ready(());
        }
        // Only a subscribed, monitoring or RESP3 connection is sent anything unasked; waiting
        // on any other would cost a wakeup per reply.
        if !(self.follower.subscribed() || self.follower.monitor || self.follower.resp3) {
            return Poll::Pending;
        }
        let Some(conn) = self.connection.as_mut() else {
            return Poll::Pending;
        };
        let mut error = None;
        loop {
            match conn.poll_next(cx, ReadMode::Wait) {
                Poll::Ready(Ok(raw)) => {
                    self.follower.observe(&raw);
                    self.pushed.push_back(Message::pushed(raw, Protocol::Valkey, Instant::now()));
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
mod tests;
