//! CassandraSinkSingle: sends every request to one Cassandra node.
//!
//! ```yaml
//! - CassandraSinkSingle:
//!     remote_address: "127.0.0.1:9042"
//!     connect_timeout_ms: 3000
//!     # read_timeout: 60
//!     # tls: {...}
//! ```
//!
//! - Each client connection gets its own connection to the node, opened on its first
//!   request, so stream ids pass through unchanged and the node sees the client's own
//!   handshake (version, compression, authentication).
//! - Responses come back in the node's order, as soon as they arrive: a request does not
//!   wait for the ones before it. EVENTs reach a client that registered for them.
//! - Errors, as the guide gives them: a node that cannot be reached gets Overloaded, so the
//!   client retries later; a request whose connection fails before its answer gets a Server
//!   error, since only the client knows whether to retry it. Both count in
//!   `failed_requests{transform="CassandraSinkSingle", chain=…}`. The next request opens a
//!   new connection and replays the session (STARTUP, authentication, REGISTER, the keyspace
//!   of the last USE) before it is sent.
//! - With `read_timeout`, a request unanswered for that many seconds closes the client
//!   connection.

use crate::chain::{
    BuildContext, ChainError, ChainResult, ChainState, Resolved, Transform, TransformBuilder, TransformConfig,
};
use crate::message::{Message, MessageId, Protocol, ProxyError};
use crate::observability::metrics::SourceToSink;
use crate::rt::Timer;
use crate::sinks::cassandra::CassandraConnection;
use crate::sinks::Upstream;
use crate::tls::TlsConnectorConfig;
use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use prometheus::IntCounter;
use serde::Deserialize;
use shotover_protocols::cassandra::frame::{CassandraBody, CassandraFrame};
use shotover_protocols::cassandra::header::{self, FrameHeader, HEADER_LEN};
use shotover_protocols::cassandra::request::{Query, QueryParams};
use shotover_protocols::cassandra::result::ResultBody;
use shotover_protocols::cassandra::{Compression, Consistency, Opcode};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraSinkSingleConfig {
    /// `host:port` of the node. Resolved once at startup.
    pub remote_address: String,
    /// Milliseconds to wait for a connection. Default 3000.
    #[serde(default = "crate::sinks::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Seconds a request may wait for its response before the client connection is
    /// closed. Default: no limit.
    #[serde(default)]
    pub read_timeout: Option<u64>,
    /// TLS to the node. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
    /// The fields above, resolved by `validate`.
    #[serde(skip)]
    upstream: Resolved<Upstream>,
}

impl TransformConfig for CassandraSinkSingleConfig {
    const NAME: &'static str = "CassandraSinkSingle";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra];
    fn validate(&mut self) -> Result<()> {
        let upstream =
            Upstream::resolve(&self.remote_address, self.tls.as_ref(), self.connect_timeout_ms, self.read_timeout)?;
        self.upstream.set(upstream);
        Ok(())
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let upstream = Rc::new(self.upstream.get()?.clone());
        let failed_requests = ctx.metrics.failed_requests.with_label_values(&[Self::NAME, &ctx.chain_name]);
        let source_to_sink = ctx.metrics.source_to_sink(Self::NAME);
        Ok(Box::new(move || {
            CassandraSinkSingle::new(upstream.clone(), failed_requests.clone(), source_to_sink.clone())
        }))
    }
}

/// What a new connection must replay to stand where the lost one stood.
#[derive(Default)]
struct Session {
    startup: Option<Bytes>,
    /// How the node compresses frame bodies, as that STARTUP negotiated (read once, not
    /// per response).
    compression: Compression,
    /// AUTH_RESPONSEs sent until authentication succeeded.
    auth: Vec<Bytes>,
    authenticated: bool,
    register: Option<Bytes>,
    keyspace: Option<String>,
}

/// A request on its way: who asked, and since when.
struct InFlight {
    request_id: MessageId,
    header: FrameHeader,
    sent_at: Instant,
}

pub struct CassandraSinkSingle {
    upstream: Rc<Upstream>,
    connection: Option<CassandraConnection>,
    /// By stream id.
    in_flight: HashMap<i16, InFlight>,
    session: Session,
    /// Responses read and not yet returned up the chain.
    ready: Vec<Message>,
    frames: Vec<Bytes>,
    /// Fires at the read timeout of the oldest request in flight.
    timer: Option<Timer>,
    failed_requests: IntCounter,
    source_to_sink: SourceToSink,
}

