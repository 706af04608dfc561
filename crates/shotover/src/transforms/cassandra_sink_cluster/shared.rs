//! What the client connections of one worker core share: the ring, the nodes skipped for
//! now, the prepared statements seen, the tables' partition keys, and the channel to the
//! core's control connection.

use super::*;

/// What a prepared statement's PREPARED answer told.
pub(super) struct PreparedInfo {
    pub(super) query: Rc<str>,
    /// The keyspace it was prepared in (v5 PREPARE), replayed with it.
    pub(super) keyspace: Option<String>,
    /// The keyspace and table of its bind markers.
    pub(super) table: Option<(String, String)>,
    /// Which bind markers make up the partition key (empty when unknown).
    pub(super) pk_indexes: Vec<usize>,
    /// The bind markers' names, to find the partition key by name (v3).
    pub(super) bind_names: Vec<String>,
    /// A SELECT on a rewritten system table, with the names of its result columns.
    pub(super) system: Option<(Rc<SystemQuery>, Rc<[String]>)>,
}

/// This Shotover node and the others, as the system tables show them.
pub(super) type View = (ShotoverNode, Vec<ShotoverNode>);

/// The partition key columns of a table, as the control connection found them.
#[derive(Clone)]
pub(super) enum KeyColumns {
    Asked,
    Known(Vec<String>),
    Unknown,
}

/// How long a node that failed is skipped before it is tried again.
pub(super) const DOWN_FOR: Duration = Duration::from_secs(5);
/// How long a node Cassandra reported DOWN is skipped (unless it reports it UP sooner).
pub(super) const REPORTED_DOWN_FOR: Duration = Duration::from_secs(60);

/// What the client connections of one core share.
pub(super) struct Shared {
    pub(super) contact: Vec<SocketAddr>,
    pub(super) local: ShotoverNode,
    pub(super) shotover: Vec<ShotoverNode>,
    pub(super) local_index: usize,
    pub(super) connect_timeout: Duration,
    pub(super) read_timeout: Option<Duration>,
    pub(super) tls: Option<futures_rustls::TlsConnector>,
    pub(super) ring: RefCell<Rc<Ring>>,
    /// True once the control connection has read the topology.
    pub(super) ring_known: Cell<bool>,
    pub(super) ring_waiters: RefCell<Vec<Waker>>,
    /// The Shotover nodes as the system tables show them, for the current ring.
    pub(super) view: RefCell<Option<Rc<View>>>,
    /// Nodes skipped until the given time.
    pub(super) down: RefCell<HashMap<SocketAddr, Instant>>,
    pub(super) control: Sender<ControlRequest>,
    pub(super) control_has_session: Cell<bool>,
    /// By statement id (the same on every node).
    pub(super) prepared: RefCell<HashMap<Bytes, Rc<PreparedInfo>>>,
    /// Partition key columns by keyspace and table, for v3 statements.
    pub(super) partition_keys: RefCell<HashMap<(String, String), KeyColumns>>,
    pub(super) key_waiters: RefCell<Vec<Waker>>,
    /// Schema agreement checks asked for, and done (the last one asked that is done).
    pub(super) agreement_asked: Cell<u64>,
    pub(super) agreement_done: Cell<u64>,
    pub(super) agreement_waiters: RefCell<Vec<Waker>>,
    /// Round robin position.
    pub(super) turn: Cell<usize>,
    pub(super) failed_requests: IntCounter,
    pub(super) source_to_sink: SourceToSink,
}

impl Shared {
    pub(super) fn tls_for(&self, node: SocketAddr) -> Option<UpstreamTls> {
        self.tls.as_ref().map(|connector| crate::sinks::valkey_slots::node_tls(connector, node))
    }

