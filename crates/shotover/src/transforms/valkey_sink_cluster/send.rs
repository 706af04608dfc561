//! Sending: sub-requests go out to their nodes and their replies come back.
//!
//! Clients that keep no state on their connection share the core's multiplexed connections
//! to each node ([`Mux`](crate::sinks::valkey_mux::Mux)); the others (see
//! [`super::route::is_stateful`]) get connections of their own, on which their `AUTH`/`HELLO`
//! session is replayed. Either way every node's sub-requests go out before any reply is
//! awaited. `MOVED` and `ASK` replies are followed
//! here, and the slot map is fetched again when it proves wrong or a node is lost.

use super::plan::{SessionKind, Sub};
use super::ValkeySinkCluster;
use crate::chain::{ChainError, ChainResult};
use crate::message::{Message, Protocol};
use crate::sinks::valkey::ValkeyConnection;
use crate::sinks::valkey_mux::MuxError;
use crate::sinks::valkey_slots::{fetch, node_tls, Fetched};
use crate::stream::ReadMode;
use bytes::{BufMut, Bytes, BytesMut};
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;

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
        self.reply = reply.ok_or_else(|| format!("node {}: missing reply", self.node).into());
    }
}

/// `-MOVED <slot> <node>` or `-ASK <slot> <node>`: whether it is MOVED, the slot and the
/// node. Any other reply is looked at for its first bytes only, whatever its size.
pub(super) fn redirection(raw: &[u8]) -> Option<(bool, u16, SocketAddr)> {
    let moved = if raw.starts_with(b"-MOVED ") {
        true
    } else if raw.starts_with(b"-ASK ") {
        false
    } else {
        return None;
    };
    let text = std::str::from_utf8(raw).ok()?;
    let mut words = text.trim_end().split(' ').skip(1);
    Some((moved, words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

/// The next reply on a client's own connection. RESP3 pushes read before it (the
/// invalidations of CLIENT TRACKING) are kept in `pushes` for the client: a push is never the
/// reply to a command on these connections (pub/sub runs on connections of its own).
async fn next_reply(conn: &mut ValkeyConnection, pushes: &mut Vec<Bytes>) -> std::io::Result<Bytes> {
    loop {
        let raw = conn.next().await?;
        if raw.first() != Some(&b'>') {
            return Ok(raw);
        }
        pushes.push(raw);
    }
}

impl ValkeySinkCluster {
    /// Messages a node pushed on the client's own connections while the client was idle
    /// (CLIENT TRACKING's invalidations): only for a client that turned tracking on. Anything
    /// else read there answers no request, so that connection is dropped.
    pub(super) fn poll_own_pushes(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.tracking {
            return false;
        }
        // At most this many messages per connection and poll, so that a node streaming
        // invalidations (BCAST) cannot hold the core; the rest wait for the next poll.
        const PER_POLL: usize = 256;
        let mut found = false;
        let mut untrusted = Vec::new();
        for (node, conn) in self.conns.iter_mut() {
            for read in 0..=PER_POLL {
                if read == PER_POLL {
                    cx.waker().wake_by_ref();
                    break;
                }
                match conn.poll_next(cx, ReadMode::Wait) {
                    Poll::Ready(Ok(raw)) if raw.first() == Some(&b'>') => {
                        self.pubsub.push(Message::pushed(raw, Protocol::Valkey, Instant::now()));
                        found = true;
                    }
                    Poll::Ready(_) => {
                        untrusted.push(*node);
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if !untrusted.is_empty() {
            self.drop_conns(|node| untrusted.contains(node));
            found = true;
        }
        found
    }

    /// Connects to `node` if needed, replaying the client's session. Its errors come
    /// before any of the client's commands is written: all are retry-safe, so the commands
    /// may go to another node.
    async fn connection(&mut self, node: SocketAddr) -> ChainResult<&mut ValkeyConnection> {
        if !self.conns.contains_key(&node) {
            let tls = self.shared.tls.as_ref().map(|connector| node_tls(connector, node));
            let mut conn = ValkeyConnection::connect(node, self.shared.timeout, tls.as_ref()).await.map_err(|e| {
                ChainError::upstream(format!("cannot connect to cluster node {node}")).caused_by(e).retry_safe()
            })?;
            let mut pushes = Vec::new();
            for (_, raw) in &self.session {
                conn.write_all(raw).await.map_err(|e| ChainError::from(e).retry_safe())?;
                let reply = next_reply(&mut conn, &mut pushes).await.map_err(|e| ChainError::from(e).retry_safe())?;
                if is_error(&reply) {
                    return Err(ChainError::upstream(format!(
                        "node {node} refused the session: {}",
                        String::from_utf8_lossy(&reply).trim_end()
                    ))
                    .retry_safe());
                }
            }
            for raw in pushes {
                self.pubsub.push(Message::pushed(raw, Protocol::Valkey, Instant::now()));
            }
            self.conns.insert(node, conn);
        }
        self.conns.get_mut(&node).ok_or_else(|| ChainError::proxy(format!("no connection to {node}")).retry_safe())
    }

    /// Sends every pending sub-request: all writes first, then the replies node by node.
    /// True when a node could not be reached or its connection broke.
    pub(super) async fn run(&mut self, subs: &mut [Sub], pending: &[usize]) -> bool {
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
            // A failed connect sent nothing (retry-safe: the commands may go elsewhere); a
            // failed write may have sent part (an I/O error is retry-unsafe), so those commands
            // count as sent and are not retried.
            let result = match self.connection(node).await {
                Ok(conn) => conn.write_all(&buf).await.map_err(ChainError::from),
                Err(e) => Err(e),
            };
            let sent = result.as_ref().err().is_none_or(|e| !e.is_retry_safe());
            for &i in pending {
                if let Some(sub) = subs.get_mut(i).filter(|s| s.node == node) {
                    sub.sent = sent;
                    if let Err(e) = &result {
                        sub.reply = Err(e.to_string().into());
                    }
                }
            }
            match result {
                Ok(()) => written.push(node),
                Err(_) => {
                    broken = true;
                    self.drop_conns(|n| *n == node);
                }
            }
        }
        self.shared.source_to_sink.written(self.unsent_batch.take());
        let mut pushes = Vec::new();
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
                        Some(conn) => next_reply(conn, &mut pushes).await.map_err(|e| format!("node {node}: {e}")),
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
                    self.drop_conns(|n| *n == node);
                }
                if let Some(sub) = subs.get_mut(i) {
                    match failed {
                        Some(e) => sub.reply = Err(e.into()),
                        None => sub.take_replies(&mut replies.into_iter()),
                    }
                }
            }
        }
        for raw in pushes {
            self.pubsub.push(Message::pushed(raw, Protocol::Valkey, Instant::now()));
        }
        broken
    }

    /// Follows MOVED and ASK redirections, a few times at most.
    pub(super) async fn follow_redirections(&mut self, subs: &mut [Sub]) -> bool {
        let mut moved = false;
        for round in 0..5 {
            if round > 1 {
                // A slot being moved can bounce between nodes for a moment: back off a little.
                crate::rt::sleep(Duration::from_millis(20 * round)).await;
            }
            let mut pending = Vec::new();
            for (i, sub) in subs.iter_mut().enumerate() {
                let Ok(reply) = &sub.reply else { continue };
                let Some((is_moved, slot, addr)) = redirection(reply) else { continue };
                match is_moved {
                    true => {
                        self.shared.map.borrow_mut().moved(slot, addr);
                        moved = true;
                        sub.node = addr;
                        pending.push(i);
                    }
                    false => {
                        // ASKING applies to the next command only: send both together.
                        let mut raw = BytesMut::from(&b"*1\r\n$6\r\nASKING\r\n"[..]);
                        raw.put_slice(&sub.raw);
                        let asked = Sub {
                            node: addr,
                            raw: raw.freeze(),
                            slot: sub.slot,
                            reply: Err(Cow::Borrowed("")),
                            sent: false,
                            asking: true,
                        };
                        let mut one = [asked];
                        self.run(&mut one, &[0]).await;
                        let [asked] = one;
                        sub.reply = asked.reply;
                    }
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
        for &i in pending {
            let Some(node) = subs.get(i).map(|s| s.node).filter(|n| n.port() != 0) else { continue };
            if tickets.iter().any(|(n, _)| *n == node) {
                continue;
            }
            let replies: usize =
                pending.iter().filter_map(|&j| subs.get(j)).filter(|s| s.node == node).map(Sub::replies).sum();
            // Straight into the shared connection's outbox: one copy of each command.
            let ticket = self.shared.mux(node).submit_with(replies, |outbox| {
                for sub in pending.iter().filter_map(|&j| subs.get(j)).filter(|s| s.node == node) {
                    outbox.put_slice(&sub.raw);
                }
            });
            tickets.push((node, ticket));
        }
        self.shared.source_to_sink.written(self.unsent_batch.take());
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
                    Some(e) => sub.reply = Err(e.clone().into()),
                }
            }
        }
        broken
    }

    /// Sends one command to one node and waits for its reply.
    pub(super) async fn send_one(&mut self, node: SocketAddr, raw: Bytes) -> Result<Bytes, String> {
        let mut one = [Sub { node, raw, slot: None, reply: Err("not sent".into()), sent: false, asking: false }];
        if self.run(&mut one, &[0]).await {
            self.refresh_map().await;
        }
        let [sub] = one;
        sub.reply.map_err(Cow::into_owned)
    }

    /// Fetches the slot map again, from a known master or a contact point.
    pub(super) async fn refresh_map(&mut self) {
        let mut nodes = self.shared.map.borrow().masters.clone();
        nodes.extend(self.shared.contact.iter().copied());
        let want_commands = self.shared.want_commands.get();
        // Only the login goes with the proxy's own questions (no name, no tracking).
        let login: Vec<Bytes> = (self.session.iter())
            .filter(|(kind, _)| matches!(kind, SessionKind::Auth | SessionKind::Hello))
            .map(|(_, raw)| raw.clone())
            .collect();
        match fetch(&nodes, self.shared.timeout, self.shared.tls.as_ref(), &login, want_commands).await {
            Ok(Fetched { map, commands }) => {
                // Shared connections to nodes that are no longer in the cluster (or gone)
                // close once what they owe is answered.
                let direct = self.shared.direct;
                let known = |node: &SocketAddr| map.masters.contains(node) || map.replicas.contains(node);
                self.shared.muxes.borrow_mut().retain(|node, _| known(node) || Some(*node) == direct);
                *self.shared.map.borrow_mut() = map;
                self.shared.want_commands.set(false);
                if commands.is_some() {
                    self.shared.commands_read_at.set(Some(Instant::now()));
                }
                match commands {
                    Some(Ok(table)) => *self.shared.commands.borrow_mut() = Some(table),
                    Some(Err(e)) => tracing::warn!(
                        "the cluster refused COMMAND ({e}); routing with Valkey 8.0.1's built-in command table"
                    ),
                    None => {}
                }
            }
            Err(e) => tracing::warn!("cannot refresh the cluster slot map: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::A;
    use super::super::Shared;
    use super::*;
    use crate::chain::{Retry, Side};
    use crate::sinks::testing::{closed_port, on_a_core};
    use crate::sinks::valkey_slots::SlotMap;
    use prometheus::IntCounter;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;

    fn sub(asking: bool) -> Sub {
        Sub { node: A, raw: Bytes::new(), slot: None, reply: Err("not sent".into()), sent: false, asking }
    }

    #[test]
    fn a_sub_request_takes_its_own_replies() {
        let (plain, asking) = (sub(false), sub(true));
        assert_eq!((plain.replies(), asking.replies()), (1, 2));
        let mut replies = [&b"$1\r\n1\r\n"[..], b"+OK\r\n", b"$1\r\n2\r\n", b"-ERR no\r\n", b":5\r\n"]
            .map(Bytes::from_static)
            .into_iter();
        let mut first = sub(false);
        first.take_replies(&mut replies);
        assert_eq!(first.reply, Ok(Bytes::from_static(b"$1\r\n1\r\n")));
        // After ASKING's +OK, the command's reply.
        let mut asked = sub(true);
        asked.take_replies(&mut replies);
        assert_eq!(asked.reply, Ok(Bytes::from_static(b"$1\r\n2\r\n")));
        // ASKING refused: its error is the reply, and the command's reply is used up.
        let mut refused = sub(true);
        refused.take_replies(&mut replies);
        assert_eq!(refused.reply, Ok(Bytes::from_static(b"-ERR no\r\n")));
        let mut missing = sub(false);
        missing.take_replies(&mut replies);
        assert_eq!(missing.reply, Err("node 10.0.0.1:7000: missing reply".into()));
    }

    /// A client with connections of its own, of a cluster whose only node is `node`.
    fn dedicated_client(node: SocketAddr) -> ValkeySinkCluster {
        client(node, SlotMap::default(), true)
    }

    /// A client of a cluster whose only node is `node`, with slot map `map`.
    fn client(node: SocketAddr, map: SlotMap, dedicated: bool) -> ValkeySinkCluster {
        let shared = Shared {
            contact: vec![node],
            direct: None,
            timeout: Duration::from_secs(1),
            tls: None,
            map: RefCell::new(map),
            commands: RefCell::new(None),
            want_commands: Cell::new(false),
            commands_read_at: Cell::new(None),
            connection_count: 1,
            muxes: RefCell::new(HashMap::new()),
            next_mux: Cell::new(0),
            failed_requests: IntCounter::new("failed", "failed").unwrap(),
            source_to_sink: crate::observability::metrics::SourceToSink::unregistered(),
        };
        ValkeySinkCluster {
            shared: Rc::new(shared),
            conns: HashMap::new(),
            session: Vec::new(),
            txn: None,
            watch_node: None,
            dedicated,
            pubsub: super::super::pubsub::PubSub::default(),
            tracking: false,
            scratch: Default::default(),
            unsent_batch: None,
        }
    }

    #[test]
    fn an_unreachable_node_is_an_upstream_failure_safe_to_retry_elsewhere() {
        let node = closed_port();
        let ((side, retry, text), (broken, sent, reply)) = on_a_core(move || async move {
            let mut client = dedicated_client(node);
            let e = client.connection(node).await.err().expect("nothing listens there");
            let mut one = [Sub { node, raw: Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), ..sub(false) }];
            let broken = client.run(&mut one, &[0]).await;
            let [sub] = one;
            ((e.side(), e.retry(), e.to_string()), (broken, sub.sent, sub.reply))
        });
        assert_eq!((side, retry), (Side::Upstream, Retry::Safe));
        assert!(text.starts_with(&format!("cannot connect to cluster node {node}: ")), "{text}");
        // Retry-safe: the command counts as not sent, so it may go to the slot's new master.
        assert!(broken && !sent);
        assert_eq!(reply, Err(text.into()));
    }

    /// A node that answers `+OK` to every command (each starts with `*`), on every
    /// connection, and counts the connections.
    fn ok_node() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        let commands = buf.get(..n).unwrap_or_default().iter().filter(|b| **b == b'*').count();
                        if stream.write_all(&b"+OK\r\n".repeat(commands)).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (address, connections)
    }

    #[test]
    fn a_blocking_command_never_goes_on_a_shared_connection() {
        let (node, connections) = ok_node();
        let (muxes, own, replies) = on_a_core(move || async move {
            let mut client = client(node, SlotMap::from_ranges(&[(0, 16383, node)]), false);
            let batch = [&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..], b"*3\r\n$5\r\nBLPOP\r\n$1\r\nl\r\n$1\r\n0\r\n"];
            let requests = batch
                .iter()
                .map(|raw| {
                    crate::message::Message::from_bytes(
                        Bytes::copy_from_slice(raw),
                        crate::message::Protocol::Valkey,
                        std::time::Instant::now(),
                    )
                })
                .collect();
            let responses =
                crate::chain::Transform::transform(&mut client, &mut crate::chain::ChainState::last(requests))
                    .await
                    .unwrap();
            let replies: Vec<Bytes> = responses.iter().filter_map(|r| r.raw().cloned()).collect();
            let muxes = client.shared.muxes.borrow().len();
            (muxes, client.conns.contains_key(&node), replies)
        });
        // The whole batch went on the client's own connection: no shared one was opened.
        assert_eq!((muxes, own), (0, true));
        assert_eq!(replies, vec![Bytes::from_static(b"+OK\r\n"); 2]);
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
