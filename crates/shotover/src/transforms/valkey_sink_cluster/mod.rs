//! ValkeySinkCluster: a Valkey Cluster behind one address. Clients that know nothing of
//! clusters see a single node (hiding mode); with `direct_connection`, commands without a key
//! go to that node (handling mode).
//!
//! ```yaml
//! - ValkeySinkCluster:
//!     first_contact_points: ["127.0.0.1:2220", "127.0.0.1:2221"]
//!     connect_timeout_ms: 3000
//! ```
//!
//! How a batch runs: every request is planned into one or more sub-requests, each for the
//! master of its key's slot (multi-key commands are split by slot, node-wide commands go to
//! every master). All sub-requests for a node go out in one write, to all nodes before any
//! reply is read, so the nodes work concurrently. Replies are merged back into one response
//! per request, in request order. `MOVED` updates the slot map and retries; `ASK` retries once
//! with `ASKING`; connection errors drop the connection and refresh the slot map.
//!
//! What runs across the cluster, as Valkey's command table says (read from a node with
//! `COMMAND`, else Valkey 8.0.1's built in; see `plan.rs`):
//! - commands with keys go to the master of their first key's slot, the keys found by the
//!   table's key specifications;
//! - `multi_shard` commands (`MGET`, `MSET`, `DEL`...) are split by slot and their replies
//!   merged; `all_shards` commands (`DBSIZE`, `KEYS`, `FLUSHALL`, `FUNCTION LOAD`, `INFO`...)
//!   go to every master and `all_nodes` ones (`CONFIG SET`, `SCRIPT LOAD`...) to every node,
//!   their replies combined by their response policy (with `direct_connection`: to that node
//!   alone, like every command without a key);
//! - commands without a key (`ECHO`, `CLUSTER`, `AUTH`, `HELLO`, ...) go to the
//!   `direct_connection` node, else to a master;
//! - `SCAN` walks every master in turn: the proxy's cursor holds the node's cursor and the
//!   master's index (masters in address order, at most 256); with `direct_connection` it is
//!   the direct node's own `SCAN`;
//! - transactions (`MULTI`/`EXEC`/`DISCARD`, `WATCH`/`UNWATCH`) run on the one node their keys
//!   live on, one command at a time: a command for another node answers `CROSSSLOT`, and
//!   `EXEC` then answers `EXECABORT` (Valkey Cluster itself wants a transaction's keys in one
//!   slot);
//! - pub/sub runs on connections of the client's own (`pubsub.rs`): `SUBSCRIBE`, `PSUBSCRIBE`
//!   and their unsubscribes on one node (`direct_connection`, else the first master), which
//!   a cluster delivers every `PUBLISH` to; `SSUBSCRIBE` on the master of the shard channel's
//!   slot, following `MOVED`; messages are returned as pushed messages, also while the client
//!   is idle ([`Transform::poll_pushed`]). `MONITOR` runs there too and shows that one node's
//!   commands only. `PUBLISH` and `SPUBLISH` are routed by their channel like keys;
//! - blocking commands (`BLPOP`, `XREAD`, `WAIT`, ...) run on connections of the client's own,
//!   never on shared ones; if the client leaves while one waits, the source drops this
//!   transform and with it those connections, so the node stops waiting for nobody.
//!
//! The code, by job: `route.rs` says which node and which kind of connection a request
//! needs, `plan.rs` splits requests into sub-requests, `send.rs` writes them and reads the
//! replies (redirections included), `merge.rs` makes the replies one response per request
//! (`info.rs` merges INFO reports),
//! `transaction.rs` runs MULTI/EXEC and WATCH, and `pubsub.rs` subscriptions and MONITOR.
//! This file holds the configuration, what
//! the clients of one core share, and the [`Transform`] that ties the steps together.

mod info;
mod merge;
mod plan;
mod pubsub;
mod route;
mod send;
mod transaction;

