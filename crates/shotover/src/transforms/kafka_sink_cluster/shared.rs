//! What the client connections of one worker core share: the settings, the cluster's
//! metadata as last seen, and which Shotover peers are up.

use super::config::Settings;
use super::metadata::Metadata;
use super::scram::ScramOverMtls;
use crate::observability::metrics::SourceToSink;
use crate::sinks::UpstreamTls;
use prometheus::IntCounter;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Weak;
use std::sync::Arc;
use std::time::Duration;

/// One entry of `shotover_nodes`.
#[derive(Debug, Clone)]
pub(super) struct ShotoverNode {
    /// Host and port told to clients.
    pub(super) host: Arc<str>,
    pub(super) port: i32,
    /// Where peers check it.
    pub(super) for_peers: SocketAddr,
    pub(super) rack: Arc<str>,
    pub(super) broker_id: i32,
}

pub(super) struct Shared {
    pub(super) contact: Vec<SocketAddr>,
    pub(super) shotover: Vec<ShotoverNode>,
    pub(super) local: usize,
    pub(super) connect_timeout: Duration,
    pub(super) read_timeout: Option<Duration>,
    tls: Option<futures_rustls::TlsConnector>,
    pub(super) metadata: RefCell<Metadata>,
    /// One per entry of `shotover` (this node is always up).
    peers_up: Vec<Cell<bool>>,
    /// Round robin position for requests any broker can take.
    turn: Cell<usize>,
    pub(super) failed_requests: IntCounter,
    pub(super) source_to_sink: SourceToSink,
    /// `authorize_scram_over_mtls`, with this core's delegation tokens.
    pub(super) scram: Option<ScramOverMtls>,
}

impl Shared {
    pub(super) fn new(settings: &Settings, failed_requests: IntCounter, source_to_sink: SourceToSink) -> Self {
        Shared {
            contact: settings.contact.clone(),
            shotover: settings.shotover.clone(),
            local: settings.local,
            connect_timeout: settings.connect.connect_timeout,
            read_timeout: settings.connect.read_timeout,
            tls: settings.connect.tls.clone(),
            metadata: RefCell::new(Metadata::default()),
            peers_up: settings.shotover.iter().map(|_| Cell::new(true)).collect(),
            turn: Cell::new(0),
            failed_requests,
            source_to_sink,
            scram: settings.scram.as_ref().map(|s| ScramOverMtls::new(s.contact.clone(), s.tls.clone(), s.lifetime)),
        }
    }

    pub(super) fn tls_for(&self, broker: SocketAddr) -> Option<UpstreamTls> {
        self.tls.as_ref().map(|connector| crate::sinks::valkey_slots::node_tls(connector, broker))
    }

    /// How long the proxy waits for the answer to a request of its own (Metadata,
    /// FindCoordinator, a replayed login): `read_timeout`, or 10 s without one.
    pub(super) fn own_request_timeout(&self) -> Duration {
        self.read_timeout.unwrap_or(Duration::from_secs(10))
    }

    pub(super) fn local_rack(&self) -> &str {
        self.shotover.get(self.local).map_or("", |n| &n.rack)
    }

    /// The Shotover nodes shown to clients: those up, in configuration order.
    pub(super) fn up_shotover_nodes(&self) -> Vec<&ShotoverNode> {
        (self.shotover.iter().zip(&self.peers_up)).filter(|(_, up)| up.get()).map(|(n, _)| n).collect()
    }

    /// Brokers to try for a request any broker can take: round robin over the brokers of
    /// this node's rack, then the others; the contact points before the metadata is known.
    pub(super) fn any_brokers(&self) -> Vec<SocketAddr> {
        let metadata = self.metadata.borrow();
        let (mut near, far) = metadata.brokers_by_rack(self.local_rack());
        if near.is_empty() && far.is_empty() {
            near = self.contact.clone();
        }
        let turn = self.turn.get();
        self.turn.set(turn.wrapping_add(1));
        let len = near.len();
        if len > 0 {
            near.rotate_left(turn % len);
        }
        near.into_iter().chain(far).collect()
    }
}

/// Checks one peer every `every`, round robin, by opening a TCP connection to it within
/// the connect timeout; a peer that cannot be reached is left out of the metadata shown
/// to clients until a later check reaches it. Ends with the core's last connection.
pub(super) async fn check_peers(shared: Weak<Shared>, every: Duration) {
    let mut next = 0usize;
    loop {
        crate::rt::sleep(every).await;
        let Some(s) = shared.upgrade() else { return };
        let count = s.shotover.len();
        if count <= 1 {
            continue;
        }
        next = (next + 1) % count;
        if next == s.local {
            next = (next + 1) % count;
        }
        let Some(peer) = s.shotover.get(next) else { continue };
        let (address, timeout) = (peer.for_peers, s.connect_timeout);
        let was_up = s.peers_up.get(next).is_some_and(Cell::get);
        drop(s);
        let reached = crate::rt::TcpStream::connect_timeout(address, timeout).await.is_ok();
        if was_up != reached {
            tracing::info!(
                "KafkaSinkCluster: the Shotover peer {address} is {}",
                if reached { "up again" } else { "down: it is left out of the metadata" }
            );
        }
        let Some(s) = shared.upgrade() else { return };
        if let Some(up) = s.peers_up.get(next) {
            up.set(reached);
        }
    }
}
