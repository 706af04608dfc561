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
//! Not yet supported (clear error replies, never a hang): transactions, cluster-wide SCAN,
//! pub/sub subscriptions and MONITOR.

use crate::chain::{BuildContext, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol};
use crate::sinks::valkey::ValkeyConnection;
use crate::sinks::valkey_cluster::{fetch, node_tls, slot, SlotMap};
use crate::sinks::valkey_mux::{Mux, MuxError};
use crate::tls::TlsConnectorConfig;
use anyhow::{anyhow, Context as _, Result};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use prometheus::IntCounter;
use serde::Deserialize;
use shotover_protocols::valkey::command::{array_strings, is_command_array};
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use shotover_protocols::valkey::frame::parse;
use shotover_protocols::valkey::ValkeyFrame;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

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
}

fn one() -> usize {
    1
}

fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("{address:?} is not a reachable host:port"))?
        .next()
        .ok_or_else(|| anyhow!("{address:?} resolves to no address"))
}

impl TransformConfig for ValkeySinkClusterConfig {
    const NAME: &'static str = "ValkeySinkCluster";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey];
    fn validate(&mut self) -> Result<()> {
        if self.first_contact_points.is_empty() {
            return Err(anyhow!("first_contact_points: give at least one node"));
        }
        for (i, address) in self.first_contact_points.iter().enumerate() {
            resolve(address).with_context(|| format!("first_contact_points[{i}]"))?;
        }
        if let Some(direct) = &self.direct_connection {
            resolve(direct).context("direct_connection")?;
        }
        if self.connection_count == 0 {
            return Err(anyhow!("connection_count: must be at least 1"));
        }
        crate::sinks::validate_connection(self.tls.as_ref(), self.connect_timeout_ms, None)
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let shared = Rc::new(Shared {
            contact: self.first_contact_points.iter().map(|a| resolve(a)).collect::<Result<_>>()?,
            direct: self.direct_connection.as_deref().map(resolve).transpose()?,
            timeout: Duration::from_millis(self.connect_timeout_ms),
            tls: self.tls.as_ref().map(|t| t.build()).transpose()?,
            map: RefCell::new(SlotMap::default()),
            connection_count: self.connection_count,
            muxes: RefCell::new(HashMap::new()),
            next_mux: Cell::new(0),
            failed_requests: ctx.metrics.failed_requests.with_label_values(&["ValkeySinkCluster", &ctx.chain_name]),
        });
        Ok(Box::new(ClusterBuilder(shared)))
    }
}

/// What the connections of one core share: addresses, TLS and the slot map.
struct Shared {
    contact: Vec<SocketAddr>,
    direct: Option<SocketAddr>,
    timeout: Duration,
    tls: Option<futures_rustls::TlsConnector>,
    map: RefCell<SlotMap>,
    /// Shared connections per node.
    connection_count: usize,
    /// Per node: the core's shared, multiplexed connections (up to `connection_count`),
    /// which carry the batches of every client that keeps no state on its connection.
    muxes: RefCell<HashMap<SocketAddr, Vec<Rc<Mux>>>>,
    /// Spreads batches over a node's muxes.
    next_mux: Cell<usize>,
    failed_requests: IntCounter,
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
            list.push(Rc::new(Mux::new(node, self.timeout, tls)));
        }
        let at = turn % list.len().max(1);
        match list.get(at).or_else(|| list.first()) {
            Some(mux) => mux.clone(),
            None => Rc::new(Mux::new(node, self.timeout, None)),
        }
    }
}

/// Commands that change or depend on the state of their connection, or that are not plain
/// command arrays: a client that sends one gets connections of its own from then on, so that
/// no state leaks between clients through the shared connections (and no blocking command
/// holds one up).
fn is_stateful(request: &Message) -> bool {
    const STATEFUL: &[&str] = &[
        "AUTH",
        "HELLO",
        "SELECT",
        "CLIENT",
        "READONLY",
        "READWRITE",
        "RESET",
        "MULTI",
        "WATCH",
        "BLPOP",
        "BRPOP",
        "BLMOVE",
        "BRPOPLPUSH",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "XREAD",
        "XREADGROUP",
        "WAIT",
        "WAITAOF",
        // These change what the connection carries for everyone on it: QUIT closes it,
        // SYNC/PSYNC/REPLCONF turn it into a replication stream, ASKING applies to the
        // next command whoever sends it, MONITOR streams every command.
        "QUIT",
        "SYNC",
        "PSYNC",
        "REPLCONF",
        "ASKING",
        "MONITOR",
    ];
    // A shared connection pairs replies with requests by count: only a plain command array
    // is sure to get exactly one reply (an inline command, or another RESP value, can get
    // several, and would shift every other client's replies).
    if !request.raw().is_some_and(|raw| is_command_array(raw)) {
        return true;
    }
    let Some(view) = request.valkey_request() else { return true };
    if view.is("CLIENT") {
        // CLIENT SETINFO only labels the connection (drivers send it on connect).
        let sub = request.raw().and_then(|raw| array_strings(raw).get(1).map(|s| s.to_ascii_uppercase()));
        return sub.as_deref() != Some(b"SETINFO");
    }
    STATEFUL.iter().any(|name| view.is(name))
}