use crate::chain::{
    BuildContext, ChainError, ChainResult, ChainState, Resolved, Transform, TransformBuilder, TransformConfig,
};
use crate::message::{Message, Protocol};
use crate::observability::metrics::SourceToSink;
use crate::sinks::valkey::ValkeyConnection;
use crate::sinks::valkey_mux::Mux;
use crate::sinks::valkey_slots::{node_tls, SlotMap};
use crate::sinks::{resolve_address, ConnectSettings};
use crate::tls::TlsConnectorConfig;
use anyhow::{anyhow, Context as _, Result};
use async_trait::async_trait;
use bytes::Bytes;
use merge::merge;
use plan::{session_kind, Plan, SessionKind, Sub};
use prometheus::IntCounter;
use pubsub::{is_pubsub_command, PubSub};
use route::{is_stateful, Routes};
use serde::Deserialize;
use shotover_protocols::valkey::command::{request_word, Special};
use shotover_protocols::valkey::commands::CommandTable;
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use transaction::{is_transaction_command, Txn};

/// How long a request waits between tries to reach its slot's master while a node is down.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValkeySinkClusterConfig {
    /// Nodes to ask for the cluster's slot map, in order.
    pub first_contact_points: Vec<String>,
    /// Handling mode: commands without a key go to this node. Also accepted as
    /// `direct_destination`.
    #[serde(default, alias = "direct_destination")]
    pub direct_connection: Option<String>,
    /// Shared (multiplexed) connections per node in each worker core. Default 1. Clients that
    /// change connection state (AUTH, HELLO, SELECT, CLIENT, transactions, blocking
    /// commands) get connections of their own instead.
    #[serde(default = "one")]
    pub connection_count: usize,
    /// Milliseconds to wait for a connection to a node. Default 3000.
    #[serde(default = "crate::sinks::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// TLS to the nodes. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
    /// What `validate` resolved: the addresses, TLS and timeout.
    #[serde(skip)]
    resolved: Resolved<Addresses>,
}

/// The configuration's addresses and connection settings, resolved once at load.
struct Addresses {
    contact: Vec<SocketAddr>,
    direct: Option<SocketAddr>,
    settings: ConnectSettings,
}

fn one() -> usize {
    1
}

impl TransformConfig for ValkeySinkClusterConfig {
    const NAME: &'static str = "ValkeySinkCluster";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey];

    fn validate(&mut self) -> Result<()> {
        if self.first_contact_points.is_empty() {
            return Err(anyhow!("first_contact_points: give at least one node"));
        }
        let contact = (self.first_contact_points.iter().enumerate())
            .map(|(i, address)| resolve_address(address).with_context(|| format!("first_contact_points[{i}]")))
            .collect::<Result<_>>()?;
        let direct = self.direct_connection.as_deref().map(resolve_address).transpose().context("direct_connection")?;
        if self.connection_count == 0 {
            return Err(anyhow!("connection_count: must be at least 1"));
        }
        let settings = ConnectSettings::resolve(self.tls.as_ref(), self.connect_timeout_ms, None)?;
        self.resolved.set(Addresses { contact, direct, settings });
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let resolved = self.resolved.get()?;
        let shared = Rc::new(Shared {
            contact: resolved.contact.clone(),
            direct: resolved.direct,
            timeout: resolved.settings.connect_timeout,
            tls: resolved.settings.tls.clone(),
            map: RefCell::new(SlotMap::default()),
            commands: RefCell::new(None),
            want_commands: Cell::new(true),
            commands_read_at: Cell::new(None),
            connection_count: self.connection_count,
            muxes: RefCell::new(HashMap::new()),
            next_mux: Cell::new(0),
            failed_requests: ctx.metrics.failed_requests.with_label_values(&["ValkeySinkCluster", &ctx.chain_name]),
            source_to_sink: ctx.metrics.source_to_sink("ValkeySinkCluster"),
        });
        Ok(Box::new(move || ValkeySinkCluster {
            shared: shared.clone(),
            conns: HashMap::new(),
            session: Vec::new(),
            txn: None,
            watch_node: None,
            dedicated: false,
            pubsub: PubSub::default(),
            tracking: false,
            scratch: Scratch::default(),
            unsent_batch: None,
        }))
    }
}