/// The stream id the proxy uses for its own requests while replaying a session.
const REPLAY_STREAM: i16 = i16::MAX;

impl CassandraSinkSingle {
    fn new(upstream: Rc<Upstream>, failed_requests: IntCounter, source_to_sink: SourceToSink) -> Self {
        CassandraSinkSingle {
            upstream,
            connection: None,
            in_flight: HashMap::new(),
            session: Session::default(),
            ready: Vec::new(),
            frames: Vec::new(),
            timer: None,
            failed_requests,
            source_to_sink,
        }
    }

    /// Remembers what a request changes in the session, to replay it later.
    fn remember_request(&mut self, header: &FrameHeader, raw: &Bytes) {
        match header.opcode {
            Opcode::Startup => {
                let mut state = shotover_protocols::cassandra::CassandraCodecState::new();
                let _ = state.on_startup(raw);
                let compression = state.frame_compression();
                self.session = Session { startup: Some(raw.clone()), compression, ..Session::default() };
            }
            Opcode::AuthResponse if !self.session.authenticated => self.session.auth.push(raw.clone()),
            Opcode::Register => self.session.register = Some(raw.clone()),
            _ => {}
        }
    }

    /// Remembers what a response tells about the session (authentication, keyspace).
    fn remember_response(&mut self, frame: &Bytes) {
        match header::opcode(frame) {
            Ok(Opcode::AuthSuccess) => self.session.authenticated = true,
            Ok(Opcode::Result) => {
                // Cheap check first: the result kind is the body's first int (3: SetKeyspace).
                let plain = header::frame_flags(frame).is_ok_and(|f| f == 0);
                if plain && frame.get(HEADER_LEN..HEADER_LEN + 4) != Some(&[0, 0, 0, 3]) {
                    return;
                }
                let compression = self.session.compression;
                if let Ok(parsed) = CassandraFrame::parse(frame, compression) {
                    if let CassandraBody::Result(ResultBody::SetKeyspace(ks)) = parsed.body {
                        self.session.keyspace = Some(ks);
                    }
                }
            }
            _ => {}
        }
    }

    /// Turns frames read from the node into responses for the chain.
    fn accept_frames(&mut self) {
        let frames = std::mem::take(&mut self.frames);
        let compression = self.session.compression;
        let now = Instant::now();
        for frame in frames {
            self.remember_response(&frame);
            let stream = header::stream_id(&frame).unwrap_or(-1);
            let mut message = Message::from_cql(frame, compression, now);
            if let Some(request) = self.in_flight.remove(&stream) {
                message.set_request_id(request.request_id);
            }
            self.ready.push(message);
        }
        self.timer = None;
    }

    /// The connection is gone: every request in flight gets a Server error.
    fn fail_in_flight(&mut self, error: &ChainError) {
        self.connection = None;
        self.timer = None;
        for (_, request) in self.in_flight.drain() {
            self.failed_requests.inc();
            let text = format!("shotover: the Cassandra node connection failed before the response: {error}");
            let frame =
                CassandraFrame::error(&request.header, shotover_protocols::cassandra::ErrorCode::SERVER_ERROR, text);
            let mut m = Message::from_frame(crate::message::Frame::Cassandra(Box::new(frame)));
            m.set_request_id(request.request_id);
            self.ready.push(m);
        }
    }

    /// Opens a connection and replays the session on it. Nothing of the client's requests
    /// is written yet: its errors are retry-safe.
    async fn connect(&mut self) -> ChainResult<CassandraConnection> {
        let address = self.upstream.address;
        self.open().await.map_err(|e| {
            ChainError::upstream(format!("cannot connect to the Cassandra node {address}")).caused_by(e).retry_safe()
        })
    }

