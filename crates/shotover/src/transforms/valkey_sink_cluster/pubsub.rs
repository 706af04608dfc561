//! Pub/sub and MONITOR: connections of the client's own, whose replies are sorted from the
//! messages nobody asked for by what the server sends ([`Follower`]), as ValkeySinkSingle
//! does.
//!
//! - `SUBSCRIBE`, `PSUBSCRIBE` and `MONITOR` go to one node (a cluster delivers `PUBLISH` to
//!   every node): `direct_connection`, else the first master, chosen at the first of them.
//!   `UNSUBSCRIBE` and `PUNSUBSCRIBE` follow them there.
//! - `SSUBSCRIBE` goes to the master of the shard channel's slot, on a connection to that node
//!   (the node refuses channels of different slots with `CROSSSLOT`, and answers `MOVED` for a
//!   slot it lost, which is followed). `SUNSUBSCRIBE` goes to the node of its channels, or,
//!   without channels, to every node the client has shard channels on, in turn.
//! - While subscribed in RESP2, the server refuses most commands: the client's other commands
//!   go to a subscribed connection so that the server answers them as it would. A node that
//!   would redirect the command (its key lives elsewhere) is not asked twice: the proxy
//!   answers with the error the node gives for a key of its own.
//! - Each node counts the subscriptions of its own connection in its confirmations: the proxy
//!   adds those of the client's other connections, so the counts are the client's totals.
//! - Whatever the server would answer on a connection that is not subscribed (`-NOSUB` to an
//!   `UNSUBSCRIBE`, say) comes from a connection that is not subscribed either. The one case
//!   the proxy answers itself is `SUNSUBSCRIBE` of channels of a node the client has no shard
//!   channel on, while it is subscribed elsewhere.
//!
//! Messages that come while the client is idle are read by [`PubSub::poll_pushed`]. A
//! connection that is neither subscribed nor monitoring is closed after each request. If one
//! that is breaks, its subscriptions cannot be restored: the client connection is closed.

use super::merge::reply_message;
use super::plan::SessionKind;
use super::route::Routes;
use super::send::redirection;
use super::ValkeySinkCluster;
use crate::chain::ChainError;
use crate::message::{Message, Protocol};
use crate::sinks::valkey::ValkeyConnection;
use crate::sinks::valkey_follow::{confirmation, Class, Expect, Follower, Kind};
use crate::sinks::valkey_slots::{node_tls, slot};
use crate::stream::ReadMode;
use bytes::{BufMut, Bytes, BytesMut};
use shotover_protocols::valkey::command::{array_strings, RequestView};
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Instant;

/// The client's connection to one node for pub/sub or MONITOR.
struct Conn {
    node: SocketAddr,
    conn: ValkeyConnection,
    follower: Follower,
}

/// What a node says in a confirmation of `kind` about the subscriptions of `follower`'s
/// connection: shard channels alone, or channels and patterns together.
fn count(follower: &Follower, kind: Kind) -> usize {
    match kind {
        Kind::Shard => follower.count(Kind::Shard),
        Kind::Channel | Kind::Pattern => follower.count(Kind::Channel) + follower.count(Kind::Pattern),
    }
}

/// The client's pub/sub and MONITOR connections.
#[derive(Default)]
pub(super) struct PubSub {
    conns: Vec<Conn>,
    /// The node of SUBSCRIBE, PSUBSCRIBE and MONITOR, once one of them was sent.
    global: Option<SocketAddr>,
    /// Messages read while the client was idle, in arrival order.
    pushed: VecDeque<Message>,
    /// Set when a connection holding subscriptions or MONITOR was lost.
    lost: Option<String>,
}

/// Where a request goes when it concerns pub/sub.
#[derive(Debug, PartialEq)]
pub(super) enum Route {
    /// To this node's pub/sub connection, opened if needed.
    Node(SocketAddr),
    /// To each of these nodes' connections in turn (SUNSUBSCRIBE from every shard channel).
    Each(Vec<SocketAddr>),
    /// To a connection in subscribed mode (RESP2), for the server to answer as it does there.
    Context(SocketAddr),
    /// Answered by the proxy: the first message is the response, the others are pushed.
    Answer(Vec<Bytes>),
}

/// The subscribe family and MONITOR: the commands that need a pub/sub connection.
pub(super) fn is_pubsub_command(request: &Message) -> bool {
    request.valkey_request().is_some_and(|v| v.special.is_pubsub())
}

