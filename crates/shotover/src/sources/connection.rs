//! The connection loop every source shares: read a batch, run the chain, write the batch.
//!
//! A protocol plugs in through [`SourceCodec`]: how requests are cut from the bytes, how
//! responses are written, and what a client gets when the chain fails. The loop itself
//! waits on four things at once: client bytes, messages the chain has for the client
//! (pushed by a sink: pub/sub, CQL events, out-of-order CQL responses), the idle timer, and
//! the core's shutdown signal.

use super::ConnectionContext;
use crate::chain::{Chain, ChainError};
use crate::config::topology::Transport;
use crate::message::Message;
use crate::rt::TcpStream;
use crate::rt::Timer;
use crate::stream::{ReadBuffer, ReadMode, Stream};
use crate::websocket;
use bytes::Buf;
use bytes::BytesMut;
use futures_lite::io::{AsyncWrite, AsyncWriteExt};
use shotover_executor::ShutdownKind;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// After shutdown starts, a connection is closed once its client has been idle this long,
/// so busy clients finish their work and no request that was read goes unanswered.
pub const DRAIN_IDLE: Duration = Duration::from_millis(100);

/// How often an idle connection that may close checks again whether the answers it still
/// owes its client have come.
const OWED_RECHECK: Duration = Duration::from_millis(5);

/// Requests read ahead while a blocking request runs (to see the client go away).
const MAX_READ_AHEAD: usize = 1024 * 1024;

/// Requests run through the chain at once, at most. A few small requests can ask for large
/// answers (GET of big values), and a batch's answers are all held before the backlog
/// check stops reading: cutting a long pipeline into batches of this many bounds what one
/// batch adds past `max_reply_backlog_bytes`. Deeper pipelines are rare, and still go as
/// one upstream round trip per batch.
const MAX_BATCH: usize = 256;

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes that are not the protocol: what to tell the client before closing, and why.
pub struct Malformed {
    pub reply: Vec<u8>,
    pub reason: String,
}

/// A protocol's part of the connection loop.
pub trait SourceCodec {
    /// Cuts every whole request off the front of `buf` into `batch`.
    fn decode(&mut self, buf: &mut BytesMut, now: Instant, batch: &mut Vec<Message>) -> Result<(), Malformed>;
    /// Sees each batch just before the chain runs it.
    fn sent(&mut self, batch: &[Message]);
    /// Writes the chain's responses (and unsolicited messages) to `out`.
    fn encode(&mut self, responses: Vec<Message>, out: &mut BytesMut, connection: &str);
    /// Writes an error answer for every request still waiting, after the chain failed with
    /// `error` (its text, `error.to_string()`, is what the client is told).
    fn chain_failed(&mut self, error: &ChainError, out: &mut BytesMut);
    /// Requests the chain has taken and not answered yet.
    fn outstanding(&self) -> u64;
    /// True when the connection must close after what was written (a response could not
    /// be made, so the client must retry on a new connection).
    fn must_close(&self) -> bool {
        false
    }
    /// True when a request of `batch` may wait long for its answer (a blocking command):
    /// the connection then watches for its client going away while the chain runs.
    fn may_block(&self, _batch: &[Message]) -> bool {
        false
    }
}

enum Event {
    Read(std::io::Result<usize>),
    /// Everything owed to the client is written, or writing failed.
    Written(std::io::Result<()>),
    Pushed,
    Idle,
    Shutdown(ShutdownKind),
}