    pub(super) fn set_ring(&self, ring: Ring) {
        if self.ring_known.get() {
            let old = self.ring.borrow();
            // A node counts once it has tokens: a joining node is listed a moment before.
            let has = |ring: &Ring, address| ring.nodes.iter().any(|n| n.address == address && !n.tokens.is_empty());
            for n in ring.nodes.iter().filter(|n| !n.tokens.is_empty() && !has(&old, n.address)) {
                tracing::info!(
                    "CassandraSinkCluster: the node {} ({}/{}) joined the ring",
                    n.address,
                    n.data_center,
                    n.rack
                );
                // Cassandra reports a joining node DOWN as it joins (2.1 at least), and UP
                // maybe never: a node that has just joined is tried, and skipped only once it
                // cannot be reached.
                self.mark_up(n.address);
            }
            for n in old.nodes.iter().filter(|n| !n.tokens.is_empty() && !has(&ring, n.address)) {
                tracing::info!(
                    "CassandraSinkCluster: the node {} ({}/{}) left the ring",
                    n.address,
                    n.data_center,
                    n.rack
                );
            }
        }
        *self.ring.borrow_mut() = Rc::new(ring);
        *self.view.borrow_mut() = None;
        self.ring_known.set(true);
        for waker in self.ring_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub(super) fn set_partition_key(&self, keyspace: String, table: String, key: Vec<String>) {
        let key = if key.is_empty() { KeyColumns::Unknown } else { KeyColumns::Known(key) };
        self.partition_keys.borrow_mut().insert((keyspace, table), key);
        for waker in self.key_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// The partition key columns of a table (v3 PREPARED answers lack them): asks the
    /// control connection the first time.
    pub(super) fn partition_key(&self, keyspace: &str, table: &str) -> KeyColumns {
        let key = (keyspace.to_string(), table.to_string());
        if let Some(known) = self.partition_keys.borrow().get(&key) {
            return known.clone();
        }
        let request = ControlRequest::PartitionKey { keyspace: key.0.clone(), table: key.1.clone() };
        let state = if self.control.try_send(request).is_ok() { KeyColumns::Asked } else { KeyColumns::Unknown };
        self.partition_keys.borrow_mut().insert(key, state.clone());
        state
    }

    /// Waits (at most `limit`) for the control connection to find a table's partition key.
    pub(super) async fn partition_key_ready(&self, keyspace: &str, table: &str, limit: Duration) {
        let mut timer = Timer::new(limit);
        std::future::poll_fn(|cx| {
            let asked = matches!(self.partition_key(keyspace, table), KeyColumns::Asked);
            if !asked || Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.key_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// A table changed: its partition key is read again when next needed.
    pub(super) fn forget_partition_keys(&self, change: &SchemaChange) {
        self.partition_keys.borrow_mut().retain(|(ks, _), _| *ks != change.keyspace);
    }

    /// Asks the control connection to wait until every node has the same schema; returns
    /// the check's number, for [`Shared::agreed`].
    pub(super) fn ask_agreement(&self, version: Option<Vec<u8>>) -> u64 {
        let n = self.agreement_asked.get() + 1;
        self.agreement_asked.set(n);
        if self.control.try_send(ControlRequest::SchemaAgreement { ticket: n, version }).is_err() {
            self.set_agreed(n);
        }
        n
    }

    pub(super) fn set_agreed(&self, n: u64) {
        self.agreement_done.set(self.agreement_done.get().max(n));
        for waker in self.agreement_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub(super) fn agreed(&self, n: u64) -> bool {
        self.agreement_done.get() >= n
    }

    pub(super) fn mark_down(&self, node: SocketAddr) {
        self.down.borrow_mut().insert(node, Instant::now() + DOWN_FOR);
    }

    pub(super) fn mark_reported_down(&self, node: SocketAddr) {
        self.down.borrow_mut().insert(node, Instant::now() + REPORTED_DOWN_FOR);
    }

    pub(super) fn mark_up(&self, node: SocketAddr) {
        self.down.borrow_mut().remove(&node);
    }

    pub(super) fn is_up(&self, node: SocketAddr) -> bool {
        self.down.borrow().get(&node).is_none_or(|until| Instant::now() >= *until)
    }

    pub(super) fn request_refresh(&self) {
        let _ = self.control.try_send(ControlRequest::Refresh);
    }

    /// Gives the control connection a session to open with, once.
    pub(super) fn offer_session(&self, session: &Session) {
        if self.control_has_session.get() {
            return;
        }
        let Some(startup) = session.startup.clone() else { return };
        let sent = self.control.try_send(ControlRequest::Session { startup, auth: session.auth.clone() });
        self.control_has_session.set(sent.is_ok());
    }

    /// Where the control connection tries to connect: known local nodes, then the contact points.
    pub(super) fn control_candidates(&self) -> Vec<SocketAddr> {
        let mut out = self.rotation(None);
        append_new(&mut out, self.contact.iter().copied());
        out
    }

    pub(super) fn next_turn(&self) -> usize {
        let t = self.turn.get();
        self.turn.set(t.wrapping_add(1));
        t
    }

    /// Up nodes of the local rack, then of the rest of the local data centre, each list
    /// rotated round robin; `replicas` (node indexes) narrows them to those first.
    pub(super) fn rotation(&self, replicas: Option<&[usize]>) -> Vec<SocketAddr> {
        self.rotation_preferring(replicas, None)
    }

    /// The replicas of a partition (node indexes) in the order [`Shared::rotation`] gives,
    /// except that `affinity`, the replica the client connection's requests went to so far,
    /// goes first among its rack's replicas. Every replica of the list is token-aware;
    /// choosing the same one for a connection's requests keeps them on one node connection,
    /// as a driver connected to that node would send them. Spreading one connection's
    /// requests over all the replicas in turn cost 200 µs per request on a 3-node ring at
    /// RF 3 (each node's threads wake for one request in three), for no gain.
    pub(super) fn replicas_first(&self, replicas: &[usize], affinity: Option<SocketAddr>) -> Vec<SocketAddr> {
        self.rotation_preferring(Some(replicas), affinity)
    }

    /// [`Shared::rotation`], with `prefer` first in its list (rack, or rest of the data
    /// centre) when it is in one.
    fn rotation_preferring(&self, replicas: Option<&[usize]>, prefer: Option<SocketAddr>) -> Vec<SocketAddr> {
        let ring = self.ring.borrow();
        let turn = self.next_turn();
        let (dc, rack) = (&self.local.data_center, &self.local.rack);
        let pick = |same_rack: bool| -> Vec<SocketAddr> {
            let mut list: Vec<SocketAddr> = match replicas {
                Some(replicas) => replicas.iter().filter_map(|&i| ring.nodes.get(i)).collect::<Vec<_>>(),
                None => ring.nodes.iter().collect(),
            }
            .into_iter()
            .filter(|n| &n.data_center == dc && (&n.rack == rack) == same_rack && self.is_up(n.address))
            .map(|n| n.address)
            .collect();
            rotate_preferring(&mut list, turn, prefer);
            list
        };
        let mut out = pick(true);
        out.extend(pick(false));
        out
    }

    /// The Shotover nodes as the system tables show them: this one, and the others.
    pub(super) fn view(&self) -> Rc<View> {
        if let Some(view) = self.view.borrow().as_ref() {
            return view.clone();
        }
        let places: Vec<(&str, &str)> =
            self.shotover.iter().map(|n| (n.data_center.as_str(), n.rack.as_str())).collect();
        let tokens = self.ring.borrow().shotover_tokens(&places);
        let mut nodes: Vec<ShotoverNode> = self.shotover.clone();
        for (node, tokens) in nodes.iter_mut().zip(tokens) {
            node.tokens = tokens;
        }
        let me = nodes.get(self.local_index).cloned().unwrap_or_else(|| self.local.clone());
        let others = nodes.into_iter().enumerate().filter(|(i, _)| *i != self.local_index).map(|(_, n)| n).collect();
        let view = Rc::new((me, others));
        *self.view.borrow_mut() = Some(view.clone());
        view
    }

    /// Waits until the control connection has read the topology, at most `limit`.
    pub(super) async fn ring_ready(&self, limit: Duration) {
        let mut timer = Timer::new(limit);
        std::future::poll_fn(|cx| {
            if self.ring_known.get() || Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.ring_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Rotates `list` left by `turn` (round robin), then puts `prefer` first if it is in it.
fn rotate_preferring(list: &mut [SocketAddr], turn: usize, prefer: Option<SocketAddr>) {
    if !list.is_empty() {
        let len = list.len();
        list.rotate_left(turn % len);
    }
    if let Some(at) = prefer.and_then(|p| list.iter().position(|a| *a == p)) {
        list.swap(0, at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_replica_goes_first_and_the_others_keep_turns() {
        let nodes: Vec<SocketAddr> = (1..=3).map(|i| format!("127.0.0.{i}:9042").parse().unwrap()).collect();
        let order = |turn, prefer: Option<usize>| {
            let mut list = nodes.clone();
            rotate_preferring(&mut list, turn, prefer.map(|i| nodes[i]));
            list.iter().map(|a| a.ip().to_string()).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(order(1, None), "127.0.0.2 127.0.0.3 127.0.0.1");
        assert_eq!(order(1, Some(0)), "127.0.0.1 127.0.0.3 127.0.0.2");
        assert_eq!(order(2, Some(2)), "127.0.0.3 127.0.0.1 127.0.0.2");
        // A preferred node that is no replica changes nothing.
        let mut two = nodes[..2].to_vec();
        rotate_preferring(&mut two, 1, Some(nodes[2]));
        assert_eq!(two, [nodes[1], nodes[0]]);
        rotate_preferring(&mut [], 5, Some(nodes[0]));
    }
}