/// Where `request` goes, given the client's pub/sub connections (node, what its server said)
/// and the node of its SUBSCRIBEs; `None`: the usual way.
pub(super) fn route(
    conns: &[(SocketAddr, &Follower)],
    global: Option<SocketAddr>,
    request: &Message,
    routes: &Routes<'_>,
) -> Option<Route> {
    let raw = request.raw()?;
    let words = array_strings(raw);
    let (name, args) = words.split_first()?;
    let name = name.to_ascii_uppercase();
    let default = routes.default_node()?;
    let global = global.unwrap_or(default);
    let is_subscribed = |node: SocketAddr| conns.iter().any(|(n, f)| *n == node && f.subscribed());
    // A connection in subscribed mode, the SUBSCRIBE node's first.
    let subscribed = Some(global)
        .filter(|g| is_subscribed(*g))
        .or_else(|| conns.iter().find(|(_, f)| f.subscribed()).map(|(n, _)| *n));
    let owner = |channel: &[u8]| routes.map.master_of(slot(channel)).unwrap_or(default);
    let route = match name.as_slice() {
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"MONITOR" => Route::Node(global),
        b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" => Route::Node(subscribed.unwrap_or(global)),
        b"SSUBSCRIBE" => Route::Node(args.first().map_or(default, |c| owner(c))),
        b"SUNSUBSCRIBE" => match args.first() {
            Some(first) => {
                let node = owner(first);
                match subscribed {
                    Some(_) if !is_subscribed(node) => {
                        let resp3 = conns.iter().any(|(_, f)| f.subscribed() && f.resp3);
                        let total = conns.iter().map(|(_, f)| f.count(Kind::Shard)).sum();
                        Route::Answer(not_subscribed(args, total, resp3))
                    }
                    _ => Route::Node(node),
                }
            }
            None => {
                let shards: Vec<SocketAddr> =
                    conns.iter().filter(|(_, f)| f.count(Kind::Shard) > 0).map(|(n, _)| *n).collect();
                match (shards.is_empty(), subscribed) {
                    (false, _) => Route::Each(shards),
                    (true, Some(node)) => Route::Node(node),
                    (true, None) => Route::Node(default),
                }
            }
        },
        b"RESET" | b"QUIT" => return None,
        _ => {
            let resp2 = conns.iter().find(|(_, f)| f.subscribed() && !f.resp3).map(|(n, _)| *n);
            return resp2.map(Route::Context);
        }
    };
    Some(route)
}

/// What a subscribed node answers to `SUNSUBSCRIBE` of shard channels the connection does not
/// have: one confirmation per channel with the unchanged count, or `CROSSSLOT`.
fn not_subscribed(channels: &[&[u8]], total: usize, resp3: bool) -> Vec<Bytes> {
    let first = channels.first().map(|c| slot(c));
    if channels.iter().any(|c| Some(slot(c)) != first) {
        return vec![Bytes::from_static(b"-CROSSSLOT Keys in request don't hash to the same slot\r\n")];
    }
    let kind = if resp3 { '>' } else { '*' };
    let confirm = |channel: &&[u8]| {
        let mut out = BytesMut::new();
        out.put_slice(format!("{kind}3\r\n$12\r\nsunsubscribe\r\n${}\r\n", channel.len()).as_bytes());
        out.put_slice(channel);
        out.put_slice(format!("\r\n:{total}\r\n").as_bytes());
        out.freeze()
    };
    channels.iter().map(confirm).collect()
}

/// A confirmation with `add` added to its count.
fn add_to_count(raw: Bytes, add: usize) -> Bytes {
    // The count is the last line, `:<n>\r\n`; nothing after the last ':' but its digits.
    let Some(colon) = raw.iter().rposition(|b| *b == b':') else { return raw };
    let digits = raw.get(colon + 1..raw.len().saturating_sub(2)).unwrap_or_default();
    let Some(n) = std::str::from_utf8(digits).ok().and_then(|d| d.parse::<usize>().ok()) else { return raw };
    let mut out = BytesMut::from(raw.get(..=colon).unwrap_or_default());
    out.put_slice(format!("{}\r\n", n.saturating_add(add)).as_bytes());
    out.freeze()
}

impl PubSub {
    /// True while the client has pub/sub or MONITOR connections (or lost one).
    pub(super) fn active(&self) -> bool {
        !self.conns.is_empty() || self.lost.is_some()
    }

    /// Where `request` goes; see [`route`].
    pub(super) fn route(&self, request: &Message, routes: &Routes<'_>) -> Option<Route> {
        let conns: Vec<(SocketAddr, &Follower)> = self.conns.iter().map(|c| (c.node, &c.follower)).collect();
        route(&conns, self.global, request, routes)
    }

