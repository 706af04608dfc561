//! CassandraSinkCluster: routes each request to a node of a Cassandra cluster, in the proxy's
//! own data centre and preferably its rack, token-aware for prepared statements, and makes
//! the proxy look like one node of a cluster made of Shotover nodes.
//!
//! ```yaml
//! - CassandraSinkCluster:
//!     first_contact_points: ["172.16.1.2:9042", "172.16.1.3:9042"]
//!     local_shotover_host_id: "2dd022d6-2937-4754-89d6-02d2933a8f7a"
//!     shotover_nodes:
//!       - address: "127.0.0.1:9042"
//!         data_center: "dc1"
//!         rack: "rack1"
//!         host_id: "2dd022d6-2937-4754-89d6-02d2933a8f7a"
//!     connect_timeout_ms: 3000
//!     # read_timeout: 60
//!     # tls: {...}
//! ```
//!
//! - [`topology`]: the ring and each keyspace's replicas in the local data centre.
//! - [`control`]: the core's control connection, which keeps the ring current.
//! - [`node`]: a client's connection to one node, with stream ids of its own.
//! - [`system`]: the rewritten `system.local` and `system.peers(_v2)` answers.
//!
//! Each client connection has a *home* node, which gets its handshake, REGISTER and the
//! system-table queries; other requests go to the replicas of their partition (prepared
//! statements whose partition key is bound) or round robin over the local rack's nodes, then
//! the data centre's. A connection to another node replays the client's session first:
//! STARTUP, credentials and the keyspace of the last USE.
//!
//! Errors, as the guide gives them: a request sent to a node that then fails gets a Server
//! error (only the client knows whether to retry it); a request no node can take gets
//! Overloaded; a node that cannot be reached is skipped for the next one; Cassandra's own
//! errors pass through. UNPREPARED from a node that has not seen a statement is answered by
//! preparing it there and sending the request again, unseen by the client.

mod control;
pub mod node;
pub mod system;
pub mod topology;

