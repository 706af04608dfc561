//! Sources: where clients connect.
//!
//! [`accept_loop`] runs on every worker core for every source: it takes connections from
//! that core's listener, enforces the source's `connection_limit` (counted over all cores)
//! and spawns one task per connection. [`valkey`] is the per-connection loop for Valkey.

pub mod valkey;

use crate::chain::ChainBuilder;
use crate::observability::CoreMetrics;
use glommio::net::{TcpListener, TcpStream};
use shotover_executor::Shutdown;
use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long a core waits, after shutdown starts, for its connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a source at its soft connection limit looks for a free slot.
const LIMIT_POLL: Duration = Duration::from_millis(5);

/// What every core shares about one source.
pub struct SourceShared {
    pub name: String,
    pub connection_limit: usize,
    pub hard_connection_limit: bool,
    pub idle_timeout: Option<Duration>,
    /// TLS for clients, when the source has a `tls` block.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    /// Open connections over all cores.
    pub open: AtomicUsize,
}

impl SourceShared {
    /// Takes a connection slot if one is free.
    fn try_reserve(&self) -> bool {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.connection_limit).then_some(n + 1))
            .is_ok()
    }
}

/// Gives the slot back when the connection ends, however it ends.
struct Slot {
    shared: Arc<SourceShared>,
    active: Rc<Cell<usize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.active.set(self.active.get().saturating_sub(1));
    }
}

/// Everything a connection task needs from its core.
pub struct ConnectionContext {
    pub id: String,
    pub source: Arc<SourceShared>,
    pub shutdown: shotover_executor::ShutdownHandle,
    pub metrics: CoreMetrics,
}

async fn until_shutdown(shutdown: &Shutdown) {
    let handle = shutdown.register();
    poll_fn(|cx| handle.poll(cx)).await
}

/// Accepts connections for one source on one core until shutdown, then drains.
pub async fn accept_loop(
    listener: TcpListener,
    source: Arc<SourceShared>,
    chain: Rc<ChainBuilder>,
    metrics: CoreMetrics,
    shutdown: Shutdown,
) {
    let active = Rc::new(Cell::new(0usize));
    let opened = metrics.connections_opened.with_label_values(&[&source.name, &metrics.core.to_string()]);
    let mut seq = 0u64;
    loop {
        if !source.hard_connection_limit {
            // Leave new connections waiting in the backlog until a slot frees up.
            while source.open.load(Ordering::Acquire) >= source.connection_limit && !shutdown.is_triggered() {
                glommio::timer::sleep(LIMIT_POLL).await;
            }
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            until_shutdown(&shutdown).await;
            None
        })
        .await;
        let stream: TcpStream = match accepted {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::warn!(source = %source.name, "accept failed: {e}");
                glommio::timer::sleep(LIMIT_POLL).await;
                continue;
            }
        };
        if !source.try_reserve() {
            if source.hard_connection_limit {
                tracing::warn!(source = %source.name, limit = source.connection_limit, "connection limit reached: dropping a new connection");
                drop(stream);
                continue;
            }
            // Another core took the last slot between our check and the accept: hold this
            // connection until a slot frees up.
            while !source.try_reserve() && !shutdown.is_triggered() {
                glommio::timer::sleep(LIMIT_POLL).await;
            }
            if shutdown.is_triggered() {
                break;
            }
        }
        opened.inc();
        seq += 1;
        active.set(active.get() + 1);
        let slot = Slot { shared: source.clone(), active: active.clone() };
        let ctx = ConnectionContext {
            id: format!("{}-{}", metrics.core, seq),
            source: source.clone(),
            shutdown: shutdown.register(),
            metrics: metrics.clone(),
        };
        let chain = chain.build();
        // Disabled by default (it is a DEBUG span); `shotover::connection_span=debug` in the
        // log filter attaches the connection id and peer to every event of the connection.
        let span = tracing::debug_span!(target: "shotover::connection_span", "connection", id = %ctx.id,
            peer = %stream.peer_addr().map(|a| a.to_string()).unwrap_or_default());
        glommio::spawn_local(
            async move {
                valkey::serve(stream, chain, ctx).await;
                drop(slot);
            }
            .instrument(span),
        )
        .detach();
    }
    drop(listener);
    let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
    while active.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if active.get() > 0 {
        tracing::warn!(source = %source.name, "{} connections still open after {DRAIN_TIMEOUT:?}: closing them", active.get());
    }
}