struct ClusterBuilder(Rc<Shared>);

impl TransformBuilder for ClusterBuilder {
    fn build(&self) -> Box<dyn Transform> {
        Box::new(ValkeySinkCluster {
            shared: self.0.clone(),
            conns: HashMap::new(),
            session: Vec::new(),
            txn: None,
            watch_node: None,
            dedicated: false,
        })
    }
}

pub struct ValkeySinkCluster {
    shared: Rc<Shared>,
    conns: HashMap<SocketAddr, ValkeyConnection>,
    /// HELLO and AUTH commands that succeeded, replayed on every new node connection so
    /// that this client's credentials apply on every node it uses, and only for it.
    session: Vec<Bytes>,
    /// An open MULTI: commands go, in order, to the one node its keys live on.
    txn: Option<Txn>,
    /// The node of the keys under WATCH; a following MULTI must use it.
    watch_node: Option<SocketAddr>,
    /// Once true, this client uses connections of its own instead of the core's shared ones.
    dedicated: bool,
}

/// A transaction in progress. It is opened on a node only with its first command, once the
/// node is known from that command's key.
struct Txn {
    node: Option<SocketAddr>,
    /// A command could not join the transaction: EXEC answers EXECABORT.
    aborted: bool,
}

fn is_transaction_command(request: &Message) -> bool {
    request.valkey_request().is_some_and(|v| v.is("MULTI") || v.is("WATCH"))
}

/// One request sent to one node.
struct Sub {
    node: SocketAddr,
    raw: Bytes,
    slot: Option<u16>,
    reply: Result<Bytes, String>,
    /// Written to its node: only a sub-request never sent may be retried elsewhere.
    sent: bool,
    /// `raw` is `ASKING` followed by the command: two replies, the command's is the second.
    asking: bool,
}

impl Sub {
    fn replies(&self) -> usize {
        if self.asking {
            2
        } else {
            1
        }
    }

    /// Takes this sub-request's replies, as many as [`Sub::replies`], in order.
    fn take_replies(&mut self, replies: &mut impl Iterator<Item = Bytes>) {
        let first = replies.next();
        let reply = if self.asking {
            let second = replies.next();
            match first {
                Some(ok) if ok.as_ref() == b"+OK\r\n" => second,
                other => other,
            }
        } else {
            first
        };
        self.reply = reply.ok_or_else(|| format!("node {}: missing reply", self.node));
    }
}

/// How the replies of a request's sub-requests become its response.
enum Merge {
    /// The one sub-request's reply.
    Single,
    /// Integers added up (DEL, EXISTS, UNLINK, TOUCH, DBSIZE).
    Sum,
    /// Arrays joined (KEYS).
    Concat,
    /// Arrays of 0/1 combined element by element: 1 only where every node says 1
    /// (SCRIPT EXISTS: a script is usable only if every master has it).
    AllOf,
    /// MGET: element `j` of the response is element `.1` of sub-request `.0`'s reply.
    Mget(Vec<(usize, usize)>),
    /// The first reply, unless any is an error (MSET, FLUSHALL, SCRIPT ...).
    AllOk,
    /// SCAN on master `.0` of `.1`: the node's cursor is turned into a cluster-wide one.
    Scan(usize, usize),
    /// Answered by the proxy.
    Error(String),
}

struct Plan {
    subs: std::ops::Range<usize>,
    merge: Merge,
    session: bool,
}

/// Encodes a command as a RESP array of bulk strings.
fn command(parts: &[&[u8]]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + parts.iter().map(|p| p.len() + 16).sum::<usize>());
    out.put_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.put_slice(format!("${}\r\n", part.len()).as_bytes());
        out.put_slice(part);
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