/// What the connections of one core share: addresses, TLS and the slot map.
struct Shared {
    contact: Vec<SocketAddr>,
    direct: Option<SocketAddr>,
    timeout: Duration,
    tls: Option<futures_rustls::TlsConnector>,
    map: RefCell<SlotMap>,
    /// The command table read from a node; until then, or if nodes refuse `COMMAND`,
    /// Valkey 8.0.1's built-in one.
    commands: RefCell<Option<CommandTable>>,
    /// Read the command table with the next slot map: at start, and after a reconnect.
    want_commands: Cell<bool>,
    /// When the command table was last read (or refused).
    commands_read_at: Cell<Option<Instant>>,
    /// Shared connections per node.
    connection_count: usize,
    /// Per node: the core's shared, multiplexed connections (up to `connection_count`),
    /// which carry the batches of every client that keeps no state on its connection.
    muxes: RefCell<HashMap<SocketAddr, Vec<Rc<Mux>>>>,
    /// Spreads batches over a node's muxes.
    next_mux: Cell<usize>,
    failed_requests: IntCounter,
    source_to_sink: SourceToSink,
}

impl Shared {
    /// One of the core's shared connections to `node`, round robin.
    fn mux(&self, node: SocketAddr) -> Rc<Mux> {
        let mut muxes = self.muxes.borrow_mut();
        let list = muxes.entry(node).or_default();
        let turn = self.next_mux.get();
        self.next_mux.set(turn.wrapping_add(1));
        if list.len() < self.connection_count {
            let tls = self.tls.as_ref().map(|connector| node_tls(connector, node));
            list.push(Rc::new(Mux::new(node, "cluster node", self.timeout, tls)));
        }
        let at = turn % list.len().max(1);
        match list.get(at).or_else(|| list.first()) {
            Some(mux) => mux.clone(),
            None => Rc::new(Mux::new(node, "cluster node", self.timeout, None)),
        }
    }
}

impl Shared {
    /// Routing over the slot map as it is now.
    fn routes<R>(&self, f: impl FnOnce(&Routes<'_>) -> R) -> R {
        let map = self.map.borrow();
        let read = self.commands.borrow();
        let commands = read.as_ref().unwrap_or_else(|| CommandTable::builtin());
        f(&Routes { map: &map, commands, direct: self.direct, contact: &self.contact })
    }
}

pub struct ValkeySinkCluster {
    shared: Rc<Shared>,
    conns: HashMap<SocketAddr, ValkeyConnection>,
    /// AUTH, HELLO, CLIENT SETNAME and CLIENT TRACKING commands that succeeded (the latest
    /// of each kind), replayed on every new node connection so that this client's
    /// credentials, protocol, name and tracking apply on every node it uses, and only for it.
    session: Vec<(SessionKind, Bytes)>,
    /// An open MULTI: commands go, in order, to the one node its keys live on.
    txn: Option<Txn>,
    /// The node of the keys under WATCH; a following MULTI must use it.
    watch_node: Option<SocketAddr>,
    /// Once true, this client uses connections of its own instead of the core's shared ones.
    dedicated: bool,
    /// The client's pub/sub and MONITOR connections.
    pubsub: PubSub,
    /// CLIENT TRACKING is on: its invalidations are read from the client's own connections
    /// while it is idle.
    tracking: bool,
    /// The lists of the last batch, emptied, for the next.
    scratch: Scratch,
    /// When the first request of the batch in hand was read from the client, until
    /// [`ValkeySinkCluster::run`] has written the batch (for the source-to-sink latency).
    unsent_batch: Option<Instant>,
}

impl ValkeySinkCluster {
    /// Splits one request into sub-requests (appended to `subs`); see [`Routes::plan`].
    fn plan(&self, request: &Message, subs: &mut Vec<Sub>) -> Plan {
        self.shared.routes(|routes| routes.plan(request, subs))
    }

    fn default_node(&self) -> Option<SocketAddr> {
        self.shared.routes(|routes| routes.default_node())
    }

