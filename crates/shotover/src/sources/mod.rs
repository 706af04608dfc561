//! Sources: where clients connect.
//!
//! [`accept_loop`] runs on every worker core for every source: it takes connections from
//! that core's listener, enforces the source's `connection_limit` (counted over all cores)
//! and serves each connection on the core the placement picks (this one, or one whose CPU
//! has more room) through [`SourceOnCore::serve`]: one task per connection, which runs
//! [`connection::serve`] with the source's protocol codec: [`valkey::ValkeyCodec`], [`cassandra::CassandraCodec`] or
//! [`kafka::KafkaCodec`].
//!
//! - [`connection`]: the connection loop every source shares, and [`connection::SourceCodec`],
//!   a protocol's part of it.
//! - [`valkey`], [`cassandra`], [`kafka`]: the codecs.

pub mod cassandra;
pub mod connection;
pub mod kafka;
pub mod valkey;

use crate::chain::ChainBuilder;
use crate::config::topology::Transport;
use crate::message::Protocol;
use crate::observability::CoreMetrics;
use crate::rt::{TcpListener, TcpStream};
use shotover_executor::placement::Placer;
use shotover_executor::{AcceptGate, AcceptState, Shutdown};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

pub use shotover_executor::runtime::DRAIN_TIMEOUT;
/// How often a source at its soft connection limit looks for a free slot.
const LIMIT_POLL: Duration = Duration::from_millis(5);

/// What every core shares about one source.
pub struct SourceShared {
    /// The address its listeners are bound to.
    pub listen_addr: std::net::SocketAddr,
    pub protocol: Protocol,
    pub transport: Transport,
    pub name: String,
    pub connection_limit: usize,
    pub hard_connection_limit: bool,
    pub idle_timeout: Option<Duration>,
    /// The source's `max_request_bytes`.
    pub max_request_bytes: usize,
    /// The source's `max_reply_backlog_bytes`.
    pub max_reply_backlog_bytes: usize,
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

/// Waits while accepting is paused; false once the core stops accepting for good.
async fn may_accept(gate: &AcceptGate) -> bool {
    loop {
        match gate.state() {
            AcceptState::Accepting => return true,
            AcceptState::Closed => return false,
            AcceptState::Paused => {
                gate.changed_from(AcceptState::Paused).await;
            }
        }
    }
}

/// One source on one core: what its connections there share. The core's accept loops of
/// the source and the connections other cores hand over are served through it.
pub struct SourceOnCore {
    shared: Arc<SourceShared>,
    chain: Rc<ChainBuilder>,
    metrics: CoreMetrics,
    shutdown: Shutdown,
    /// Connections of the source open on this core, for the drain.
    active: Rc<Cell<usize>>,
    seq: Cell<u64>,
    /// `connections_opened` of the source on this core (its series exists from the start).
    opened: prometheus::IntCounter,
}

impl SourceOnCore {
    pub fn new(shared: Arc<SourceShared>, chain: Rc<ChainBuilder>, metrics: CoreMetrics, shutdown: Shutdown) -> Self {
        let opened = metrics.connections_opened.with_label_values(&[&shared.name, &metrics.core.to_string()]);
        SourceOnCore { shared, chain, metrics, shutdown, active: Rc::new(Cell::new(0)), seq: Cell::new(0), opened }
    }

    /// Serves a connection on this core, in a task of its own. Its slot of the source's
    /// `connection_limit` was taken by the core that accepted it.
    pub fn serve(&self, stream: TcpStream) {
        let source = &self.shared;
        self.opened.inc();
        self.seq.set(self.seq.get() + 1);
        self.active.set(self.active.get() + 1);
        let slot = Slot { shared: source.clone(), active: self.active.clone() };
        let ctx = ConnectionContext {
            id: format!("{}-{}", self.metrics.core, self.seq.get()),
            source: source.clone(),
            shutdown: self.shutdown.register(),
            metrics: self.metrics.clone(),
        };
        let chain = self.chain.build();
        let (protocol, max_request) = (source.protocol, source.max_request_bytes);
        // Disabled by default (it is a DEBUG span); `shotover::connection_span=debug` in the
        // log filter attaches the connection id and peer to every event of the connection.
        let span = tracing::debug_span!(target: "shotover::connection_span", "connection", id = %ctx.id,
            peer = %stream.peer_addr().map(|a| a.to_string()).unwrap_or_default());
        crate::rt::spawn_local(
            async move {
                match protocol {
                    Protocol::Cassandra => {
                        connection::serve(stream, chain, ctx, cassandra::CassandraCodec::new(max_request)).await
                    }
                    Protocol::Kafka => connection::serve(stream, chain, ctx, kafka::KafkaCodec::new(max_request)).await,
                    Protocol::Valkey => {
                        connection::serve(stream, chain, ctx, valkey::ValkeyCodec::new(max_request)).await
                    }
                }
                drop(slot);
            }
            .instrument(span),
        )
        .detach();
    }
}

/// Accepts connections for source `index` on one core until the gate closes, and serves each
/// where `placer` says (here or on a core with more room). [`drain`] waits for them after.
pub async fn accept_loop(
    listener: TcpListener,
    index: usize,
    on: Rc<SourceOnCore>,
    placer: Rc<Placer>,
    gate: AcceptGate,
) {
    let source = &on.shared;
    loop {
        if !source.hard_connection_limit {
            // Leave new connections waiting in the backlog until a slot frees up.
            while source.open.load(Ordering::Acquire) >= source.connection_limit && gate.state() != AcceptState::Closed
            {
                crate::rt::sleep(LIMIT_POLL).await;
            }
        }
        if !may_accept(&gate).await {
            break;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept_unbound().await) }, async {
            gate.changed_from(AcceptState::Accepting).await;
            None
        })
        .await;
        let stream = match accepted {
            None => continue,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::warn!(source = %source.name, "accept failed: {e}");
                crate::rt::sleep(LIMIT_POLL).await;
                continue;
            }
        };
        if !source.try_reserve() {
            if source.hard_connection_limit {
                tracing::warn!(source = %source.name, limit = source.connection_limit, "connection limit reached: dropping a new connection");
                drop(stream.bind());
                continue;
            }
            // Another core took the last slot between our check and the accept: hold this
            // connection until a slot frees up.
            let mut reserved = source.try_reserve();
            while !reserved && gate.state() != AcceptState::Closed {
                crate::rt::sleep(LIMIT_POLL).await;
                reserved = source.try_reserve();
            }
            if !reserved {
                drop(stream.bind());
                break;
            }
        }
        if let Some(stream) = placer.place(index, stream) {
            on.serve(stream);
        }
    }
}

/// Waits for the connections of every source on this core to finish, once the core
/// accepts no more: they drain, or are closed at the deadline whoever closed the gate set
/// (a stop signal, or a gradual shutdown after a hot reload).
pub async fn drain(sources: &[Rc<SourceOnCore>], shutdown: &Shutdown) {
    let open = || sources.iter().map(|s| s.active.get()).sum::<usize>();
    shutdown.set_deadline(std::time::Instant::now() + DRAIN_TIMEOUT);
    while open() > 0 && !shutdown.past_deadline() {
        crate::rt::sleep(Duration::from_millis(10)).await;
    }
    for source in sources.iter().filter(|s| s.active.get() > 0) {
        tracing::warn!(source = %source.shared.name, "{} connections still open at the shutdown deadline: closing them", source.active.get());
    }
}