use crate::chain::{
    BuildContext, ChainError, ChainResult, ChainState, Resolved, Transform, TransformBuilder, TransformConfig,
};
use crate::message::{Message, MessageId, Protocol, ProxyError};
use crate::rt::local_channel::{self, Sender};
use crate::rt::Timer;
use crate::sinks::cassandra::CassandraConnection;
use crate::sinks::{resolve_address, ConnectSettings, UpstreamTls};
use crate::tls::TlsConnectorConfig;
use anyhow::{anyhow, bail, Context as _, Result};
use async_trait::async_trait;
use bytes::Bytes;
use control::ControlRequest;
use node::{ClientRequest, Kind, NodeConn, Purpose};
use prometheus::IntCounter;
use serde::Deserialize;
use shotover_protocols::cassandra::classify::query_text;
use shotover_protocols::cassandra::frame::{CassandraBody, CassandraFrame};
use shotover_protocols::cassandra::header;
use shotover_protocols::cassandra::request::{BatchQuery, Prepare, Query, QueryParams, Value, Values};
use shotover_protocols::cassandra::response::SchemaChange;
use shotover_protocols::cassandra::result::{Prepared, ResultBody};
use shotover_protocols::cassandra::{token, Compression, Consistency, ErrorCode, Opcode, Version};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use system::{ShotoverNode, SystemQuery, SystemTable};
use topology::Ring;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraSinkClusterConfig {
    /// Nodes to open the control connection to, tried in order.
    pub first_contact_points: Vec<String>,
    /// Every Shotover node in front of the cluster, this one included.
    pub shotover_nodes: Vec<ShotoverNodeConfig>,
    /// The `host_id` of this proxy's entry in `shotover_nodes`.
    pub local_shotover_host_id: String,
    /// Milliseconds to wait for a connection to a node before trying the next. Default 3000.
    #[serde(default = "crate::sinks::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Seconds a request may wait for its answer before the client connection is closed.
    /// Default: no limit.
    #[serde(default)]
    pub read_timeout: Option<u64>,
    /// TLS to the nodes. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
    #[serde(skip)]
    resolved: Resolved<Settings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShotoverNodeConfig {
    pub address: String,
    pub data_center: String,
    pub rack: String,
    pub host_id: String,
}

/// The configuration, resolved once at load.
struct Settings {
    contact: Vec<SocketAddr>,
    /// Every Shotover node, in configuration order.
    shotover: Vec<ShotoverNode>,
    local: usize,
    connect: ConnectSettings,
}

/// Parses a UUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TransformConfig for CassandraSinkClusterConfig {
    const NAME: &'static str = "CassandraSinkCluster";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra];

    fn validate(&mut self) -> Result<()> {
        if self.first_contact_points.is_empty() {
            bail!("first_contact_points: give at least one node");
        }
        let contact = (self.first_contact_points.iter().enumerate())
            .map(|(i, address)| resolve_address(address).with_context(|| format!("first_contact_points[{i}]")))
            .collect::<Result<_>>()?;
        if self.shotover_nodes.is_empty() {
            bail!("shotover_nodes: give at least this Shotover node");
        }
        let mut shotover = Vec::with_capacity(self.shotover_nodes.len());
        for (i, node) in self.shotover_nodes.iter().enumerate() {
            let address = resolve_address(&node.address).with_context(|| format!("shotover_nodes[{i}].address"))?;
            let host_id = parse_uuid(&node.host_id).ok_or_else(|| {
                anyhow!(
                    "shotover_nodes[{i}].host_id: {:?} is not a UUID (like 2dd022d6-2937-4754-89d6-02d2933a8f7a)",
                    node.host_id
                )
            })?;
            if shotover.iter().any(|n: &ShotoverNode| n.host_id == host_id) {
                bail!("shotover_nodes[{i}].host_id: {} is given to another Shotover node too", node.host_id);
            }
            shotover.push(ShotoverNode {
                address,
                data_center: node.data_center.clone(),
                rack: node.rack.clone(),
                host_id,
                tokens: Vec::new(),
            });
        }
        let local_id = parse_uuid(&self.local_shotover_host_id)
            .ok_or_else(|| anyhow!("local_shotover_host_id: {:?} is not a UUID", self.local_shotover_host_id))?;
        let local = shotover.iter().position(|n| n.host_id == local_id).ok_or_else(|| {
            anyhow!(
                "local_shotover_host_id: {} is not the host_id of any entry of shotover_nodes",
                self.local_shotover_host_id
            )
        })?;
        let connect = ConnectSettings::resolve(self.tls.as_ref(), self.connect_timeout_ms, self.read_timeout)?;
        self.resolved.set(Settings { contact, shotover, local, connect });
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let settings = self.resolved.get()?;
        let (control_tx, control_rx) = local_channel::bounded(64);
        let local = settings.shotover.get(settings.local).cloned().ok_or_else(|| anyhow!("no local Shotover node"))?;
        let shared = Rc::new(Shared {
            contact: settings.contact.clone(),
            local,
            shotover: settings.shotover.clone(),
            local_index: settings.local,
            connect_timeout: settings.connect.connect_timeout,
            read_timeout: settings.connect.read_timeout,
            tls: settings.connect.tls.clone(),
            ring: RefCell::new(Rc::new(Ring::default())),
            ring_known: Cell::new(false),
            ring_waiters: RefCell::new(Vec::new()),
            view: RefCell::new(None),
            down: RefCell::new(HashMap::new()),
            control: control_tx,
            control_has_session: Cell::new(false),
            prepared: RefCell::new(HashMap::new()),
            partition_keys: RefCell::new(HashMap::new()),
            key_waiters: RefCell::new(Vec::new()),
            agreement_asked: Cell::new(0),
            agreement_done: Cell::new(0),
            agreement_waiters: RefCell::new(Vec::new()),
            turn: Cell::new(0),
            failed_requests: ctx.metrics.failed_requests.with_label_values(&[Self::NAME, &ctx.chain_name]),
        });
        crate::rt::spawn_local(control::run(Rc::downgrade(&shared), control_rx)).detach();
        Ok(Box::new(move || CassandraSinkCluster::new(shared.clone())))
    }
}

/// What a prepared statement's PREPARED answer told.
struct PreparedInfo {
    query: Rc<str>,
    /// The keyspace it was prepared in (v5 PREPARE), replayed with it.
    keyspace: Option<String>,
    /// The keyspace and table of its bind markers.
    table: Option<(String, String)>,
    /// Which bind markers make up the partition key (empty when unknown).
    pk_indexes: Vec<usize>,
    /// The bind markers' names, to find the partition key by name (v3).
    bind_names: Vec<String>,
    /// A SELECT on a rewritten system table, with the names of its result columns.
    system: Option<(Rc<SystemQuery>, Rc<[String]>)>,
}

/// This Shotover node and the others, as the system tables show them.
type View = (ShotoverNode, Vec<ShotoverNode>);

/// The partition key columns of a table, as the control connection found them.
#[derive(Clone)]
enum KeyColumns {
    Asked,
    Known(Vec<String>),
    Unknown,
}

/// How long a node that failed is skipped before it is tried again.
const DOWN_FOR: Duration = Duration::from_secs(5);
/// How long a node Cassandra reported DOWN is skipped (unless it reports it UP sooner).
const REPORTED_DOWN_FOR: Duration = Duration::from_secs(60);

