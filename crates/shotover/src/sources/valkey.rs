//! The Valkey connection loop: read a batch, run the chain, write the batch.

use super::ConnectionContext;
use crate::chain::{Chain, CloseConnection};
use crate::io::{ReadBuffer, ReadMode, Stream};
use crate::message::{Message, Protocol};
use bytes::BytesMut;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::timer::Timer;
use shotover_executor::ShutdownKind;
use shotover_protocols::valkey::command::{request_args, RequestView};
use shotover_protocols::valkey::frame::is_error_reply;
use shotover_protocols::valkey::framing::Scanner;
use shotover_protocols::valkey::RespVersion;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

/// What the connection remembers between batches.
struct ClientState {
    read: ReadBuffer,
    scanner: Scanner,
    out: BytesMut,
    /// The protocol the client negotiated with HELLO; replies made by the proxy use it.
    resp: RespVersion,
    /// When the sink read the first response of the batch being written.
    sink_read_at: Option<Instant>,
    /// Requests sent down the chain and responses returned for them so far. A transform
    /// may hold requests back (Coalesce) and answer them in a later batch, in order.
    sent: u64,
    answered: u64,
    /// HELLO/RESET requests not answered yet: (request number, the protocol they switch to).
    switches: VecDeque<(u64, RespVersion)>,
}