    async fn open(&mut self) -> std::io::Result<CassandraConnection> {
        let up = &self.upstream;
        let mut conn = CassandraConnection::connect(up.address, up.connect_timeout, up.tls.as_ref()).await?;
        let Some(startup) = self.session.startup.clone() else { return Ok(conn) };
        let replay_err = |what: &str| std::io::Error::other(format!("replaying the session: {what}"));
        let mut frames = Vec::new();
        for request in std::iter::once(startup).chain(self.session.auth.clone()).chain(self.session.register.clone()) {
            let mut frame = request.to_vec();
            let _ = header::set_stream_id(&mut frame, REPLAY_STREAM);
            conn.send(&[Bytes::from(frame)]).await?;
            frames.clear();
            conn.next_frames(&mut frames).await?;
            match frames.first().map(|f| header::opcode(f)) {
                Some(Ok(Opcode::Error)) => return Err(replay_err("the node refused it")),
                Some(Ok(_)) => {}
                _ => return Err(replay_err("no answer")),
            }
        }
        if let (Some(ks), Some(version)) =
            (&self.session.keyspace, self.session.startup.as_deref().and_then(|s| header::version(s).ok()))
        {
            let use_ks = CassandraFrame {
                version,
                response: false,
                flags: 0,
                stream_id: REPLAY_STREAM,
                tracing_id: None,
                warnings: Vec::new(),
                custom_payload: None,
                body: CassandraBody::Query(Query {
                    query: format!("USE \"{}\"", ks.replace('"', "\"\"")),
                    params: QueryParams::new(Consistency::One),
                }),
            };
            let bytes = use_ks.encode().map_err(|e| replay_err(&e.to_string()))?;
            conn.send(&[Bytes::from(bytes)]).await?;
            frames.clear();
            conn.next_frames(&mut frames).await?;
        }
        Ok(conn)
    }
}

#[async_trait(?Send)]
impl Transform for CassandraSinkSingle {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        if self.timer_expired() {
            return Err(self.read_timed_out());
        }
        let requests = std::mem::take(&mut state.requests);
        let ids: Vec<MessageId> = if state.complete { requests.iter().map(Message::id).collect() } else { Vec::new() };
        if !requests.is_empty() {
            if self.connection.is_none() {
                match self.connect().await {
                    Ok(conn) => self.connection = Some(conn),
                    Err(e) => {
                        // Nothing was sent: Overloaded tells the client to try again later.
                        crate::warn_limited!("{e}");
                        let text = format!("shotover: {e}");
                        for request in &requests {
                            self.failed_requests.inc();
                            self.ready.push(Message::error_to(request, ProxyError::Overloaded, &text));
                        }
                        return Ok(std::mem::take(&mut self.ready));
                    }
                }
            }
            let now = Instant::now();
            let mut frames = Vec::with_capacity(requests.len());
            for request in &requests {
                let (Some(header), Ok(bytes)) = (request.cql_header(), request.to_bytes()) else {
                    self.ready.push(Message::error_to(
                        request,
                        ProxyError::Refused,
                        "shotover: cannot encode the request",
                    ));
                    continue;
                };
                self.remember_request(&header, &bytes);
                self.in_flight.insert(header.stream_id, InFlight { request_id: request.id(), header, sent_at: now });
                frames.push(bytes);
            }
            let sent = match self.connection.as_mut() {
                Some(conn) => conn.send(&frames).await,
                None => Err(std::io::Error::other("not connected")),
            };
            self.source_to_sink.written(requests.first().and_then(Message::received_at));
            if let Err(e) = sent {
                crate::warn_limited!("sending to the Cassandra node {} failed: {e}", self.upstream.address);
                // Part of the batch may have been written: an upstream failure, retry-unsafe.
                self.fail_in_flight(&e.into());
            }
        }
        // Whatever the node has answered already goes up now; the rest follows through
        // poll_pushed as it arrives.
        if let Some(conn) = self.connection.as_mut() {
            if let Err(e) = conn.take_frames(&mut self.frames) {
                self.fail_in_flight(&e.into());
            }
        }
        self.accept_frames();
        // A complete batch (Tee, ParallelMap) is answered in full before this returns.
        while self.waiting_for(&ids) {
            if self.timer_expired() {
                return Err(self.read_timed_out());
            }
            std::future::poll_fn(|cx| self.poll_answers(cx)).await;
        }
        Ok(std::mem::take(&mut self.ready))
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ready.is_empty() {
            return Poll::Ready(());
        }
        self.poll_answers(cx)
    }
}

