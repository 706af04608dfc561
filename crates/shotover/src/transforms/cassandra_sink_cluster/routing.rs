//! Where a request goes: the home node, the replicas of its partition (token-aware, the
//! connection's replica first), or any node of the local rack and data centre in turn.

use super::*;

/// Requests in flight on a connection's replica below which its routed requests all go to
/// that replica (see [`Shared::replicas_first`]). With more, the connection keeps the node
/// busy anyway, and its requests are shared out over every replica in turn: one client
/// connection carrying a heavy concurrent load does not load one coordinator alone.
const AFFINITY_MAX_IN_FLIGHT: usize = 8;

/// Appends the nodes of `more` not in `list` yet.
pub(super) fn append_new(list: &mut Vec<SocketAddr>, more: impl IntoIterator<Item = SocketAddr>) {
    for node in more {
        if !list.contains(&node) {
            list.push(node);
        }
    }
}

/// Where a request goes.
pub(super) enum Target {
    Home,
    /// Replicas first (node indexes of the ring), then round robin.
    Replicas(Vec<usize>),
    Any,
}

impl CassandraSinkCluster {
    /// Nodes to try for `target`, in order.
    pub(super) fn candidates(&self, target: &Target) -> Vec<SocketAddr> {
        let shared = &self.shared;
        let before_topology = || -> Vec<SocketAddr> {
            let mut out: Vec<SocketAddr> = self.home.into_iter().collect();
            out.extend(shared.contact.iter().filter(|a| Some(**a) != self.home && shared.is_up(**a)));
            out
        };
        match target {
            Target::Home => match self.home {
                Some(home) => vec![home],
                None if shared.ring_known.get() => {
                    let mut out = shared.rotation(None);
                    append_new(&mut out, shared.contact.iter().copied());
                    out
                }
                None => before_topology(),
            },
            _ if self.session.startup.is_none() => self.candidates(&Target::Home),
            _ if !shared.ring_known.get() => before_topology(),
            Target::Replicas(replicas) => {
                // A connection with few requests in flight keeps them on its replica; a busier
                // one spreads them over every replica in turn, to share the load.
                let lightly_loaded =
                    |a: &SocketAddr| self.conns.get(a).is_none_or(|c| c.in_flight() < AFFINITY_MAX_IN_FLIGHT);
                let mut out = shared.replicas_first(replicas, self.affinity.filter(lightly_loaded));
                append_new(&mut out, shared.rotation(None));
                out
            }
            Target::Any => shared.rotation(None),
        }
    }

    /// The prepared statement an EXECUTE (or a BATCH's first statement) runs, and where its
    /// partition's replicas are.
    pub(super) fn route_prepared(&self, request: &mut Message) -> (Option<Bytes>, Target) {
        let Ok(crate::message::Frame::Cassandra(frame)) = request.frame() else { return (None, Target::Any) };
        let (id, values) = match &frame.body {
            CassandraBody::Execute(e) => (e.id.clone(), e.params.values.as_ref()),
            CassandraBody::Batch(b) => match b.statements.first() {
                Some(s) => match &s.query {
                    BatchQuery::Prepared(id) => (id.clone(), Some(&s.values)),
                    BatchQuery::Query(_) => return (None, Target::Any),
                },
                None => return (None, Target::Any),
            },
            _ => return (None, Target::Any),
        };
        let target = match (self.shared.prepared.borrow().get(&id), values) {
            (Some(info), Some(Values::Positional(values))) => self.replicas_of(info, values),
            _ => Target::Any,
        };
        (Some(id), target)
    }

    /// An EXECUTE of a v3 statement whose partition key the control connection is still
    /// looking up waits for it (once per table and core), so that even the first is routed.
    pub(super) async fn await_partition_key(&self, request: &mut Message) {
        let Ok(crate::message::Frame::Cassandra(frame)) = request.frame() else { return };
        let CassandraBody::Execute(e) = &frame.body else { return };
        let info = self.shared.prepared.borrow().get(&e.id).cloned();
        let Some(info) = info.filter(|i| i.pk_indexes.is_empty()) else { return };
        let Some((keyspace, table)) = &info.table else { return };
        self.shared.partition_key_ready(keyspace, table, self.shared.connect_timeout).await;
    }

    fn replicas_of(&self, info: &PreparedInfo, values: &[Value]) -> Target {
        let Some((keyspace, table)) = &info.table else { return Target::Any };
        let mut indexes = info.pk_indexes.clone();
        if indexes.is_empty() {
            // v3: the PREPARED answer has no partition key indexes; the schema has them.
            let KeyColumns::Known(columns) = self.shared.partition_key(keyspace, table) else { return Target::Any };
            match columns.iter().map(|c| info.bind_names.iter().position(|n| n == c)).collect() {
                Some(found) => indexes = found,
                None => return Target::Any,
            }
        }
        let mut components = Vec::with_capacity(indexes.len());
        for i in indexes {
            match values.get(i) {
                Some(Value::Bytes(b)) => components.push(&b[..]),
                _ => return Target::Any,
            }
        }
        let Some(key) = token::routing_key(&components) else { return Target::Any };
        let ring = self.shared.ring.borrow();
        match ring.replicas(keyspace, token::token(&key)) {
            Some(replicas) => Target::Replicas(replicas.to_vec()),
            None => Target::Any,
        }
    }
}