/// Completes the TLS handshake when the source has TLS.
async fn accept_tls(tcp: TcpStream, ctx: &ConnectionContext, peer: &str) -> Option<Stream> {
    let Some(acceptor) = &ctx.source.tls else { return Some(Stream::Plain(tcp)) };
    let timed_out = async {
        crate::rt::sleep(TLS_HANDSHAKE_TIMEOUT).await;
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    // Boxed, as the WebSocket upgrade below: the handshake's state would otherwise sit inline
    // in every connection's task for the connection's whole life.
    match Box::pin(futures_lite::future::or(acceptor.accept(tcp), timed_out)).await {
        Ok(tls) => Some(Stream::TlsServer(Box::new(tls))),
        Err(e) => {
            tracing::warn!(connection = %ctx.id, %peer, "TLS handshake failed: {e}");
            None
        }
    }
}

/// Completes the WebSocket upgrade when the source's transport is WebSocket.
async fn accept_websocket(stream: Stream, ctx: &ConnectionContext, peer: &str) -> Option<Stream> {
    if ctx.source.transport != Transport::WebSocket {
        return Some(stream);
    }
    let timed_out = async {
        crate::rt::sleep(websocket::HANDSHAKE_TIMEOUT).await;
        Err("the client did not complete the WebSocket upgrade in time".to_string())
    };
    // Boxed: the upgrade's state (6 KB) would otherwise sit inline in every connection's
    // task, WebSocket or not, for the connection's whole life (`serve` is one state machine
    // as large as its largest await).
    match Box::pin(futures_lite::future::or(websocket::accept(stream, ctx.source.max_request_bytes), timed_out)).await {
        Ok(ws) => Some(Stream::WebSocket(Box::new(ws))),
        Err(e) => {
            tracing::warn!(connection = %ctx.id, %peer, "{e}");
            None
        }
    }
}

/// One connection's codec and output.
struct Client<C> {
    codec: C,
    /// Answers not yet written to the client.
    out: BytesMut,
    /// Requests read and not yet run, while the answers waiting for the client are over
    /// the source's `max_reply_backlog_bytes`.
    pending: Vec<Message>,
    /// True when `out` was written in part and the stream may still hold bytes (TLS).
    unflushed: bool,
    /// When the sink read the first response of the batch being written.
    sink_read_at: Option<Instant>,
    /// Requests the last read brought: room for as many is made before the next read's are
    /// cut (each batch's list goes down the chain, so it starts empty every time, and grew
    /// from 4 to 8 to 16 for a 16-deep pipeline).
    batch_hint: usize,
    /// Set when bytes were read while a blocking request ran (to see the client go away):
    /// they are cut into requests then, not when the client next sends.
    read_ahead: bool,
}

/// When a connection closes for want of traffic: the source's idle `timeout`, or a drain
/// or gradual close of the core.
struct Idle {
    after: Option<Duration>,
    timer: Option<Timer>,
    last_activity: Instant,
    /// Set once asked to drain or close: from then on the idle timer decides when to close.
    closing: bool,
    /// Set while the connection would close but still owes its client answers.
    awaiting_owed: bool,
}

impl Idle {
    fn new(after: Option<Duration>) -> Self {
        Idle {
            after,
            timer: after.map(Timer::new),
            last_activity: Instant::now(),
            closing: false,
            awaiting_owed: false,
        }
    }

    fn activity(&mut self) {
        self.activity_at(Instant::now());
    }

    fn activity_at(&mut self, now: Instant) {
        self.last_activity = now;
        self.awaiting_owed = false;
    }

    /// Drain: keep serving until the client pauses, then close. Close (gradual shutdown):
    /// close at the first moment no request is waiting to be read.
    fn shutdown(&mut self, kind: ShutdownKind) {
        self.closing = true;
        let wait = if kind == ShutdownKind::Close { Duration::ZERO } else { DRAIN_IDLE };
        self.after = Some(self.after.map_or(wait, |d| d.min(wait)));
        self.timer = Some(Timer::new(wait));
    }

    /// The timer fired. True when the client really was idle that long (otherwise the
    /// timer is set again for the rest of the time).
    fn expired(&mut self) -> bool {
        // One reading of the clock: read twice, the second could pass `after` and the
        // subtraction underflow (a panic, which took a whole core down in a CI run).
        let idle_for = self.last_activity.elapsed();
        match (self.after.and_then(|after| after.checked_sub(idle_for)), self.timer.as_mut()) {
            (Some(left), Some(timer)) if !left.is_zero() => {
                timer.reset(left);
                false
            }
            _ => true,
        }
    }
}

/// Serves one client connection until it closes, idles out, or the core shuts down.
pub async fn serve<C: SourceCodec>(tcp: TcpStream, mut chain: Chain, ctx: ConnectionContext, codec: C) {
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = tcp.set_nodelay(true);
    let Some(stream) = accept_tls(tcp, &ctx, &peer).await else { return };
    let Some(mut stream) = accept_websocket(stream, &ctx, &peer).await else { return };
    let mut client = Client {
        codec,
        out: BytesMut::new(),
        pending: Vec::new(),
        unflushed: false,
        sink_read_at: None,
        batch_hint: 0,
        read_ahead: false,
    };
    let mut read = ReadBuffer::default();
    let mut idle = Idle::new(ctx.source.idle_timeout);
    let sink_to_source = ctx.metrics.sink_to_source_latency.with_label_values(&[&ctx.source.name]);
    loop {
        // Every event can be ready at once for a long time (a client that never stops
        // sending, a transform that keeps having answers): the core's other tasks still run.
        crate::rt::yield_if_needed().await;
        let mut keep_open = match next_event(&mut client, &mut read, &mut stream, &mut chain, &ctx, &mut idle).await {
            Event::Read(Ok(0)) => false,
            Event::Read(Err(e)) => {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    // The transport itself was violated (a bad WebSocket frame, say).
                    tracing::warn!(connection = %ctx.id, %peer, "malformed input, closing the connection: {e}");
                } else {
                    tracing::debug!(connection = %ctx.id, %peer, "client read failed: {e}");
                }
                false
            }
            Event::Read(Ok(_)) => {
                handle_input(&mut client, &mut read, &mut stream, &mut chain, &ctx, &peer, &mut idle).await
            }
            Event::Pushed => {
                // Messages pushed to a subscriber count as activity, as they do for Valkey.
                idle.activity();
                run_chain(&mut client, &mut chain, Vec::new(), &ctx).await
            }
            Event::Idle => idle_expired(&mut idle, &mut client, &mut chain, &ctx, &peer).await,
            Event::Shutdown(kind) => {
                idle.shutdown(kind);
                true
            }
            Event::Written(Ok(())) => {
                read.just_wrote();
                if let Some(at) = client.sink_read_at.take() {
                    sink_to_source.observe(at.elapsed().as_secs_f64());
                }
                // The client caught up: run what waited for it.
                run_pending(&mut client, &mut read, &mut stream, &mut chain, &ctx, &peer, false).await
            }
            Event::Written(Err(e)) => {
                tracing::debug!(connection = %ctx.id, %peer, "client write failed: {e}");
                break;
            }
        };
        // Requests that came while a blocking one ran: their client may wait for their
        // answers before it sends anything more.
        while keep_open && std::mem::take(&mut client.read_ahead) {
            keep_open = handle_input(&mut client, &mut read, &mut stream, &mut chain, &ctx, &peer, &mut idle).await;
        }
        if !keep_open {
            // A client that half-closed after its requests still gets their answers.
            run_pending(&mut client, &mut read, &mut stream, &mut chain, &ctx, &peer, true).await;
            if client.codec.outstanding() > 0 {
                // Requests a transform holds back (Coalesce) are answered before closing: an
                // empty batch asks every transform to deliver what it holds.
                run_chain(&mut client, &mut chain, Vec::new(), &ctx).await;
            }
            if let Err(e) = write_all(&mut client, &mut stream).await {
                tracing::debug!(connection = %ctx.id, %peer, "client write failed: {e}");
            }
            break;
        }
    }
    let _ = stream.close().await;
}