impl ValkeySinkCluster {
    fn default_node(&self) -> Option<SocketAddr> {
        let map = self.shared.map.borrow();
        self.shared.direct.or_else(|| map.masters.first().copied()).or_else(|| self.shared.contact.first().copied())
    }

    fn node_for(&self, key: &[u8]) -> (Option<SocketAddr>, u16) {
        let slot = slot(key);
        (self.shared.map.borrow().master_of(slot), slot)
    }

    /// Splits one request into sub-requests (appended to `subs`).
    fn plan(&self, request: &Message, subs: &mut Vec<Sub>) -> Plan {
        let start = subs.len();
        let Some(raw) = request.raw().cloned() else {
            return Plan {
                subs: start..start,
                merge: Merge::Error("ERR shotover: cannot route a modified request".into()),
                session: false,
            };
        };
        let words = array_strings(&raw);
        let name = words.first().map(|n| n.to_ascii_uppercase()).unwrap_or_default();
        let args = words.get(1..).unwrap_or_default();
        let unsupported = |what: &str| Plan {
            subs: start..start,
            merge: Merge::Error(format!("ERR shotover: {what} is not supported by ValkeySinkCluster yet")),
            session: false,
        };
        let push = |subs: &mut Vec<Sub>, node: Option<SocketAddr>, raw: Bytes, slot: Option<u16>| {
            let reply = match node {
                Some(_) => Err("not sent".to_string()),
                None => Err("no node serves this slot".to_string()),
            };
            let node = node.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            subs.push(Sub { node, raw, slot, reply, sent: false, asking: false });
        };
        let merge = match name.as_slice() {
            b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH" => {
                // Only reached when planning a batch without an open transaction.
                return Plan {
                    subs: start..start,
                    merge: Merge::Error(format!("ERR {} without MULTI", String::from_utf8_lossy(&name))),
                    session: false,
                };
            }
            b"SCAN" => {
                // Cluster cursor = node cursor << 8 | master index, masters in address order.
                let cursor = args.first().and_then(|c| std::str::from_utf8(c).ok()).and_then(|c| c.parse::<u64>().ok());
                let Some(cursor) = cursor else {
                    return Plan {
                        subs: start..start,
                        merge: Merge::Error("ERR invalid cursor".into()),
                        session: false,
                    };
                };
                let mut masters = self.shared.map.borrow().masters.clone();
                masters.sort();
                let index = (cursor & 0xff) as usize;
                let Some(node) = masters.get(index).copied() else {
                    return Plan {
                        subs: start..start,
                        merge: Merge::Error("ERR invalid cursor".into()),
                        session: false,
                    };
                };
                let node_cursor = (cursor >> 8).to_string();
                let mut parts: Vec<&[u8]> = vec![b"SCAN", node_cursor.as_bytes()];
                parts.extend(args.get(1..).unwrap_or_default());
                push(subs, Some(node), command(&parts), None);
                Merge::Scan(index, masters.len())
            }
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE"
            | b"MONITOR" => return unsupported(&String::from_utf8_lossy(&name)),
            b"MGET" if !args.is_empty() => {
                let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
                for (i, key) in args.iter().enumerate() {
                    let s = slot(key);
                    match by_slot.iter_mut().find(|(sl, _)| *sl == s) {
                        Some((_, keys)) => keys.push(i),
                        None => by_slot.push((s, vec![i])),
                    }
                }
                let mut positions = vec![(0, 0); args.len()];
                for (group, (s, keys)) in by_slot.iter().enumerate() {
                    let mut parts: Vec<&[u8]> = vec![b"MGET"];
                    for (j, k) in keys.iter().enumerate() {
                        parts.extend(args.get(*k).copied());
                        if let Some(p) = positions.get_mut(*k) {
                            *p = (start + group, j);
                        }
                    }
                    let node = self.shared.map.borrow().master_of(*s);
                    push(subs, node, command(&parts), Some(*s));
                }
                Merge::Mget(positions)
            }
            b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" if args.len() > 1 => {
                let mut by_slot: Vec<(u16, Vec<&[u8]>)> = Vec::new();
                for key in args {
                    let s = slot(key);
                    match by_slot.iter_mut().find(|(sl, _)| *sl == s) {
                        Some((_, keys)) => keys.push(key),
                        None => by_slot.push((s, vec![key])),
                    }
                }
                for (s, keys) in by_slot {
                    let mut parts: Vec<&[u8]> = vec![&name];
                    parts.extend(keys);
                    let node = self.shared.map.borrow().master_of(s);
                    push(subs, node, command(&parts), Some(s));
                }
                Merge::Sum
            }
            b"MSET" if args.len() >= 2 && args.len() % 2 == 0 => {
                let mut by_slot: Vec<(u16, Vec<&[u8]>)> = Vec::new();
                for pair in args.chunks(2) {
                    let Some(key) = pair.first() else { continue };
                    let s = slot(key);
                    match by_slot.iter_mut().find(|(sl, _)| *sl == s) {
                        Some((_, kv)) => kv.extend(pair),
                        None => by_slot.push((s, pair.to_vec())),
                    }
                }
                for (s, kv) in by_slot {
                    let mut parts: Vec<&[u8]> = vec![b"MSET"];
                    parts.extend(kv);
                    let node = self.shared.map.borrow().master_of(s);
                    push(subs, node, command(&parts), Some(s));
                }
                Merge::AllOk
            }
            b"DBSIZE" | b"KEYS" | b"FLUSHALL" | b"FLUSHDB" | b"SCRIPT" => {
                let masters = self.shared.map.borrow().masters.clone();
                for node in masters {
                    push(subs, Some(node), raw.clone(), None);
                }
                let exists = args.first().is_some_and(|sub| sub.eq_ignore_ascii_case(b"EXISTS"));
                match name.as_slice() {
                    b"DBSIZE" => Merge::Sum,
                    b"KEYS" => Merge::Concat,
                    b"SCRIPT" if exists => Merge::AllOf,
                    _ => Merge::AllOk,
                }
            }
            b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
                let numkeys =
                    args.get(1).and_then(|n| std::str::from_utf8(n).ok()).and_then(|n| n.parse::<usize>().ok());
                match (numkeys, args.get(2)) {
                    (Some(n), Some(key)) if n > 0 => {
                        let (node, s) = self.node_for(key);
                        push(subs, node, raw.clone(), Some(s));
                    }
                    _ => push(subs, self.default_node(), raw.clone(), None),
                }
                Merge::Single
            }
            b"AUTH" | b"HELLO" | b"PING" | b"ECHO" | b"INFO" | b"TIME" | b"COMMAND" | b"CLIENT" | b"CLUSTER"
            | b"SELECT" | b"READONLY" | b"READWRITE" | b"RANDOMKEY" | b"LASTSAVE" | b"ROLE" => {
                push(subs, self.default_node(), raw.clone(), None);
                Merge::Single
            }
            _ => match args.first() {
                Some(key) => {
                    let (node, s) = self.node_for(key);
                    push(subs, node, raw.clone(), Some(s));
                    Merge::Single
                }
                None => {
                    push(subs, self.default_node(), raw.clone(), None);
                    Merge::Single
                }
            },
        };
        let session = matches!(name.as_slice(), b"AUTH" | b"HELLO");
        Plan { subs: start..subs.len(), merge, session }
    }

    /// Connects to `node` if needed, replaying the client's session.
    async fn connection(&mut self, node: SocketAddr) -> Result<&mut ValkeyConnection> {
        if !self.conns.contains_key(&node) {
            let tls = self.shared.tls.as_ref().map(|connector| node_tls(connector, node));
            let mut conn = ValkeyConnection::connect(node, self.shared.timeout, tls.as_ref())
                .await
                .with_context(|| format!("cannot connect to cluster node {node}"))?;
            for raw in &self.session {
                conn.write_all(raw).await?;
                let reply = conn.next().await?;
                if is_error(&reply) {
                    return Err(anyhow!(
                        "node {node} refused the session: {}",
                        String::from_utf8_lossy(&reply).trim_end()
                    ));
                }
            }
            self.conns.insert(node, conn);
        }
        self.conns.get_mut(&node).ok_or_else(|| anyhow!("no connection to {node}"))
    }

    /// Sends every pending sub-request: all writes first, then the replies node by node.
    /// True when a node could not be reached or its connection broke.
    async fn run(&mut self, subs: &mut [Sub], pending: &[usize]) -> bool {
        if !self.dedicated {
            return self.run_shared(subs, pending).await;
        }
        let mut nodes: Vec<SocketAddr> = Vec::new();
        for &i in pending {
            if let Some(sub) = subs.get(i) {
                if sub.node.port() != 0 && !nodes.contains(&sub.node) {
                    nodes.push(sub.node);
                }
            }
        }
        let mut broken = false;
        let mut written = Vec::new();
        for node in nodes {
            let mut buf = BytesMut::new();
            for &i in pending {
                if let Some(sub) = subs.get(i).filter(|s| s.node == node) {
                    buf.put_slice(&sub.raw);
                }
            }
            // A failed connect sent nothing (the commands may go elsewhere); a failed write
            // may have sent part, so those commands count as sent and are not retried.
            let (result, sent) = match self.connection(node).await {
                Ok(conn) => (conn.write_all(&buf).await.map_err(anyhow::Error::from), true),
                Err(e) => (Err(e), false),
            };
            for &i in pending {
                if let Some(sub) = subs.get_mut(i).filter(|s| s.node == node) {
                    sub.sent = sent;
                    if let Err(e) = &result {
                        sub.reply = Err(format!("{e:#}"));
                    }
                }
            }
            match result {
                Ok(()) => written.push(node),
                Err(_) => {
                    broken = true;
                    self.conns.remove(&node);
                }
            }
        }
        for node in written {
            for &i in pending {
                if subs.get(i).is_none_or(|s| s.node != node) {
                    continue;
                }
                let wanted = subs.get(i).map_or(0, Sub::replies);
                let mut replies = Vec::with_capacity(wanted);
                let mut failed = None;
                for _ in 0..wanted {
                    let reply = match self.conns.get_mut(&node) {
                        Some(conn) => conn.next().await.map_err(|e| format!("node {node}: {e}")),
                        None => Err(format!("node {node}: connection lost")),
                    };
                    match reply {
                        Ok(r) => replies.push(r),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    broken = true;
                    self.conns.remove(&node);
                }
                if let Some(sub) = subs.get_mut(i) {
                    match failed {
                        Some(e) => sub.reply = Err(e),
                        None => sub.take_replies(&mut replies.into_iter()),
                    }
                }
            }
        }
        broken
    }

    /// Follows MOVED and ASK redirections, a few times at most.
    async fn follow_redirections(&mut self, subs: &mut [Sub]) -> bool {
        let mut moved = false;
        for round in 0..5 {
            if round > 1 {
                // A slot being moved can bounce between nodes for a moment: back off a little.
                crate::rt::sleep(Duration::from_millis(20 * round)).await;
            }
            let mut pending = Vec::new();
            for (i, sub) in subs.iter_mut().enumerate() {
                let Ok(reply) = &sub.reply else { continue };
                let text = String::from_utf8_lossy(reply);
                let mut words = text.trim_end().split(' ');
                let (kind, slot, addr) = (words.next(), words.next(), words.next());
                let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) else { continue };
                match kind {
                    Some("-MOVED") => {
                        if let Some(s) = slot.and_then(|s| s.parse::<u16>().ok()) {
                            self.shared.map.borrow_mut().moved(s, addr);
                        }
                        moved = true;
                        sub.node = addr;
                        pending.push(i);
                    }
                    Some("-ASK") => {
                        // ASKING applies to the next command only: send both together.
                        let mut raw = BytesMut::from(&b"*1\r\n$6\r\nASKING\r\n"[..]);
                        raw.put_slice(&sub.raw);
                        let asked = Sub {
                            node: addr,
                            raw: raw.freeze(),
                            slot: sub.slot,
                            reply: Err(String::new()),
                            sent: false,
                            asking: true,
                        };
                        let mut one = [asked];
                        self.run(&mut one, &[0]).await;
                        let [asked] = one;
                        sub.reply = asked.reply;
                    }
                    _ => {}
                }
            }
            if pending.is_empty() {
                break;
            }
            self.run(subs, &pending).await;
        }
        moved
    }

    /// [`Self::run`] over the core's shared connections: every node's sub-requests are
    /// queued on its mux first, then the replies are awaited, so the nodes work in parallel.
    async fn run_shared(&mut self, subs: &mut [Sub], pending: &[usize]) -> bool {
        let mut tickets = Vec::new();
        let mut buf = BytesMut::new();
        for &i in pending {
            let Some(node) = subs.get(i).map(|s| s.node).filter(|n| n.port() != 0) else { continue };
            if tickets.iter().any(|(n, _)| *n == node) {
                continue;
            }
            buf.clear();
            let mut replies = 0;
            for &j in pending {
                if let Some(sub) = subs.get(j).filter(|s| s.node == node) {
                    buf.put_slice(&sub.raw);
                    replies += sub.replies();
                }
            }
            tickets.push((node, self.shared.mux(node).submit(&buf, replies)));
        }
        let mut broken = false;
        for (node, ticket) in tickets {
            let (mut replies, error, sent) = match ticket.wait().await {
                Ok(replies) => (replies.into_iter(), None, true),
                Err(MuxError::NotSent(e)) => (Vec::new().into_iter(), Some(e), false),
                Err(MuxError::Lost(e)) => (Vec::new().into_iter(), Some(e), true),
            };
            broken |= error.is_some();
            for &i in pending {
                let Some(sub) = subs.get_mut(i).filter(|s| s.node == node) else { continue };
                sub.sent = sent;
                match &error {
                    None => sub.take_replies(&mut replies),
                    Some(e) => sub.reply = Err(e.clone()),
                }
            }
        }
        broken
    }

    /// Sends one command to one node and waits for its reply.
    async fn send_one(&mut self, node: SocketAddr, raw: Bytes) -> Result<Bytes, String> {
        let mut one = [Sub { node, raw, slot: None, reply: Err("not sent".into()), sent: false, asking: false }];
        if self.run(&mut one, &[0]).await {
            self.refresh_map().await;
        }
        let [sub] = one;
        sub.reply
    }

    /// The node a command's first key lives on, if it has one.
    fn key_node(&self, request: &Message) -> Option<SocketAddr> {
        let raw = request.raw()?;
        let words = array_strings(raw);
        let key = words.get(1)?;
        self.shared.map.borrow().master_of(slot(key))
    }

    /// Runs one request while a transaction (or WATCH) is in progress.
    async fn transaction_step(&mut self, request: &Message) -> Message {
        let name = request.valkey_request().map(|v| v.name.to_ascii_uppercase()).unwrap_or_default();
        let raw = request.raw().cloned().unwrap_or_default();
        let shared = self.shared.clone();
        let reply = |r: Result<Bytes, String>| match r {
            Ok(raw) => reply_message(request, raw),
            Err(e) => {
                shared.failed_requests.inc();
                Message::valkey_error_to(request, format!("ERR shotover: {e}"))
            }
        };
        let local = |text: &'static [u8]| reply_message(request, Bytes::from_static(text));
        match name.as_slice() {
            b"WATCH" => {
                let node = self.key_node(request);
                match (node, self.watch_node) {
                    (None, _) => local(b"-ERR shotover: WATCH needs a key whose slot is known\r\n"),
                    (Some(n), Some(w)) if n != w => {
                        local(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")
                    }
                    (Some(n), _) => {
                        self.watch_node = Some(n);
                        reply(self.send_one(n, raw).await)
                    }
                }
            }
            b"UNWATCH" => match self.watch_node.take() {
                Some(n) if self.txn.is_none() => reply(self.send_one(n, raw).await),
                Some(n) => {
                    self.watch_node = Some(n);
                    self.txn_command(request, raw).await
                }
                None => local(b"+OK\r\n"),
            },
            b"MULTI" => {
                if self.txn.is_some() {
                    return local(b"-ERR MULTI calls can not be nested\r\n");
                }
                self.txn = Some(Txn { node: self.watch_node, aborted: false });
                match self.watch_node {
                    Some(n) => reply(self.send_one(n, raw).await),
                    None => local(b"+OK\r\n"),
                }
            }
            b"EXEC" | b"DISCARD" => {
                let Some(txn) = self.txn.take() else {
                    return Message::valkey_error_to(
                        request,
                        format!("ERR {} without MULTI", String::from_utf8_lossy(&name)),
                    );
                };
                self.watch_node = None;
                let exec = name.as_slice() == b"EXEC";
                match (txn.node, txn.aborted) {
                    (Some(n), true) => {
                        let _ = self.send_one(n, Bytes::from_static(b"*1\r\n$7\r\nDISCARD\r\n")).await;
                        local(if exec {
                            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
                        } else {
                            b"+OK\r\n"
                        })
                    }
                    (Some(n), false) => reply(self.send_one(n, raw).await),
                    (None, true) if exec => local(b"-EXECABORT Transaction discarded because of previous errors.\r\n"),
                    (None, _) => local(if exec { b"*0\r\n" } else { b"+OK\r\n" }),
                }
            }
            _ if self.txn.is_some() => self.txn_command(request, raw).await,
            _ => {
                let mut subs = Vec::new();
                let plan = self.plan(request, &mut subs);
                let pending: Vec<usize> =
                    (0..subs.len()).filter(|&i| subs.get(i).is_some_and(|s| s.node.port() != 0)).collect();
                let broken = self.run(&mut subs, &pending).await;
                if self.follow_redirections(&mut subs).await || broken {
                    self.refresh_map().await;
                }
                self.merge(request, &plan, &subs)
            }
        }
    }

    /// Queues a command in the open transaction, opening it on the command's node first.
    async fn txn_command(&mut self, request: &Message, raw: Bytes) -> Message {
        let target = self.key_node(request);
        let pinned = self.txn.as_ref().and_then(|t| t.node);
        let node = match (pinned, target) {
            (Some(p), Some(t)) if p != t => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.aborted = true;
                }
                return Message::valkey_error_to(request, "CROSSSLOT Keys in request don't hash to the same slot");
            }
            (Some(p), _) => p,
            (None, t) => {
                let Some(node) = t.or_else(|| self.default_node()) else {
                    return Message::valkey_error_to(request, "ERR shotover: no cluster node is known");
                };
                match self.send_one(node, Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n")).await {
                    Ok(ok) if !is_error(&ok) => {
                        if let Some(txn) = self.txn.as_mut() {
                            txn.node = Some(node);
                        }
                        node
                    }
                    Ok(err) => return reply_message(request, err),
                    Err(e) => return Message::valkey_error_to(request, format!("ERR shotover: {e}")),
                }
            }
        };
        match self.send_one(node, raw).await {
            Ok(raw) => reply_message(request, raw),
            Err(e) => {
                self.shared.failed_requests.inc();
                Message::valkey_error_to(request, format!("ERR shotover: {e}"))
            }
        }
    }

    async fn refresh_map(&mut self) {
        let mut nodes = self.shared.map.borrow().masters.clone();
        nodes.extend(self.shared.contact.iter().copied());
        match fetch(&nodes, self.shared.timeout, self.shared.tls.as_ref(), &self.session).await {
            Ok(map) => {
                // Shared connections to nodes that are no longer masters (failed over, or gone
                // from the cluster) close once what they owe is answered.
                let direct = self.shared.direct;
                self.shared.muxes.borrow_mut().retain(|node, _| map.masters.contains(node) || Some(*node) == direct);
                *self.shared.map.borrow_mut() = map;
            }
            Err(e) => tracing::warn!("cannot refresh the cluster slot map: {e:#}"),
        }
    }

    fn merge(&self, request: &Message, plan: &Plan, subs: &[Sub]) -> Message {
        let parts = subs.get(plan.subs.clone()).unwrap_or_default();
        let error = |text: String| {
            self.shared.failed_requests.inc();
            Message::valkey_error_to(request, format!("ERR shotover: {text}"))
        };
        if let Merge::Error(text) = &plan.merge {
            return Message::valkey_error_to(request, text.clone());
        }
        // A failed sub-request fails the request; a node's own error reply is passed on.
        let mut replies = Vec::with_capacity(parts.len());
        for sub in parts {
            match &sub.reply {
                Ok(raw) => replies.push(raw.clone()),
                Err(reason) => return error(reason.clone()),
            }
        }
        if let Some(err) = replies.iter().find(|r| is_error(r)).filter(|_| !matches!(plan.merge, Merge::Single)) {
            return reply_message(request, err.clone());
        }
        match &plan.merge {
            Merge::Single => match replies.into_iter().next() {
                Some(raw) => reply_message(request, raw),
                None => error("no reply".into()),
            },
            Merge::AllOk => match replies.into_iter().next() {
                Some(raw) => reply_message(request, raw),
                None => error("no node to send to".into()),
            },
            Merge::Sum => {
                let total: i64 = replies.iter().filter_map(|r| parse(r).ok()).map(|(f, _)| number(&f)).sum();
                reply_message(request, Bytes::from(format!(":{total}\r\n")))
            }
            Merge::Concat => {
                let mut items = Vec::new();
                for raw in &replies {
                    if let Ok((ValkeyFrame::Array { data, .. }, _)) = parse(raw) {
                        items.extend(data);
                    }
                }
                frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
            }
            Merge::AllOf => {
                let mut combined: Option<Vec<i64>> = None;
                for raw in &replies {
                    let Ok((ValkeyFrame::Array { data, .. }, _)) = parse(raw) else { continue };
                    let flags: Vec<i64> = data.iter().map(number).collect();
                    combined = Some(match combined {
                        None => flags,
                        Some(acc) => acc.iter().zip(&flags).map(|(a, b)| (*a).min(*b)).collect(),
                    });
                }
                let items = combined
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| ValkeyFrame::Number { data: n, attributes: None })
                    .collect();
                frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
            }
            Merge::Mget(positions) => {
                let arrays: Vec<Vec<ValkeyFrame>> = replies
                    .iter()
                    .map(|raw| match parse(raw) {
                        Ok((ValkeyFrame::Array { data, .. }, _)) => data,
                        _ => Vec::new(),
                    })
                    .collect();
                let items = positions
                    .iter()
                    .map(|(sub, j)| {
                        sub.checked_sub(plan.subs.start)
                            .and_then(|k| arrays.get(k))
                            .and_then(|a| a.get(*j))
                            .cloned()
                            .unwrap_or(ValkeyFrame::Null)
                    })
                    .collect();
                frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
            }
            Merge::Scan(index, masters) => {
                let Some(Ok((ValkeyFrame::Array { data, .. }, _))) = replies.first().map(parse) else {
                    return error("unexpected SCAN reply".into());
                };
                let next = match data.first() {
                    Some(ValkeyFrame::BlobString { data, .. }) => {
                        std::str::from_utf8(data).ok().and_then(|c| c.parse::<u64>().ok()).unwrap_or(0)
                    }
                    _ => 0,
                };
                let cursor = match (next, index + 1 < *masters) {
                    (0, true) => (*index + 1) as u64,
                    (0, false) => 0,
                    (n, _) => (n << 8) | *index as u64,
                };
                let keys = data.get(1).cloned().unwrap_or(ValkeyFrame::Array { data: Vec::new(), attributes: None });
                let items = vec![shotover_protocols::valkey::frame::bulk(cursor.to_string()), keys];
                frame_message(request, ValkeyFrame::Array { data: items, attributes: None })
            }
            Merge::Error(_) => error("unreachable".into()),
        }
    }
}