    /// Closes every connection: RESET ends subscriptions and MONITOR.
    pub(super) fn reset(&mut self) {
        self.conns.clear();
        self.global = None;
    }

    /// A message pushed on another connection of the client's (CLIENT TRACKING).
    pub(super) fn push(&mut self, message: Message) {
        self.pushed.push_back(message);
    }

    pub(super) fn take_pushed(&mut self) -> Vec<Message> {
        self.pushed.drain(..).collect()
    }

    pub(super) fn take_lost(&mut self) -> Option<String> {
        self.lost.take()
    }

    /// `raw`, read on `node`'s connection, with the count of a confirmation made the client's
    /// total: the subscriptions of its other connections added.
    fn recount(&self, node: SocketAddr, raw: Bytes) -> Bytes {
        let Some(kind) = confirmation(&raw).map(|c| c.kind) else { return raw };
        let others = self.conns.iter().filter(|c| c.node != node).map(|c| count(&c.follower, kind)).sum();
        if others == 0 {
            raw
        } else {
            add_to_count(raw, others)
        }
    }

    /// Drops a connection that broke; remembers if that lost subscriptions or MONITOR.
    fn broken(&mut self, at: usize, reason: &str) {
        if at < self.conns.len() {
            let conn = self.conns.remove(at);
            if conn.follower.subscribed() || conn.follower.monitor {
                self.lost = Some(format!("connection to {} lost while subscribed or monitoring: {reason}", conn.node));
            }
        }
    }