/// Waits for whichever comes first: client bytes, messages the chain has for the client,
/// the idle timer, or the core's shutdown signal (once). Meanwhile it writes what the client
/// is owed as far as the client reads it, and stops reading requests while more than the
/// source's `max_reply_backlog_bytes` of answers wait for a client that does not read them.
async fn next_event<C: SourceCodec>(
    client: &mut Client<C>,
    read: &mut ReadBuffer,
    stream: &mut Stream,
    chain: &mut Chain,
    ctx: &ConnectionContext,
    idle: &mut Idle,
) -> Event {
    poll_fn(|cx| {
        if let Poll::Ready(written) = poll_write_out(client, stream, cx) {
            return Poll::Ready(Event::Written(written));
        }
        if !idle.closing {
            if let Poll::Ready(kind) = ctx.shutdown.poll(cx) {
                return Poll::Ready(Event::Shutdown(kind));
            }
        }
        if client.out.len() < ctx.source.max_reply_backlog_bytes {
            if let Poll::Ready(r) = read.poll_fill(stream, cx, ReadMode::Spin) {
                return Poll::Ready(Event::Read(r));
            }
        }
        if chain.poll_pushed(cx).is_ready() {
            return Poll::Ready(Event::Pushed);
        }
        match idle.timer.as_mut().map(|t| Pin::new(t).poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Event::Idle),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Writes as much of the client's answers as it takes now. Ready once they are all
/// written (and flushed), or on a write error; pending while the client is not reading,
/// or when there is nothing to write.
fn poll_write_out<C>(client: &mut Client<C>, stream: &mut Stream, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
    if client.out.is_empty() && !client.unflushed {
        return Poll::Pending;
    }
    while !client.out.is_empty() {
        match Pin::new(&mut *stream).poll_write(cx, &client.out) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                client.out.advance(n);
                client.unflushed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    let flushed = std::task::ready!(Pin::new(&mut *stream).poll_flush(cx));
    client.unflushed = false;
    shotover_executor::io::release_if_large(&mut client.out);
    Poll::Ready(flushed)
}

/// The idle timer fired; returns false to close. A connection that still owes its client
/// answers is not closed yet.
async fn idle_expired<C: SourceCodec>(
    idle: &mut Idle,
    client: &mut Client<C>,
    chain: &mut Chain,
    ctx: &ConnectionContext,
    peer: &str,
) -> bool {
    if !idle.expired() {
        return true;
    }
    if client.codec.outstanding() > 0 && !idle.awaiting_owed {
        // Deliver what transforms hold (an empty batch asks for it) ...
        run_chain(client, chain, Vec::new(), ctx).await;
    }
    idle.awaiting_owed = client.codec.outstanding() > 0;
    if idle.awaiting_owed {
        // ... and wait for answers still owed by the upstream (a slow query, a long-polling
        // Fetch): closing now would lose them. A shutdown's deadline still ends the wait.
        if let Some(timer) = idle.timer.as_mut() {
            timer.reset(OWED_RECHECK);
        }
        return true;
    }
    tracing::debug!(connection = %ctx.id, %peer, "closing idle connection");
    false
}

/// Writes everything the client is owed, waiting for it to read (before closing).
async fn write_all<C>(client: &mut Client<C>, stream: &mut Stream) -> std::io::Result<()> {
    poll_fn(|cx| match poll_write_out(client, stream, cx) {
        Poll::Pending if client.out.is_empty() && !client.unflushed => Poll::Ready(Ok(())),
        other => other,
    })
    .await
}

/// Cuts the buffered bytes into a batch of whole requests and runs it. Malformed input
/// ends the connection after the codec's error reply. Only whole requests count as
/// activity for the idle timeout: a client that trickles a request in a byte at a time
/// (slowloris) is closed after `timeout` as if it had sent nothing.
async fn handle_input<C: SourceCodec>(
    client: &mut Client<C>,
    read: &mut ReadBuffer,
    stream: &mut Stream,
    chain: &mut Chain,
    ctx: &ConnectionContext,
    peer: &str,
    idle: &mut Idle,
) -> bool {
    let before = client.pending.len();
    // The bytes were just read, and the core noted when: no second clock reading.
    let now = shotover_executor::io::last_arrival().unwrap_or_else(Instant::now);
    client.pending.reserve(client.batch_hint);
    let malformed = client.codec.decode(&mut read.buf, now, &mut client.pending).err();
    client.batch_hint = client.pending.len().saturating_sub(before).min(MAX_BATCH);
    if client.pending.len() > before {
        idle.activity_at(now);
    }
    // Before malformed bytes close the connection, every request before them is answered.
    let mut keep_open = run_pending(client, read, stream, chain, ctx, peer, malformed.is_some()).await;
    if let Some(m) = malformed {
        tracing::warn!(connection = %ctx.id, %peer, "malformed request, closing the connection: {}", m.reason);
        client.out.extend_from_slice(&m.reply);
        keep_open = false;
    }
    keep_open
}

/// Runs the pending requests, [`MAX_BATCH`] at a time, while the answers waiting for the
/// client are under the source's `max_reply_backlog_bytes` (or all of them, with `all`).
/// Returns false to close.
async fn run_pending<C: SourceCodec>(
    client: &mut Client<C>,
    read: &mut ReadBuffer,
    stream: &mut Stream,
    chain: &mut Chain,
    ctx: &ConnectionContext,
    peer: &str,
    all: bool,
) -> bool {
    while !client.pending.is_empty() && (all || client.out.len() < ctx.source.max_reply_backlog_bytes) {
        let batch = if client.pending.len() <= MAX_BATCH {
            std::mem::take(&mut client.pending)
        } else {
            client.pending.drain(..MAX_BATCH).collect()
        };
        let keep_open = if client.codec.may_block(&batch) {
            // A request that may block for long (BLPOP ...) must not outlive its client: if
            // the client goes away meanwhile, the chain is dropped, and with it the upstream
            // connection, so the server stops waiting for it (and pops nothing for nobody).
            let buffered = read.buf.len();
            let outcome = {
                let run = std::pin::pin!(run_chain(client, chain, batch, ctx));
                futures_lite::future::or(async { Some(run.await) }, client_gone(read, stream)).await
            };
            client.read_ahead |= read.buf.len() > buffered;
            match outcome {
                Some(keep_open) => keep_open,
                None => {
                    tracing::debug!(connection = %ctx.id, %peer, "client went away during a blocking request");
                    false
                }
            }
        } else {
            run_chain(client, chain, batch, ctx).await
        };
        if !keep_open {
            // As before batches were cut: what follows a request that closes is not run.
            client.pending.clear();
            return false;
        }
    }
    true
}

/// Ready (with `None`) once the client has closed its connection or it failed. Bytes it
/// sends meanwhile stay in `read` for the next batch, up to [`MAX_READ_AHEAD`].
async fn client_gone<T>(read: &mut ReadBuffer, stream: &mut Stream) -> Option<T> {
    poll_fn(|cx| {
        while read.buf.len() < MAX_READ_AHEAD {
            match read.poll_fill(stream, cx, ReadMode::Wait) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Pending
    })
    .await
}

/// Runs one batch through the chain and encodes what it returns. Returns false to close.
async fn run_chain<C: SourceCodec>(
    client: &mut Client<C>,
    chain: &mut Chain,
    batch: Vec<Message>,
    ctx: &ConnectionContext,
) -> bool {
    client.codec.sent(&batch);
    match chain.process(batch).await {
        Ok(responses) => {
            client.sink_read_at = responses.iter().find_map(|r| r.received_at());
            client.codec.encode(responses, &mut client.out, &ctx.id);
            !client.codec.must_close()
        }
        Err(e) => {
            let close = e.closes_connection();
            crate::warn_limited!(connection = %ctx.id, "chain failed{}: {e}", if close { ", closing the connection" } else { "" });
            client.codec.chain_failed(&e, &mut client.out);
            !close && !client.codec.must_close()
        }
    }
}