/// What the client connections of one core share.
pub struct Shared {
    contact: Vec<SocketAddr>,
    local: ShotoverNode,
    shotover: Vec<ShotoverNode>,
    local_index: usize,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    tls: Option<futures_rustls::TlsConnector>,
    ring: RefCell<Rc<Ring>>,
    /// True once the control connection has read the topology.
    ring_known: Cell<bool>,
    ring_waiters: RefCell<Vec<Waker>>,
    /// The Shotover nodes as the system tables show them, for the current ring.
    view: RefCell<Option<Rc<View>>>,
    /// Nodes skipped until the given time.
    down: RefCell<HashMap<SocketAddr, Instant>>,
    control: Sender<ControlRequest>,
    control_has_session: Cell<bool>,
    /// By statement id (the same on every node).
    prepared: RefCell<HashMap<Bytes, Rc<PreparedInfo>>>,
    /// Partition key columns by keyspace and table, for v3 statements.
    partition_keys: RefCell<HashMap<(String, String), KeyColumns>>,
    key_waiters: RefCell<Vec<Waker>>,
    /// Schema agreement checks asked for, and done (the last one asked that is done).
    agreement_asked: Cell<u64>,
    agreement_done: Cell<u64>,
    agreement_waiters: RefCell<Vec<Waker>>,
    /// Round robin position.
    turn: Cell<usize>,
    failed_requests: IntCounter,
}

impl Shared {
    fn tls_for(&self, node: SocketAddr) -> Option<UpstreamTls> {
        self.tls.as_ref().map(|connector| crate::sinks::valkey_slots::node_tls(connector, node))
    }