    /// Ready when messages came (or a connection was lost) while the client was idle.
    pub(super) fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut at = 0;
        while at < self.conns.len() && self.lost.is_none() {
            let Some(node) = self.conns.get(at).map(|c| c.node) else { break };
            let mut read = Vec::new();
            let mut failed = None;
            if let Some(c) = self.conns.get_mut(at) {
                loop {
                    match c.conn.poll_next(cx, ReadMode::Wait) {
                        Poll::Ready(Ok(raw)) => {
                            c.follower.observe(&raw);
                            read.push(raw);
                        }
                        Poll::Ready(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
            }
            for raw in read {
                let raw = self.recount(node, raw);
                self.pushed.push_back(Message::pushed(raw, Protocol::Valkey, Instant::now()));
            }
            match failed {
                Some(e) => self.broken(at, &e.to_string()),
                None => at += 1,
            }
        }
        if self.pushed.is_empty() && self.lost.is_none() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl Conn {
    /// Writes `raw` and reads until the server has answered it: every message read, in
    /// order, true for a reply (the first is the response), false for a pushed message.
    async fn talk(&mut self, view: Option<&RequestView<'_>>, raw: &[u8]) -> std::io::Result<Vec<(bool, Bytes)>> {
        let mut expect = view.map_or(Expect::One, Expect::of);
        self.conn.write_all(raw).await?;
        let mut read = Vec::new();
        loop {
            let raw = self.conn.next().await?;
            let class = self.follower.classify(&raw, Some(&expect));
            self.follower.observe(&raw);
            if class == Class::Pushed {
                read.push((false, raw));
                continue;
            }
            let done = self.follower.reply_completes(&raw, &mut expect);
            if !read.iter().any(|(reply, _)| *reply) {
                if let Some(view) = view {
                    self.follower.answered(view, &raw);
                }
            }
            read.push((true, raw));
            if done {
                return Ok(read);
            }
        }
    }
}

impl ValkeySinkCluster {
    /// Where `request` goes when pub/sub is involved; `None`: the usual way.
    pub(super) fn pubsub_route(&self, request: &Message) -> Option<Route> {
        if self.txn.is_some() {
            // Queued in the transaction: a subscription there is not supported.
            return is_pubsub_command(request).then(|| {
                let text = b"-ERR shotover: pub/sub inside MULTI is not supported by ValkeySinkCluster\r\n";
                Route::Answer(vec![Bytes::from_static(text)])
            });
        }
        self.shared.routes(|routes| self.pubsub.route(request, routes))
    }

    /// The index of the client's pub/sub connection to `node`, opened (and the client's
    /// session replayed on it) if needed.
    async fn pubsub_conn(&mut self, node: SocketAddr) -> Result<usize, ChainError> {
        if let Some(at) = self.pubsub.conns.iter().position(|c| c.node == node) {
            return Ok(at);
        }
        let tls = self.shared.tls.as_ref().map(|connector| node_tls(connector, node));
        let mut conn = ValkeyConnection::connect(node, self.shared.timeout, tls.as_ref())
            .await
            .map_err(|e| ChainError::upstream(format!("cannot connect to cluster node {node}")).caused_by(e))?;
        let mut follower = Follower::default();
        // Tracking is not replayed here: its pushes would mix with the subscription's.
        for (_, raw) in self.session.iter().filter(|(kind, _)| *kind != SessionKind::Tracking) {
            conn.write_all(raw).await?;
            let reply = conn.next().await?;
            if is_error(&reply) {
                let text = String::from_utf8_lossy(&reply).trim_end().to_string();
                return Err(ChainError::upstream(format!("node {node} refused the session: {text}")));
            }
            if let Some(view) = RequestView::new(raw) {
                follower.answered(&view, &reply);
            }
        }
        self.pubsub.conns.push(Conn { node, conn, follower });
        Ok(self.pubsub.conns.len() - 1)
    }

    /// Sends `request` on `node`'s pub/sub connection; see [`Conn::talk`]. Counts in
    /// confirmations are the client's totals.
    async fn exchange(&mut self, node: SocketAddr, request: &Message) -> Result<Vec<(bool, Bytes)>, String> {
        let at = self.pubsub_conn(node).await.map_err(|e| e.to_string())?;
        let raw = request.raw().cloned().unwrap_or_default();
        let view = request.valkey_request();
        let result = match self.pubsub.conns.get_mut(at) {
            Some(conn) => conn.talk(view.as_ref(), &raw).await,
            None => return Err(format!("no connection to {node}")),
        };
        match result {
            Ok(read) => Ok(read.into_iter().map(|(reply, raw)| (reply, self.pubsub.recount(node, raw))).collect()),
            Err(e) => {
                let reason = format!("node {node}: {e}");
                self.pubsub.broken(at, &reason);
                Err(reason)
            }
        }
    }

    /// Runs one request that concerns pub/sub: its response, and what was pushed around it
    /// in arrival order, go to `out`.
    pub(super) async fn pubsub_step(&mut self, request: &Message, route: Route, out: &mut Vec<Message>) {
        let view = request.valkey_request();
        let is = |name: &str| view.as_ref().is_some_and(|v| v.is(name));
        let mut responded = false;
        let mut emit = |out: &mut Vec<Message>, read: Vec<(bool, Bytes)>| {
            for (reply, raw) in read {
                if reply && !responded {
                    responded = true;
                    out.push(reply_message(request, raw));
                } else {
                    out.push(Message::pushed(raw, Protocol::Valkey, Instant::now()));
                }
            }
        };
        let mut failure = None;
        match route {
            Route::Answer(messages) => emit(out, messages.into_iter().map(|m| (true, m)).collect()),
            Route::Node(mut node) => {
                if is("SUBSCRIBE") || is("PSUBSCRIBE") || is("MONITOR") {
                    self.pubsub.global.get_or_insert(node);
                }
                for round in 0..5 {
                    match self.exchange(node, request).await {
                        Ok(read) => {
                            // A shard channel's slot moved: ask its new master.
                            let first = read.iter().find(|(reply, _)| *reply).map(|(_, raw)| raw);
                            match first.and_then(|raw| redirection(raw)) {
                                Some((true, slot, to)) if round < 4 && to != node => {
                                    self.shared.map.borrow_mut().moved(slot, to);
                                    emit(out, read.into_iter().filter(|(reply, _)| !reply).collect());
                                    node = to;
                                }
                                _ => {
                                    emit(out, read);
                                    break;
                                }
                            }
                        }
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
            Route::Each(nodes) => {
                for node in nodes {
                    match self.exchange(node, request).await {
                        Ok(read) => emit(out, read),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                }
            }
            Route::Context(node) => match self.exchange(node, request).await {
                Ok(mut read) => {
                    // The node would redirect a key it does not own; for a key of its own it
                    // refuses the command in this context: that is the answer.
                    for (reply, raw) in read.iter_mut() {
                        if *reply && redirection(raw).is_some() {
                            let name = view.as_ref().map(|v| v.name.to_ascii_lowercase()).unwrap_or_default();
                            *raw = Bytes::from(format!(
                                "-ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
                                String::from_utf8_lossy(&name)
                            ));
                        }
                    }
                    emit(out, read);
                }
                Err(e) => failure = Some(e),
            },
        }
        if !responded {
            self.shared.failed_requests.inc();
            let reason = failure.unwrap_or_else(|| "no reply".to_string());
            out.push(Message::valkey_error_to(request, format!("ERR shotover: {reason}")));
        }
        // Connections with nothing to follow close: the next request opens them again.
        self.pubsub.conns.retain(|c| c.follower.subscribed() || c.follower.monitor);
    }
}

#[cfg(test)]
#[path = "pubsub_tests.rs"]
mod tests;