    /// The node a command's first key lives on, if it has one.
    fn key_node(&self, request: &Message) -> Option<SocketAddr> {
        self.shared.routes(|routes| routes.key_node(request))
    }
}

#[async_trait(?Send)]
impl Transform for ValkeySinkCluster {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        if let Some(reason) = self.pubsub.take_lost() {
            // The batch in hand is not written; the subscriptions cannot be restored.
            return Err(ChainError::upstream(reason).retry_safe().close_connection());
        }
        let requests = std::mem::take(&mut state.requests);
        // Messages pushed while the client was idle go first.
        let mut responses = self.pubsub.take_pushed();
        if requests.is_empty() {
            return Ok(responses);
        }
        if self.shared.map.borrow().is_empty() || self.shared.map.borrow().is_stale() {
            self.refresh_map().await;
        }
        if !self.pubsub.active() && !requests.iter().any(is_pubsub_command) {
            let replies = self.batch(requests).await;
            // Pushed before these replies on the client's own connections: they go first.
            responses.extend(self.pubsub.take_pushed());
            responses.extend(replies);
            return Ok(responses);
        }
        // Requests for the pub/sub connections run one at a time, the others in batches
        // between them.
        let mut batch = Vec::new();
        for request in requests {
            match self.pubsub_route(&request) {
                None => {
                    if request.valkey_request().is_some_and(|v| v.special == Special::Reset) {
                        self.pubsub.reset();
                    }
                    batch.push(request);
                }
                Some(route) => {
                    if !batch.is_empty() {
                        responses.extend(self.batch(std::mem::take(&mut batch)).await);
                    }
                    self.pubsub_step(&request, route, &mut responses).await;
                }
            }
        }
        if !batch.is_empty() {
            responses.extend(self.batch(batch).await);
        }
        Ok(responses)
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let own = self.poll_own_pushes(cx);
        match self.pubsub.poll_pushed(cx) {
            Poll::Pending if own => Poll::Ready(()),
            other => other,
        }
    }
}

impl ValkeySinkCluster {
    /// Runs a batch of requests that need no pub/sub connection. A session command (AUTH,
    /// HELLO, CLIENT SETNAME/TRACKING) ends a part of the batch: the requests after it go out
    /// once the session applies to every connection they use.
    async fn batch(&mut self, mut requests: Vec<Message>) -> Vec<Message> {
        let mut responses = Vec::with_capacity(requests.len());
        loop {
            let is_session = |r: &Message| {
                r.valkey_request()
                    .is_some_and(|v| matches!(v.special, Special::Auth | Special::Hello | Special::Client))
                    && r.raw().is_some_and(|raw| session_kind(raw).is_some())
            };
            let cut = requests.iter().position(is_session).map(|at| at + 1).filter(|end| *end < requests.len());
            let rest = cut.map(|end| requests.split_off(end));
            responses.extend(self.batch_part(requests).await);
            match rest {
                Some(rest) => requests = rest,
                None => return responses,
            }
        }
    }

    /// Drops the client's connections to the nodes `gone` names. With tracking on, those
    /// nodes forget what they tracked for the client, so the client is told to forget its
    /// whole cache (RESP3 `invalidate` with null, as Valkey says it after a flush).
    pub(super) fn drop_conns(&mut self, gone: impl Fn(&SocketAddr) -> bool) {
        let before = self.conns.len();
        self.conns.retain(|node, _| !gone(node));
        if self.tracking && self.conns.len() < before {
            let flush = Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
            self.pubsub.push(Message::pushed(flush, Protocol::Valkey, Instant::now()));
        }
    }

    /// A node could not be reached: a master may have failed, and the cluster may be
    /// promoting a replica. What never left the proxy is sent again to its slot's master as
    /// the cluster names it, every [`RETRY_PAUSE`], until it is answered or
    /// `connect_timeout_ms` has passed. So only requests that were in flight on the failed
    /// master's connection fail (with `-ERR`): the others wait out the failover.
    async fn retry_unsent(&mut self, subs: &mut [Sub]) {
        let deadline = Instant::now() + self.shared.timeout;
        let mut first = true;
        loop {
            if !first {
                crate::rt::sleep(RETRY_PAUSE).await;
            }
            first = false;
            self.refresh_map().await;
            let retry: Vec<usize> = (0..subs.len())
                .filter(|&i| {
                    let Some(sub) = subs.get_mut(i) else { return false };
                    let current = sub.slot.and_then(|s| self.shared.map.borrow().master_of(s));
                    match current {
                        Some(node) if sub.reply.is_err() && !sub.sent => {
                            sub.node = node;
                            true
                        }
                        _ => false,
                    }
                })
                .collect();
            if retry.is_empty() || Instant::now() >= deadline {
                return;
            }
            self.run(subs, &retry).await;
        }
    }