fn number(frame: &ValkeyFrame) -> i64 {
    match frame {
        ValkeyFrame::Number { data, .. } => *data,
        _ => 0,
    }
}

fn reply_message(request: &Message, raw: Bytes) -> Message {
    let mut m = Message::from_bytes(raw, Protocol::Valkey, Instant::now());
    m.set_request_id(request.id());
    m
}

fn frame_message(request: &Message, frame: ValkeyFrame) -> Message {
    Message::response_to(request, crate::message::Frame::Valkey(frame))
}

#[async_trait(?Send)]
impl Transform for ValkeySinkCluster {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> Result<Vec<Message>> {
        let requests = std::mem::take(&mut state.requests);
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        if self.shared.map.borrow().is_empty() || self.shared.map.borrow().is_stale() {
            self.refresh_map().await;
        }
        if self.txn.is_some() || self.watch_node.is_some() || requests.iter().any(is_transaction_command) {
            self.dedicated = true;
            // Transactions run one command at a time, pinned to the node of their keys.
            let mut responses = Vec::with_capacity(requests.len());
            for request in &requests {
                responses.push(self.transaction_step(request).await);
            }
            return Ok(responses);
        }
        let mut subs = Vec::new();
        let plans: Vec<Plan> = requests.iter().map(|r| self.plan(r, &mut subs)).collect();
        let pending: Vec<usize> =
            (0..subs.len()).filter(|&i| subs.get(i).is_some_and(|s| s.node.port() != 0)).collect();
        if !self.dedicated && requests.iter().any(is_stateful) {
            self.dedicated = true;
        }
        let broken = self.run(&mut subs, &pending).await;
        let moved = self.follow_redirections(&mut subs).await;
        if broken {
            // A node could not be reached (after a failover, say): ask the cluster again and
            // send what never left the proxy to its slot's current master.
            self.refresh_map().await;
            let retry: Vec<usize> = (0..subs.len())
                .filter(|&i| {
                    let Some(sub) = subs.get_mut(i) else { return false };
                    let current = sub.slot.and_then(|s| self.shared.map.borrow().master_of(s));
                    match current {
                        Some(node) if sub.reply.is_err() && !sub.sent && node != sub.node => {
                            sub.node = node;
                            true
                        }
                        _ => false,
                    }
                })
                .collect();
            if !retry.is_empty() {
                self.run(&mut subs, &retry).await;
            }
        }
        if moved {
            self.refresh_map().await;
        }
        let mut responses = Vec::with_capacity(requests.len());
        for (request, plan) in requests.iter().zip(&plans) {
            let response = self.merge(request, plan, &subs);
            if plan.session && response.raw().is_some_and(|r| !is_error(r)) {
                if let Some(raw) = request.raw() {
                    self.session.push(raw.clone());
                    // Other nodes learn the new session when they reconnect.
                    let keep = subs.get(plan.subs.clone()).and_then(|s| s.first()).map(|s| s.node);
                    self.conns.retain(|node, _| Some(*node) == keep);
                }
            }
            responses.push(response);
        }
        Ok(responses)
    }
}
