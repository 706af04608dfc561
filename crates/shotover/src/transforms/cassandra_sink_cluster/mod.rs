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
//! - [`liveness`]: the read timeout, and heartbeats on idle node connections.
//! - [`routing`]: where a request goes.
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

mod answers;
mod config;
mod control;
mod liveness;
pub mod node;
mod routing;
mod shared;

pub use config::{CassandraSinkClusterConfig, ShotoverNodeConfig};
use shared::{KeyColumns, PreparedInfo, Shared};
pub mod system;
pub mod topology;

use crate::chain::{
    BuildContext, ChainError, ChainResult, ChainState, Resolved, Transform, TransformBuilder, TransformConfig,
};
use crate::message::{Message, MessageId, Protocol, ProxyError};
use crate::observability::metrics::SourceToSink;
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
use routing::{append_new, Target};
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

/// The stream id of requests replayed on a new connection (the connection is not in use yet).
const REPLAY_STREAM: i16 = 0;

pub struct CassandraSinkCluster {
    shared: Rc<Shared>,
    conns: HashMap<SocketAddr, NodeConn>,
    home: Option<SocketAddr>,
    /// The replica the connection's first routed request went to, round robin: it goes
    /// first among its rack's replicas of every later partition it holds while the
    /// connection has few requests in flight there (see [`Shared::replicas_first`]). Not
    /// the home node, which is a contact point for the connections opened before the
    /// control connection read the ring.
    affinity: Option<SocketAddr>,
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
    /// Fires when idle node connections are due a heartbeat (with a `read_timeout` only).
    heartbeat: Option<Timer>,
}

#[derive(Debug)]
pub struct Parked {
    request: ClientRequest,
    frame: Bytes,
    compression: Compression,
    agreement: u64,
    until: Instant,
}

/// The longest a schema change answer waits for the nodes to agree: well inside the
/// drivers' default request timeouts (10 s and more), which count this wait.
const AGREEMENT_WAIT: Duration = Duration::from_secs(5);

impl CassandraSinkCluster {
    fn new(shared: Rc<Shared>) -> Self {
        CassandraSinkCluster {
            shared,
            conns: HashMap::new(),
            home: None,
            affinity: None,
            session: Session::default(),
            ready: Vec::new(),
            timer: None,
            local_row: Vec::new(),
            parked: Vec::new(),
            parked_timer: None,
            heartbeat: None,
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
                        crate::warn_limited!("CassandraSinkCluster: cannot connect to the Cassandra node {node}: {e}");
                        self.shared.mark_down(node);
                        self.shared.request_refresh();
                        continue;
                    }
                }
            }
            let Some(conn) = self.conns.get_mut(&node) else { continue };
            let frame = client.frame.clone();
            match conn.queue(&frame, Purpose::Client(client), now) {
                Ok(()) => {
                    if matches!(target, Target::Replicas(_)) && self.affinity.is_none() {
                        self.affinity = Some(node);
                    }
                    return;
                }
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
            // The session learns these once they are sent: a home connection opened for them
            // must not replay them too.
            Opcode::Startup => {
                self.session = Session::default();
                Target::Home
            }
            Opcode::AuthResponse | Opcode::Register => Target::Home,
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
        match header.opcode {
            Opcode::Startup => self.session.startup = Some(frame),
            Opcode::AuthResponse if !self.session.authenticated => self.session.auth.push(frame),
            Opcode::Register => self.session.register = Some(frame),
            _ => {}
        }
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
        if self.affinity == Some(node) {
            self.affinity = None;
        }
        if !conn.is_idle() {
            crate::warn_limited!("CassandraSinkCluster: the connection to the Cassandra node {node} failed: {error}");
        }
        // A connection that had served a while (cut by the network, a proxy or a load
        // balancer) is opened again by the next request for the node, which marks the node
        // down if that fails; one that failed soon after opening marks it down now. Marking
        // every node down at a cut of all connections would refuse every request for
        // DOWN_FOR with the nodes up.
        if conn.opened_at.elapsed() < shared::DOWN_FOR {
            self.shared.mark_down(node);
        }
        self.shared.request_refresh();
        let text = format!("shotover: the Cassandra node connection failed before the response: {error}");
        for pending in conn.drain() {
            let request = match pending.purpose {
                Purpose::Client(request) | Purpose::Reprepare(request) => request,
                // The schema change itself succeeded: it waits on the control connection alone.
                Purpose::SchemaVersion(parked) => {
                    self.park(parked, None);
                    continue;
                }
                Purpose::Quiet => continue,
            };
            self.shared.failed_requests.inc();
            let frame = CassandraFrame::error(&request.header, ErrorCode::SERVER_ERROR, text.clone());
            let mut m = Message::from_frame(crate::message::Frame::Cassandra(Box::new(frame)));
            m.set_request_id(request.request_id);
            self.ready.push(m);
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

    /// True while a request of `ids` has no answer in `ready`.
    fn waiting_for(&self, ids: &[MessageId]) -> bool {
        ids.iter().any(|id| !self.ready.iter().any(|m| m.request_id() == Some(*id)))
    }
}

#[async_trait(?Send)]
impl Transform for CassandraSinkCluster {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        if self.client_request_late() {
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
        let first_received_at = requests.first().and_then(Message::received_at);
        for request in requests {
            self.dispatch(request).await;
        }
        self.flush().await;
        self.shared.source_to_sink.written(first_received_at);
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
        self.poll_heartbeat(cx);
        if self.ready.is_empty() {
            self.poll_connections(cx);
        }
        if !self.ready.is_empty() {
            return Poll::Ready(());
        }
        let timed_out = self.poll_read_timeout(cx);
        // A node connection dropped for its silence may have failed requests of the client.
        if !self.ready.is_empty() {
            return Poll::Ready(());
        }
        timed_out
    }
}