    async fn batch_part(&mut self, requests: Vec<Message>) -> Vec<Message> {
        if self.txn.is_some() || self.watch_node.is_some() || requests.iter().any(is_transaction_command) {
            self.dedicated = true;
            // Transactions run one command at a time, pinned to the node of their keys.
            let mut responses = Vec::with_capacity(requests.len());
            for request in &requests {
                responses.push(self.transaction_step(request).await);
            }
            return responses;
        }
        let Scratch { mut subs, mut plans, mut pending } = std::mem::take(&mut self.scratch);
        plans.extend(requests.iter().map(|r| self.plan(r, &mut subs)));
        pending.extend((0..subs.len()).filter(|&i| subs.get(i).is_some_and(|s| s.node.port() != 0)));
        if !self.dedicated && requests.iter().any(is_stateful) {
            self.dedicated = true;
        }
        // Nothing to send (the proxy answers every request itself): nothing to observe.
        self.unsent_batch = requests.first().and_then(Message::received_at).filter(|_| !pending.is_empty());
        let broken = self.run(&mut subs, &pending).await;
        let moved = self.follow_redirections(&mut subs).await;
        if broken {
            // The node may have been replaced by another version: read its table again (at
            // most every 30 s, not on every failed request of an outage).
            let read_at = self.shared.commands_read_at.get();
            if read_at.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                self.shared.want_commands.set(true);
            }
            self.retry_unsent(&mut subs).await;
        }
        if moved {
            self.refresh_map().await;
        }
        let mut responses = Vec::with_capacity(requests.len());
        for (request, plan) in requests.iter().zip(&plans) {
            let response = merge(request, plan, &mut subs, &self.shared.failed_requests);
            // Only a session command's plan says so: the others are not parsed again.
            let kind = request.raw().filter(|_| plan.session).and_then(|raw| session_kind(raw));
            if let (Some(kind), Some(raw)) = (kind, request.raw()) {
                if response.raw().is_some_and(|r| !is_error(r)) {
                    self.session.retain(|(k, _)| *k != kind);
                    self.session.push((kind, raw.clone()));
                    // Other nodes learn the new session when they reconnect.
                    let keep = subs.get(plan.subs.clone()).and_then(|s| s.first()).map(|s| s.node);
                    self.drop_conns(|node| Some(*node) != keep);
                    if kind == SessionKind::Tracking {
                        self.tracking = request_word(raw, 2).is_some_and(|on| on.eq_ignore_ascii_case(b"ON"));
                    }
                }
            }
            if request.valkey_request().is_some_and(|v| v.special == Special::Reset)
                && response.raw().is_some_and(|r| !is_error(r))
            {
                // RESET logs the connection out and ends tracking: the session is not
                // replayed any more, and the connections that have it close.
                self.session.clear();
                self.tracking = false;
                let keep = subs.get(plan.subs.clone()).and_then(|s| s.first()).map(|s| s.node);
                self.drop_conns(|node| Some(*node) != keep);
            }
            responses.push(response);
        }
        self.scratch.keep(subs, plans, pending);
        responses
    }
}

/// The lists a batch is planned into, kept (emptied) from one batch of a client to the next:
/// most clients send batches of one size, which then cost no allocation.
#[derive(Default)]
struct Scratch {
    subs: Vec<Sub>,
    plans: Vec<Plan>,
    pending: Vec<usize>,
}

impl Scratch {
    /// Lists that grew past this many entries are let go, so that one huge batch does not
    /// hold memory for the rest of the connection's life.
    const KEEP: usize = 256;