impl CassandraSinkSingle {
    /// Ready when the node's answers (or its connection's failure, or the read timeout)
    /// have been taken in.
    fn poll_answers(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(conn) = self.connection.as_mut() else { return Poll::Pending };
        let mode =
            if self.in_flight.is_empty() { crate::stream::ReadMode::Wait } else { crate::stream::ReadMode::Spin };
        match conn.poll_frames(cx, mode, &mut self.frames) {
            Poll::Ready(Ok(())) => {
                self.accept_frames();
                return Poll::Ready(());
            }
            Poll::Ready(Err(e)) => {
                if !self.in_flight.is_empty() {
                    crate::warn_limited!("the connection to the Cassandra node {} failed: {e}", self.upstream.address);
                }
                self.fail_in_flight(&e.into());
                return Poll::Ready(());
            }
            Poll::Pending => {}
        }
        self.poll_read_timeout(cx)
    }

    /// True while a request of `ids` has no answer in `ready`.
    fn waiting_for(&self, ids: &[MessageId]) -> bool {
        ids.iter().any(|id| !self.ready.iter().any(|m| m.request_id() == Some(*id)))
    }

    fn oldest_sent(&self) -> Option<Instant> {
        self.in_flight.values().map(|r| r.sent_at).min()
    }

    /// The read timeout passed: the client connection closes and the source answers every
    /// request still waiting; this connection to the node, with its late answers, goes too.
    fn read_timed_out(&mut self) -> ChainError {
        self.connection = None;
        self.timer = None;
        self.in_flight.clear();
        ChainError::upstream(format!(
            "no response from the Cassandra node within the read_timeout of {:?}",
            self.upstream.read_timeout.unwrap_or_default()
        ))
        .close_connection()
    }

    fn timer_expired(&self) -> bool {
        // Without a read_timeout, skip the walk over the requests in flight.
        let Some(limit) = self.upstream.read_timeout else { return false };
        self.oldest_sent().is_some_and(|oldest| oldest.elapsed() >= limit)
    }

    /// Ready when the oldest request in flight has waited `read_timeout`.
    fn poll_read_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(limit) = self.upstream.read_timeout else { return Poll::Pending };
        if self.timer.is_none() {
            // Armed for the oldest request in flight; answers arriving disarm it, so the walk
            // over the requests in flight happens once per answered batch, not per poll.
            let Some(oldest) = self.oldest_sent() else { return Poll::Pending };
            self.timer = Some(Timer::new(limit.saturating_sub(oldest.elapsed())));
        }
        match self.timer.as_mut() {
            Some(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Retry, Side};
    use crate::sinks::testing::{closed_port, on_a_core};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn sink(address: SocketAddr, read_timeout: Option<Duration>) -> CassandraSinkSingle {
        let upstream = Upstream { address, tls: None, connect_timeout: Duration::from_secs(1), read_timeout };
        CassandraSinkSingle::new(
            Rc::new(upstream),
            IntCounter::new("failed", "failed").unwrap(),
            SourceToSink::unregistered(),
        )
    }

    #[test]
    fn an_unreachable_node_is_an_upstream_failure_safe_to_retry() {
        let address = closed_port();
        let (side, retry, close, text) = on_a_core(move || async move {
            let e = sink(address, None).connect().await.err().expect("nothing listens there");
            (e.side(), e.retry(), e.closes_connection(), e.to_string())
        });
        assert_eq!((side, retry, close), (Side::Upstream, Retry::Safe, false));
        assert!(text.starts_with(&format!("cannot connect to the Cassandra node {address}: ")), "{text}");
    }

    #[test]
    fn a_read_timeout_is_an_upstream_failure_unsafe_to_retry_that_closes_the_connection() {
        let mut sink = sink(closed_port(), Some(Duration::from_secs(1)));
        // The header of a v4 OPTIONS request on stream 1.
        let header = FrameHeader::parse(&[0x04, 0, 0, 1, 0x05, 0, 0, 0, 0]).unwrap();
        let sent_at = Instant::now().checked_sub(Duration::from_secs(2)).unwrap();
        sink.in_flight.insert(1, InFlight { request_id: 1, header, sent_at });
        let e = futures_lite::future::block_on(sink.transform(&mut ChainState::last(Vec::new())))
            .expect_err("the oldest request waited too long");
        assert_eq!((e.side(), e.retry(), e.closes_connection()), (Side::Upstream, Retry::Unsafe, true));
        assert_eq!(e.to_string(), "no response from the Cassandra node within the read_timeout of 1s");
        assert!(sink.in_flight.is_empty());
    }
}