    fn set_ring(&self, ring: Ring) {
        *self.ring.borrow_mut() = Rc::new(ring);
        *self.view.borrow_mut() = None;
        self.ring_known.set(true);
        for waker in self.ring_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn set_partition_key(&self, keyspace: String, table: String, key: Vec<String>) {
        let key = if key.is_empty() { KeyColumns::Unknown } else { KeyColumns::Known(key) };
        self.partition_keys.borrow_mut().insert((keyspace, table), key);
        for waker in self.key_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// The partition key columns of a table (v3 PREPARED answers lack them): asks the
    /// control connection the first time.
    fn partition_key(&self, keyspace: &str, table: &str) -> KeyColumns {
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
    async fn partition_key_ready(&self, keyspace: &str, table: &str, limit: Duration) {
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
    fn forget_partition_keys(&self, change: &SchemaChange) {
        self.partition_keys.borrow_mut().retain(|(ks, _), _| *ks != change.keyspace);
    }

    /// Asks the control connection to wait until every node has the same schema; returns
    /// the check's number, for [`Shared::agreed`].
    fn ask_agreement(&self) -> u64 {
        let n = self.agreement_asked.get() + 1;
        self.agreement_asked.set(n);
        if self.control.try_send(ControlRequest::SchemaAgreement).is_err() {
            self.set_agreed(n);
        }
        n
    }

    fn set_agreed(&self, n: u64) {
        self.agreement_done.set(self.agreement_done.get().max(n));
        for waker in self.agreement_waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    fn agreed(&self, n: u64) -> bool {
        self.agreement_done.get() >= n
    }

    fn mark_down(&self, node: SocketAddr) {
        self.down.borrow_mut().insert(node, Instant::now() + DOWN_FOR);
    }

    fn mark_reported_down(&self, node: SocketAddr) {
        self.down.borrow_mut().insert(node, Instant::now() + REPORTED_DOWN_FOR);
    }

    fn mark_up(&self, node: SocketAddr) {
        self.down.borrow_mut().remove(&node);
    }

    fn is_up(&self, node: SocketAddr) -> bool {
        self.down.borrow().get(&node).is_none_or(|until| Instant::now() >= *until)
    }

    fn request_refresh(&self) {
        let _ = self.control.try_send(ControlRequest::Refresh);
    }

    /// Gives the control connection a session to open with, once.
    fn offer_session(&self, session: &Session) {
        if self.control_has_session.get() {
            return;
        }
        let Some(startup) = session.startup.clone() else { return };
        let sent = self.control.try_send(ControlRequest::Session { startup, auth: session.auth.clone() });
        self.control_has_session.set(sent.is_ok());
    }

    /// Where the control connection tries to connect: known local nodes, then the contact points.
    fn control_candidates(&self) -> Vec<SocketAddr> {
        let mut out = self.rotation(None);
        append_new(&mut out, self.contact.iter().copied());
        out
    }

    fn next_turn(&self) -> usize {
        let t = self.turn.get();
        self.turn.set(t.wrapping_add(1));
        t
    }

    /// Up nodes of the local rack, then of the rest of the local data centre, each list
    /// rotated round robin; `replicas` (node indexes) narrows them to those first.
    fn rotation(&self, replicas: Option<&[usize]>) -> Vec<SocketAddr> {
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
            if !list.is_empty() {
                let len = list.len();
                list.rotate_left(turn % len);
            }
            list
        };
        let mut out = pick(true);
        out.extend(pick(false));
        out
    }

    /// The Shotover nodes as the system tables show them: this one, and the others.
    fn view(&self) -> Rc<View> {
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
    async fn ring_ready(&self, limit: Duration) {
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

/// True for a RESULT of kind Schema_change (5).
fn is_schema_change(frame: &Bytes, compression: Compression) -> bool {
    let plain = header::frame_flags(frame).is_ok_and(|f| f == 0);
    if plain {
        return frame.get(header::HEADER_LEN..header::HEADER_LEN + 4) == Some(&[0, 0, 0, 5]);
    }
    matches!(
        CassandraFrame::parse(frame, compression).map(|f| f.body),
        Ok(CassandraBody::Result(ResultBody::SchemaChange(_)))
    )
}

/// Appends the nodes of `more` not in `list` yet.
fn append_new(list: &mut Vec<SocketAddr>, more: impl IntoIterator<Item = SocketAddr>) {
    for node in more {
        if !list.contains(&node) {
            list.push(node);
        }
    }
}

/// What a new node connection replays to stand where the client's session stands.
#[derive(Default)]
struct Session {
    startup: Option<Bytes>,
    /// AUTH_RESPONSEs sent until authentication succeeded.
    auth: Vec<Bytes>,
    authenticated: bool,
    register: Option<Bytes>,
    keyspace: Option<String>,
}

impl Session {
    fn version(&self) -> Version {
        self.startup.as_deref().and_then(|s| header::version(s).ok()).unwrap_or(Version::V4)
    }
}

/// Where a request goes.
enum Target {
    Home,
    /// Replicas first (node indexes of the ring), then round robin.
    Replicas(Vec<usize>),
    Any,
}

/// The stream id of requests replayed on a new connection (the connection is not in use yet).
const REPLAY_STREAM: i16 = 0;

pub struct CassandraSinkCluster {
    shared: Rc<Shared>,
    conns: HashMap<SocketAddr, NodeConn>,
    home: Option<SocketAddr>,
    session: Session,
    ready: Vec<Message>,
    /// Fires at the read timeout of the oldest request in flight.
    timer: Option<Timer>,
    /// The node's own `system.local` row, by column, from the last such answer.
    local_row: Vec<(String, Option<Bytes>)>,
    /// Schema change answers held until every node has the new schema, so that the
    /// client's next request finds it whichever node it goes to.
    parked: Vec<Parked>,
    parked_timer: Option<Timer>,
}

struct Parked {
    request: ClientRequest,
    frame: Bytes,
    compression: Compression,
    agreement: u64,
    until: Instant,
}

/// The longest a schema change answer waits for the nodes to agree.
const AGREEMENT_WAIT: Duration = Duration::from_secs(10);

impl CassandraSinkCluster {
    fn new(shared: Rc<Shared>) -> Self {
        CassandraSinkCluster {
            shared,
            conns: HashMap::new(),
            home: None,
            session: Session::default(),
            ready: Vec::new(),
            timer: None,
            local_row: Vec::new(),
            parked: Vec::new(),
            parked_timer: None,
        }
    }

    /// A frame of the proxy's own, in the client's protocol version.
    fn own_frame(&self, body: CassandraBody) -> Option<Bytes> {
        let frame = CassandraFrame {
            version: self.session.version(),
            response: false,
            flags: 0,
            stream_id: REPLAY_STREAM,
            tracing_id: None,
            warnings: Vec::new(),
            custom_payload: None,
            body,
        };
        frame.encode().ok().map(Bytes::from)
    }

    fn use_frame(&self, keyspace: &str) -> Option<Bytes> {
        self.own_frame(CassandraBody::Query(Query {
            query: format!("USE \"{}\"", keyspace.replace('"', "\"\"")),
            params: QueryParams::new(Consistency::One),
        }))
    }

    /// Opens a connection to `node` and replays the session on it.
    async fn open(&self, node: SocketAddr, home: bool) -> std::io::Result<NodeConn> {
        let shared = &self.shared;
        let tls = shared.tls_for(node);
        let mut conn = CassandraConnection::connect(node, shared.connect_timeout, tls.as_ref()).await?;
        let Some(startup) = self.session.startup.clone() else { return Ok(NodeConn::new(conn)) };
        let register = if home { self.session.register.clone() } else { None };
        let use_ks = self.session.keyspace.as_deref().and_then(|ks| self.use_frame(ks));
        let mut frames = Vec::new();
        for request in std::iter::once(startup).chain(self.session.auth.clone()).chain(register).chain(use_ks) {
            let mut frame = request.to_vec();
            let _ = header::set_stream_id(&mut frame, REPLAY_STREAM);
            conn.send(&[Bytes::from(frame)]).await?;
            frames.clear();
            conn.next_frames(&mut frames).await?;
            if frames.first().map(|f| header::opcode(f)).and_then(|o| o.ok()) == Some(Opcode::Error) {
                return Err(std::io::Error::other("replaying the session: the node refused it"));
            }
        }
        Ok(NodeConn::new(conn))
    }

    /// Nodes to try for `target`, in order.
    fn candidates(&self, target: &Target) -> Vec<SocketAddr> {
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
                let mut out = shared.rotation(Some(replicas));
                append_new(&mut out, shared.rotation(None));
                out
            }
            Target::Any => shared.rotation(None),
        }
    }

    /// Sends `frame` for `request` to the first of its candidate nodes that can take it.
    async fn send(&mut self, request: &Message, target: Target, client: ClientRequest) {
        let now = Instant::now();
        let home = matches!(target, Target::Home);
        for node in self.candidates(&target) {
            if !self.conns.contains_key(&node) {
                let becomes_home = home || self.home.is_none();
                match self.open(node, becomes_home).await {
                    Ok(conn) => {
                        self.conns.insert(node, conn);
                        if becomes_home {
                            self.home = Some(node);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("CassandraSinkCluster: cannot connect to the Cassandra node {node}: {e}");
                        self.shared.mark_down(node);
                        self.shared.request_refresh();
                        continue;
                    }
                }
            }
            let Some(conn) = self.conns.get_mut(&node) else { continue };
            let frame = client.frame.clone();
            match conn.queue(&frame, Purpose::Client(client), now) {
                Ok(()) => return,
                Err(e) => {
                    self.shared.failed_requests.inc();
                    self.ready.push(Message::error_to(request, ProxyError::Upstream, &format!("shotover: {e}")));
                    return;
                }
            }
        }
        self.shared.failed_requests.inc();
        self.ready.push(Message::error_to(
            request,
            ProxyError::Overloaded,
            "shotover: no Cassandra node in the data centre could take the request",
        ));
    }

    /// Works out where a request goes and what its answer needs, then sends it.
    async fn dispatch(&mut self, mut request: Message) {
        let (Some(header), Ok(frame)) = (request.cql_header(), request.to_bytes()) else {
            self.ready.push(Message::error_to(&request, ProxyError::Refused, "shotover: cannot encode the request"));
            return;
        };
        let mut client = ClientRequest {
            request_id: request.id(),
            header,
            frame: frame.clone(),
            prepared_id: None,
            kind: Kind::Plain,
        };
        let target = match header.opcode {
            Opcode::Startup => {
                self.session = Session { startup: Some(frame), ..Session::default() };
                Target::Home
            }
            Opcode::AuthResponse => {
                if !self.session.authenticated {
                    self.session.auth.push(frame);
                }
                Target::Home
            }
            Opcode::Register => {
                self.session.register = Some(frame);
                Target::Home
            }
            Opcode::Query => match self.query_of(&mut request).as_deref().and_then(system::parse) {
                Some(q) => {
                    client.kind = Kind::System(Rc::new(q), None);
                    Target::Home
                }
                None => Target::Any,
            },
            Opcode::Prepare => {
                let (query, keyspace) = match request.frame() {
                    Ok(crate::message::Frame::Cassandra(f)) => match &f.body {
                        CassandraBody::Prepare(p) => (p.query.clone(), p.keyspace.clone()),
                        _ => (String::new(), None),
                    },
                    _ => (String::new(), None),
                };
                let system = system::parse(&query).map(Rc::new);
                let target = if system.is_some() { Target::Home } else { Target::Any };
                client.kind = Kind::Prepare { query: query.into(), keyspace, system };
                target
            }
            Opcode::Execute | Opcode::Batch => {
                self.await_partition_key(&mut request).await;
                let (id, target) = self.route_prepared(&mut request);
                if let Some(info) = id.as_ref().and_then(|id| self.shared.prepared.borrow().get(id).cloned()) {
                    if let Some((q, names)) = &info.system {
                        client.kind = Kind::System(q.clone(), Some(names.clone()));
                    }
                }
                client.prepared_id = id;
                if matches!(client.kind, Kind::System(..)) {
                    Target::Home
                } else {
                    target
                }
            }
            _ => Target::Home,
        };
        // A ring-dependent answer waits (briefly) for the control connection's first read.
        if matches!(client.kind, Kind::System(..)) && !self.shared.ring_known.get() {
            self.shared.ring_ready(self.shared.connect_timeout).await;
        }
        self.send(&request, target, client).await;
    }

    fn query_of(&self, request: &mut Message) -> Option<String> {
        if let Some(text) = request.raw().and_then(|raw| query_text(raw)) {
            return Some(text.to_string());
        }
        match request.frame() {
            Ok(crate::message::Frame::Cassandra(f)) => match &f.body {
                CassandraBody::Query(q) => Some(q.query.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The prepared statement an EXECUTE (or a BATCH's first statement) runs, and where its
    /// partition's replicas are.
    fn route_prepared(&self, request: &mut Message) -> (Option<Bytes>, Target) {
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
    async fn await_partition_key(&self, request: &mut Message) {
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

    /// Sends everything queued; a connection that fails takes its requests down with it.
    async fn flush(&mut self) {
        let nodes: Vec<SocketAddr> = self.conns.iter().filter(|(_, c)| c.has_queued()).map(|(a, _)| *a).collect();
        for node in nodes {
            let result = match self.conns.get_mut(&node) {
                Some(conn) => conn.flush().await,
                None => continue,
            };
            if let Err(e) = result {
                self.fail_node(node, &e.to_string());
            }
        }
    }

    /// The connection to `node` is lost: what it owed gets a Server error.
    fn fail_node(&mut self, node: SocketAddr, error: &str) {
        let Some(mut conn) = self.conns.remove(&node) else { return };
        if self.home == Some(node) {
            self.home = None;
        }
        if !conn.is_idle() {
            tracing::warn!("CassandraSinkCluster: the connection to the Cassandra node {node} failed: {error}");
        }
        self.shared.mark_down(node);
        self.shared.request_refresh();
        let text = format!("shotover: the Cassandra node connection failed before the response: {error}");
        for pending in conn.drain() {
            let (Purpose::Client(request) | Purpose::Reprepare(request)) = pending.purpose else { continue };
            self.shared.failed_requests.inc();
            let frame = CassandraFrame::error(&request.header, ErrorCode::SERVER_ERROR, text.clone());
            let mut m = Message::from_frame(crate::message::Frame::Cassandra(Box::new(frame)));
            m.set_request_id(request.request_id);
            self.ready.push(m);
        }
    }

    /// Handles every frame read from `node`.
    fn accept_frames(&mut self, node: SocketAddr) {
        let Some(conn) = self.conns.get_mut(&node) else { return };
        let frames = std::mem::take(&mut conn.frames);
        let compression = conn.compression();
        for frame in frames {
            let Some(conn) = self.conns.get_mut(&node) else { return };
            match conn.answered(&frame) {
                Some(pending) => self.on_answer(node, pending.purpose, frame, compression),
                None if header::stream_id(&frame).is_ok_and(|s| s < 0) => self.on_event(node, frame, compression),
                None => tracing::debug!("CassandraSinkCluster: an answer from {node} on no known stream"),
            }
        }
    }

    /// An EVENT: schema changes reach a client that registered (on its home connection);
    /// topology and status events are about Cassandra nodes, which the client does not see.
    fn on_event(&mut self, node: SocketAddr, frame: Bytes, compression: Compression) {
        if self.home != Some(node) || self.session.register.is_none() {
            return;
        }
        if let Ok(CassandraBody::Event(shotover_protocols::cassandra::response::Event::SchemaChange(_))) =
            CassandraFrame::parse(&frame, compression).map(|f| f.body)
        {
            self.ready.push(Message::from_cql(frame, compression, Instant::now()));
        }
    }

    fn on_answer(&mut self, node: SocketAddr, purpose: Purpose, frame: Bytes, compression: Compression) {
        match purpose {
            Purpose::Quiet => {}
            Purpose::Reprepare(request) => {
                if header::opcode(&frame).ok() == Some(Opcode::Result) {
                    let again = request.frame.clone();
                    self.queue_on(node, &again, Purpose::Client(request));
                } else {
                    self.deliver(request, &frame, compression);
                }
            }
            Purpose::Client(request) => self.on_client_answer(node, request, frame, compression),
        }
    }

    /// Queues a frame on `node`'s connection; a failure there fails the connection.
    fn queue_on(&mut self, node: SocketAddr, frame: &[u8], purpose: Purpose) {
        let Some(conn) = self.conns.get_mut(&node) else { return };
        if let Err(e) = conn.queue(frame, purpose, Instant::now()) {
            self.fail_node(node, &e.to_string());
        }
    }

    fn on_client_answer(&mut self, node: SocketAddr, request: ClientRequest, frame: Bytes, compression: Compression) {
        let opcode = header::opcode(&frame).ok();
        if opcode == Some(Opcode::Error) {
            if let Some(again) = self.reprepare(&request, &frame, compression) {
                tracing::info!("CassandraSinkCluster: {node} did not know a prepared statement; prepared it again");
                self.queue_on(node, &again, Purpose::Reprepare(request));
                return;
            }
        }
        match opcode {
            Some(Opcode::AuthSuccess) => {
                self.session.authenticated = true;
                self.shared.offer_session(&self.session);
            }
            Some(Opcode::Ready) if request.header.opcode == Opcode::Startup => self.shared.offer_session(&self.session),
            Some(Opcode::Result) => {
                if let Some(rewritten) = self.on_result(node, &request, &frame, compression) {
                    return self.deliver(request, &rewritten, Compression::None);
                }
                if is_schema_change(&frame, compression) {
                    let agreement = self.shared.ask_agreement();
                    let until = Instant::now() + AGREEMENT_WAIT;
                    self.parked.push(Parked { request, frame, compression, agreement, until });
                    return;
                }
            }
            _ => {}
        }
        self.deliver(request, &frame, compression);
    }

    /// For UNPREPARED on a statement this core has seen prepared: the PREPARE to send first.
    fn reprepare(&self, request: &ClientRequest, frame: &Bytes, compression: Compression) -> Option<Bytes> {
        let id = request.prepared_id.as_ref()?;
        let parsed = CassandraFrame::parse(frame, compression).ok()?;
        let CassandraBody::Error(e) = parsed.body else { return None };
        if e.code != ErrorCode::UNPREPARED {
            return None;
        }
        let info = self.shared.prepared.borrow().get(id).cloned()?;
        let prepare =
            CassandraBody::Prepare(Prepare { query: info.query.to_string(), keyspace: info.keyspace.clone() });
        self.own_frame(prepare)
    }

    /// Learns from a RESULT; returns the frame to give the client instead, if rewritten.
    fn on_result(
        &mut self,
        node: SocketAddr,
        request: &ClientRequest,
        frame: &Bytes,
        compression: Compression,
    ) -> Option<Bytes> {
        match &request.kind {
            Kind::Plain => {
                // Cheap check first: the result kind is the body's first int (3: Set_keyspace).
                let plain = header::frame_flags(frame).is_ok_and(|f| f == 0);
                if plain && frame.get(header::HEADER_LEN..header::HEADER_LEN + 4) != Some(&[0, 0, 0, 3]) {
                    return None;
                }
                if let Ok(CassandraBody::Result(ResultBody::SetKeyspace(ks))) =
                    CassandraFrame::parse(frame, compression).map(|f| f.body)
                {
                    if let Some(use_ks) = self.use_frame(&ks) {
                        let others: Vec<SocketAddr> = self.conns.keys().filter(|a| **a != node).copied().collect();
                        for other in others {
                            self.queue_on(other, &use_ks, Purpose::Quiet);
                        }
                    }
                    self.session.keyspace = Some(ks);
                }
                None
            }
            Kind::Prepare { query, keyspace, system } => {
                let parsed = CassandraFrame::parse(frame, compression).ok()?;
                let CassandraBody::Result(ResultBody::Prepared(prepared)) = &parsed.body else { return None };
                self.remember_prepared(prepared, query, keyspace, system);
                // The other nodes this client uses prepare it too, so that its EXECUTEs can go
                // anywhere without an UNPREPARED round trip.
                let others: Vec<SocketAddr> = self.conns.keys().filter(|a| **a != node).copied().collect();
                for other in others {
                    self.queue_on(other, &request.frame, Purpose::Quiet);
                }
                None
            }
            Kind::System(query, names) => {
                let mut parsed = CassandraFrame::parse(frame, compression).ok()?;
                let CassandraBody::Result(ResultBody::Rows(rows)) = &mut parsed.body else { return None };
                let view = self.shared.view();
                let names = names.as_deref();
                match query.table {
                    SystemTable::Local => self.local_row = system::rewrite_local(rows, query, names, &view.0),
                    SystemTable::Peers | SystemTable::PeersV2 => {
                        system::rewrite_peers(rows, query, names, &view.1, &self.local_row)
                    }
                }
                parsed.encode().ok().map(Bytes::from)
            }
        }
    }

    fn remember_prepared(
        &self,
        prepared: &Prepared,
        query: &Rc<str>,
        keyspace: &Option<String>,
        system: &Option<Rc<SystemQuery>>,
    ) {
        let m = &prepared.metadata;
        let table = m
            .global_table_spec
            .as_ref()
            .or_else(|| m.columns.first().and_then(|c| c.table_spec.as_ref()))
            .map(|t| (t.keyspace.clone(), t.table.clone()));
        let names: Rc<[String]> = prepared.result_metadata.columns.iter().map(|c| c.name.clone()).collect();
        let info = PreparedInfo {
            query: query.clone(),
            keyspace: keyspace.clone(),
            table,
            pk_indexes: m.pk_indexes.iter().map(|&i| usize::from(i)).collect(),
            bind_names: m.columns.iter().map(|c| c.name.clone()).collect(),
            system: system.clone().map(|q| (q, names)),
        };
        if let (true, Some((keyspace, table))) = (info.pk_indexes.is_empty() && info.system.is_none(), &info.table) {
            // Looked up now, so that it is known by the first EXECUTE.
            self.shared.partition_key(keyspace, table);
        }
        self.shared.prepared.borrow_mut().insert(prepared.id.clone(), Rc::new(info));
    }

    /// Gives the client its answer, on its own stream id.
    fn deliver(&mut self, request: ClientRequest, frame: &[u8], compression: Compression) {
        let frame = node::with_stream(frame, request.header.stream_id);
        let mut message = Message::from_cql(frame, compression, Instant::now());
        message.set_request_id(request.request_id);
        self.ready.push(message);
    }

    fn oldest_sent(&self) -> Option<Instant> {
        self.conns.values().filter_map(NodeConn::oldest_sent).min()
    }

    fn timer_expired(&self) -> bool {
        let Some(limit) = self.shared.read_timeout else { return false };
        self.oldest_sent().is_some_and(|oldest| oldest.elapsed() >= limit)
    }

    fn poll_read_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(limit) = self.shared.read_timeout else { return Poll::Pending };
        if self.timer.is_none() {
            let Some(oldest) = self.oldest_sent() else { return Poll::Pending };
            self.timer = Some(Timer::new(limit.saturating_sub(oldest.elapsed())));
        }
        match self.timer.as_mut() {
            Some(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            None => Poll::Pending,
        }
    }

    /// Writes what is queued and reads what has arrived, on every connection, until
    /// nothing more can be done now (an answer may queue a request: a re-prepare, a retry).
    fn poll_connections(&mut self, cx: &mut Context<'_>) {
        loop {
            let mut progress = false;
            let nodes: Vec<SocketAddr> = self.conns.keys().copied().collect();
            for node in nodes {
                let Some(conn) = self.conns.get_mut(&node) else { continue };
                if conn.has_queued() {
                    if let Poll::Ready(Err(e)) = conn.poll_flush(cx) {
                        self.fail_node(node, &e.to_string());
                        continue;
                    }
                }
                let Some(conn) = self.conns.get_mut(&node) else { continue };
                match conn.poll_read(cx) {
                    Poll::Ready(Ok(())) => {
                        self.timer = None;
                        self.accept_frames(node);
                        progress = true;
                    }
                    Poll::Ready(Err(e)) => self.fail_node(node, &e.to_string()),
                    Poll::Pending => {}
                }
            }
            if !progress {
                // Last: the answers just read may have parked one.
                return self.poll_parked(cx);
            }
        }
    }

    /// Delivers the schema change answers whose agreement check is done (or took too long).
    fn poll_parked(&mut self, cx: &mut Context<'_>) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        let (done, waiting): (Vec<Parked>, Vec<Parked>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| self.shared.agreed(p.agreement) || now >= p.until);
        self.parked = waiting;
        for p in done {
            self.deliver(p.request, &p.frame, p.compression);
        }
        if let Some(until) = self.parked.iter().map(|p| p.until).min() {
            self.shared.agreement_waiters.borrow_mut().push(cx.waker().clone());
            let timer = self.parked_timer.get_or_insert_with(|| Timer::new(until.saturating_duration_since(now)));
            if Pin::new(timer).poll(cx).is_ready() {
                self.parked_timer = None;
                cx.waker().wake_by_ref();
            }
        } else {
            self.parked_timer = None;
        }
    }

    /// True while a request of `ids` has no answer in `ready`.
    fn waiting_for(&self, ids: &[MessageId]) -> bool {
        ids.iter().any(|id| !self.ready.iter().any(|m| m.request_id() == Some(*id)))
    }
}

#[async_trait(?Send)]
impl Transform for CassandraSinkCluster {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        if self.timer_expired() {
            self.conns.clear();
            self.home = None;
            self.timer = None;
            return Err(ChainError::upstream(format!(
                "no response from the Cassandra cluster within the read_timeout of {:?}",
                self.shared.read_timeout.unwrap_or_default()
            ))
            .close_connection());
        }
        let requests = std::mem::take(&mut state.requests);
        let ids: Vec<MessageId> = if state.complete { requests.iter().map(Message::id).collect() } else { Vec::new() };
        for request in requests {
            self.dispatch(request).await;
        }
        self.flush().await;
        let nodes: Vec<SocketAddr> = self.conns.keys().copied().collect();
        for node in nodes {
            if let Some(Err(e)) = self.conns.get_mut(&node).map(NodeConn::take_frames) {
                self.fail_node(node, &e.to_string());
            } else {
                self.accept_frames(node);
            }
        }
        // A complete batch is answered in full before this returns.
        while self.waiting_for(&ids) {
            std::future::poll_fn(|cx| {
                self.poll_connections(cx);
                if !self.waiting_for(&ids) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            self.flush().await;
        }
        Ok(std::mem::take(&mut self.ready))
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ready.is_empty() {
            self.poll_connections(cx);
        }
        if !self.ready.is_empty() {
            return Poll::Ready(());
        }
        self.poll_read_timeout(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The user guide's example, as written there (comments left out).
    const GUIDE_EXAMPLE: &str = r#"
first_contact_points: ["172.16.1.2:9042", "172.16.1.3:9042"]
shotover_nodes:
  - address: "127.0.0.1:9042"
    data_center: "dc1"
    rack: "rack1"
    host_id: "2dd022d6-2937-4754-89d6-02d2933a8f7a"
local_shotover_host_id: "2dd022d6-2937-4754-89d6-02d2933a8f7a"
connect_timeout_ms: 3000
"#;

    #[test]
    fn the_guides_example_loads() {
        let mut config: CassandraSinkClusterConfig = serde_yaml_ng::from_str(GUIDE_EXAMPLE).unwrap();
        config.validate().unwrap();
        let settings = config.resolved.get().unwrap();
        assert_eq!(settings.contact.len(), 2);
        assert_eq!((settings.local, settings.shotover[0].data_center.as_str()), (0, "dc1"));
        assert_eq!(config.read_timeout, None);
    }

    #[test]
    fn uuids_are_read_in_their_usual_form_only() {
        assert_eq!(parse_uuid("00000000-0000-0000-0000-0000000000ff").unwrap()[15], 0xff);
        assert!(parse_uuid("2dd022d629374754-89d6-02d2933a8f7a").is_none());
        assert!(parse_uuid("2dd022d6-2937-4754-89d6-02d2933a8f7g").is_none());
        assert!(parse_uuid("").is_none());
    }
}