    fn keep(&mut self, mut subs: Vec<Sub>, mut plans: Vec<Plan>, mut pending: Vec<usize>) {
        if subs.capacity() <= Self::KEEP && plans.capacity() <= Self::KEEP && pending.capacity() <= Self::KEEP {
            subs.clear();
            plans.clear();
            pending.clear();
            *self = Scratch { subs, plans, pending };
        }
    }
}

/// What the tests of every file share: a slot map of three masters, and requests.
#[cfg(test)]
mod fixtures {
    use super::plan::command;
    use super::Routes;
    use crate::message::{Message, Protocol};
    use crate::sinks::valkey_slots::SlotMap;
    use shotover_protocols::valkey::commands::CommandTable;
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Instant;

    const fn node(last: u8) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), 7000))
    }

    /// Master of slots 0-5460: `hello` (slot 866), `bar` (5061).
    pub(super) const A: SocketAddr = node(1);
    /// Master of slots 5461-10922: `c` (7365).
    pub(super) const B: SocketAddr = node(2);
    /// Master of slots 10923-16383: `foo` and `{foo}x` (12182), `a` (15495).
    pub(super) const C: SocketAddr = node(3);
    /// Not a master: a `direct_connection` or a contact point.
    pub(super) const D: SocketAddr = node(4);

    pub(super) fn three_masters() -> SlotMap {
        SlotMap::from_ranges(&[(0, 5460, A), (5461, 10922, B), (10923, 16383, C)])
    }

    /// Routing over `map`, without `direct_connection` or contact points.
    pub(super) fn routes(map: &SlotMap) -> Routes<'_> {
        Routes { map, commands: table(), direct: None, contact: &[] }
    }

    /// Valkey 8.0.1's command table.
    pub(super) fn table() -> &'static CommandTable {
        CommandTable::builtin()
    }

    /// A request as a client sends it: an array of bulk strings.
    pub(super) fn request(parts: &[&[u8]]) -> Message {
        Message::from_bytes(command(parts), Protocol::Valkey, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Result<ValkeySinkClusterConfig, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn config_defaults_and_direct_destination_alias() {
        let mut c =
            config("first_contact_points: [\"127.0.0.1:2220\"]\ndirect_destination: \"127.0.0.1:2221\"\n").unwrap();
        assert_eq!(c.first_contact_points, vec!["127.0.0.1:2220".to_string()]);
        assert_eq!(c.direct_connection.as_deref(), Some("127.0.0.1:2221"));
        assert_eq!((c.connection_count, c.connect_timeout_ms), (1, 3000));
        assert!(c.tls.is_none());
        c.validate().unwrap();
        let resolved = c.resolved.get().unwrap();
        assert_eq!(resolved.contact, vec!["127.0.0.1:2220".parse::<SocketAddr>().unwrap()]);
        assert_eq!(resolved.direct, Some("127.0.0.1:2221".parse().unwrap()));
        assert_eq!(resolved.settings.connect_timeout, Duration::from_millis(3000));
        assert_eq!(
            (ValkeySinkClusterConfig::NAME, ValkeySinkClusterConfig::TERMINATING, ValkeySinkClusterConfig::PROTOCOLS),
            ("ValkeySinkCluster", true, &[Protocol::Valkey][..])
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let error = |yaml: &str| format!("{:#}", config(yaml).unwrap().validate().unwrap_err());
        assert_eq!(error("first_contact_points: []"), "first_contact_points: give at least one node");
        assert_eq!(
            error("first_contact_points: [\"127.0.0.1:2220\"]\nconnection_count: 0"),
            "connection_count: must be at least 1"
        );
        assert!(
            error("first_contact_points: [\"127.0.0.1:2220\", \"no port\"]").starts_with("first_contact_points[1]: ")
        );
        assert!(error("first_contact_points: [\"127.0.0.1:2220\"]\ndirect_connection: \"x\"")
            .starts_with("direct_connection: "));
        assert!(
            config("first_contact_points: [\"127.0.0.1:2220\"]\nread_timeout: 5").is_err(),
            "unknown fields are refused"
        );
    }
}