impl ClientState {
    /// Requests the chain holds and has not answered yet.
    fn outstanding(&self) -> u64 {
        self.sent - self.answered
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Pushed,
    Idle,
    Shutdown(ShutdownKind),
}

/// After shutdown starts, a connection is closed once its client has been idle this long,
/// so busy clients finish their work and no request that was read goes unanswered.
pub const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the TLS handshake when the source has TLS.
async fn accept_tls(tcp: TcpStream, ctx: &ConnectionContext, peer: &str) -> Option<Stream> {
    let Some(acceptor) = &ctx.source.tls else { return Some(Stream::Plain(tcp)) };
    let timed_out = async {
        glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT).await;
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    match futures_lite::future::or(acceptor.accept(tcp), timed_out).await {
        Ok(tls) => Some(Stream::TlsServer(Box::new(tls))),
        Err(e) => {
            tracing::warn!(connection = %ctx.id, %peer, "TLS handshake failed: {e}");
            None
        }
    }
}

/// Serves one client connection until it closes, idles out, or the core shuts down.
pub async fn serve(tcp: TcpStream, mut chain: Chain, ctx: ConnectionContext) {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = tcp.set_nodelay(true);
    let Some(mut stream) = accept_tls(tcp, &ctx, &peer).await else { return };
    let mut state = ClientState {
        read: ReadBuffer::default(),
        scanner: Scanner::default(),
        out: BytesMut::new(),
        resp: RespVersion::Resp2,
        sink_read_at: None,
        sent: 0,
        answered: 0,
        switches: VecDeque::new(),
    };
    let mut idle_after = ctx.source.idle_timeout;
    // Set once asked to drain or close: from then on the idle timer decides when to close.
    let mut closing = false;
    let mut idle_timer = idle_after.map(Timer::new);
    let mut last_activity = Instant::now();
    let sink_to_source = ctx.metrics.sink_to_source_latency.with_label_values(&[&ctx.source.name]);
    loop {
        let event = poll_fn(|cx| {
            if !closing {
                if let Poll::Ready(kind) = ctx.shutdown.poll(cx) {
                    return Poll::Ready(Event::Shutdown(kind));
                }
            }
            if let Poll::Ready(r) = state.read.poll_fill(&mut stream, cx, ReadMode::Spin) {
                return Poll::Ready(Event::Read(r));
            }
            if chain.poll_pushed(cx).is_ready() {
                return Poll::Ready(Event::Pushed);
            }
            match idle_timer.as_mut().map(|t| Pin::new(t).poll(cx)) {
                Some(Poll::Ready(_)) => Poll::Ready(Event::Idle),
                _ => Poll::Pending,
            }
        })
        .await;
        let keep_open = match event {
            Event::Read(Ok(0)) => false,
            Event::Read(Err(e)) => {
                tracing::debug!(connection = %ctx.id, %peer, "client read failed: {e}");
                false
            }
            Event::Read(Ok(_)) => {
                last_activity = Instant::now();
                handle_input(&mut state, &mut chain, &ctx, &peer).await
            }
            Event::Pushed => {
                // Messages pushed to a subscriber count as activity, as they do for Valkey.
                last_activity = Instant::now();
                run_chain(&mut state, &mut chain, Vec::new(), &ctx).await
            }
            Event::Idle => match (idle_after, idle_timer.as_mut()) {
                (Some(after), Some(timer)) if last_activity.elapsed() < after => {
                    timer.reset(after - last_activity.elapsed());
                    true
                }
                _ => {
                    tracing::debug!(connection = %ctx.id, %peer, "closing idle connection");
                    false
                }
            },
            Event::Shutdown(kind) => {
                // Drain: keep serving until the client pauses, then close. Close (gradual
                // shutdown): close at the first moment no request is waiting to be read.
                closing = true;
                let wait = if kind == ShutdownKind::Close { Duration::ZERO } else { DRAIN_IDLE };
                idle_after = Some(idle_after.map_or(wait, |d| d.min(wait)));
                idle_timer = Some(Timer::new(wait));
                true
            }
        };
        if !keep_open && state.outstanding() > 0 {
            // Requests a transform holds back (Coalesce) are answered before closing: an
            // empty batch asks every transform to deliver what it holds.
            run_chain(&mut state, &mut chain, Vec::new(), &ctx).await;
        }
        if !state.out.is_empty() {
            let written = match stream.write_all(&state.out).await {
                Ok(()) => stream.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::debug!(connection = %ctx.id, %peer, "client write failed: {e}");
                break;
            }
            state.out.clear();
            if let Some(at) = state.sink_read_at.take() {
                sink_to_source.observe(at.elapsed().as_secs_f64());
            }
        }
        if !keep_open {
            break;
        }
    }
    let _ = stream.close().await;
}

/// Splits the buffered bytes into a batch of whole requests and runs it. A malformed
/// request ends the connection after an error reply, as Valkey itself does.
async fn handle_input(state: &mut ClientState, chain: &mut Chain, ctx: &ConnectionContext, peer: &str) -> bool {
    let now = Instant::now();
    let mut batch = Vec::new();
    let mut malformed = None;
    loop {
        match state.scanner.scan(&state.read.buf, true) {
            Ok(Some(len)) => {
                batch.push(Message::from_bytes(state.read.buf.split_to(len).freeze(), Protocol::Valkey, now))
            }
            Ok(None) => break,
            Err(e) => {
                malformed = Some(e);
                break;
            }
        }
    }
    let mut keep_open = batch.is_empty() || run_chain(state, chain, batch, ctx).await;
    if let Some(e) = malformed {
        tracing::warn!(connection = %ctx.id, %peer, "malformed request, closing the connection: {e}");
        state.out.extend_from_slice(format!("-ERR {e}\r\n").as_bytes());
        keep_open = false;
    }
    keep_open
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

/// Runs one batch through the chain and encodes the responses into `out`. Responses answer
/// the outstanding requests in order; any beyond those are unsolicited (pub/sub). Every
/// request gets a reply: on a chain failure each outstanding one gets an error. Returns
/// false to close.
async fn run_chain(state: &mut ClientState, chain: &mut Chain, batch: Vec<Message>, ctx: &ConnectionContext) -> bool {
    let first = state.sent;
    state.sent += batch.len() as u64;
    // Rare: only batches with HELLO or RESET pay for this.
    for (i, m) in batch.iter().enumerate() {
        if m.valkey_request().is_some_and(|v: RequestView<'_>| v.is("HELLO") || v.is("RESET")) {
            if let Some(version) = protocol_switch(m) {
                state.switches.push_back((first + i as u64, version));
            }
        }
    }
    match chain.process(batch).await {
        Ok(mut responses) => {
            state.sink_read_at = responses.iter().find_map(|r| r.received_at());
            for response in &mut responses {
                if state.outstanding() > 0 {
                    let number = state.answered;
                    state.answered += 1;
                    if state.switches.front().is_some_and(|(n, _)| *n == number) {
                        if let Some((_, version)) = state.switches.pop_front() {
                            if response.raw().is_some_and(|r| !is_error_reply(r)) {
                                state.resp = version;
                            }
                        }
                    }
                }
                if response.raw().is_none() {
                    response.set_resp_version(state.resp);
                }
                if let Err(e) = response.encode_into(&mut state.out) {
                    tracing::error!(connection = %ctx.id, "cannot encode a response: {e}");
                    state.out.extend_from_slice(b"-ERR shotover: cannot encode the response\r\n");
                }
            }
            true
        }
        Err(e) => {
            let close = e.is::<CloseConnection>();
            tracing::warn!(connection = %ctx.id, "chain failed{}: {e:#}", if close { ", closing the connection" } else { "" });
            let line = format!("-ERR shotover: {}\r\n", format!("{e:#}").replace(['\r', '\n'], " "));
            for _ in 0..state.outstanding() {
                state.out.extend_from_slice(line.as_bytes());
            }
            state.answered = state.sent;
            state.switches.clear();
            !close
        }
    }
}
