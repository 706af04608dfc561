//! Transactions: `MULTI`/`EXEC`/`DISCARD` and `WATCH`/`UNWATCH`.
//!
//! Valkey Cluster runs a transaction on one node, so a client's transaction is pinned to the
//! node of its keys: the node of the keys under `WATCH`, else the node of the first queued
//! command's key. Commands without a key queued before it are held (answered QUEUED) and
//! sent after MULTI on that node; if none has a key, EXEC runs them on
//! [`super::route::Routes::default_node`].
//! `MULTI` reaches that node only once it is known. A command for another node answers
//! `CROSSSLOT` and makes `EXEC` answer `EXECABORT` (the node's transaction is discarded).
//! While a transaction or a `WATCH` is open, the client's requests run one at a time on
//! connections of its own; requests outside `MULTI` (after `WATCH`) are planned as usual.

use super::merge::{merge, reply_message};
use super::ValkeySinkCluster;
use crate::message::Message;
use bytes::Bytes;
use shotover_protocols::valkey::frame::is_error_reply as is_error;
use std::net::SocketAddr;

/// A transaction in progress. It is opened on a node only with its first command, once the
/// node is known from that command's key.
pub(super) struct Txn {
    pub(super) node: Option<SocketAddr>,
    /// A command could not join the transaction: EXEC answers EXECABORT.
    pub(super) aborted: bool,
    /// Commands without a key queued before the node was known (answered QUEUED by the
    /// proxy): sent after MULTI once a key names the node, or to the default node at EXEC.
    pub(super) deferred: Vec<Bytes>,
}

/// Requests that start a transaction or a WATCH.
pub(super) fn is_transaction_command(request: &Message) -> bool {
    request.valkey_request().is_some_and(|v| v.special.starts_transaction())
}

impl ValkeySinkCluster {
    /// Runs one request while a transaction (or WATCH) is in progress.
    pub(super) async fn transaction_step(&mut self, request: &Message) -> Message {
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
            b"MULTI" | b"WATCH" if self.txn.is_some() => {
                // As Valkey 8 answers: the command is refused and the transaction will fail.
                if let Some(txn) = self.txn.as_mut() {
                    txn.aborted = true;
                }
                local(b"-ERR Command not allowed inside a transaction\r\n")
            }
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
            // Inside MULTI, queued like any command (Valkey answers QUEUED, then OK in EXEC).
            b"UNWATCH" if self.txn.is_some() => self.txn_command(request, raw).await,
            b"UNWATCH" => match self.watch_node.take() {
                Some(n) => reply(self.send_one(n, raw).await),
                None => local(b"+OK\r\n"),
            },
            b"MULTI" => {
                self.txn = Some(Txn { node: self.watch_node, aborted: false, deferred: Vec::new() });
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
                let mut aborted = txn.aborted;
                let node = match txn.node {
                    // Only commands without a key were queued: they run on the default node.
                    None if exec && !txn.deferred.is_empty() && !aborted => {
                        let Some(node) = self.default_node() else {
                            return Message::valkey_error_to(request, "ERR shotover: no cluster node is known");
                        };
                        match self.open_on(node, &txn.deferred).await {
                            Ok(refused) => aborted = refused,
                            Err(response) => return reply_message(request, response),
                        }
                        Some(node)
                    }
                    node => node,
                };
                match (node, aborted) {
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
                merge(request, &plan, &mut subs, &self.shared.failed_requests)
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
            (None, None) => {
                // No key yet: the node is not known. Queued here, sent once it is.
                if let Some(txn) = self.txn.as_mut() {
                    txn.deferred.push(raw);
                }
                return reply_message(request, Bytes::from_static(b"+QUEUED\r\n"));
            }
            (None, Some(node)) => {
                let deferred = self.txn.as_mut().map(|t| std::mem::take(&mut t.deferred)).unwrap_or_default();
                match self.open_on(node, &deferred).await {
                    Ok(aborted) => {
                        if let Some(txn) = self.txn.as_mut() {
                            txn.node = Some(node);
                            txn.aborted |= aborted;
                        }
                        node
                    }
                    Err(response) => return reply_message(request, response),
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
}

impl ValkeySinkCluster {
    /// Opens the transaction on `node` and queues there the commands deferred until it was
    /// known. `Ok(true)` when one of them was refused (EXEC then aborts, as on Valkey);
    /// `Err` with the response when MULTI itself failed.
    async fn open_on(&mut self, node: SocketAddr, deferred: &[Bytes]) -> Result<bool, Bytes> {
        let error = |e: String| Bytes::from(format!("-ERR shotover: {e}\r\n"));
        match self.send_one(node, Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n")).await {
            Ok(ok) if !is_error(&ok) => {}
            Ok(err) => return Err(err),
            Err(e) => return Err(error(e)),
        }
        let mut aborted = false;
        for raw in deferred {
            match self.send_one(node, raw.clone()).await {
                Ok(queued) => aborted |= is_error(&queued),
                Err(_) => aborted = true,
            }
        }
        Ok(aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::request;
    use super::*;

    #[test]
    fn multi_and_watch_start_a_transaction() {
        for parts in [&[&b"MULTI"[..]][..], &[b"multi"], &[b"WATCH", b"foo"], &[b"Watch", b"foo", b"bar"]] {
            assert!(is_transaction_command(&request(parts)), "{parts:?}");
        }
        // Without an open transaction these are answered by the plan ("... without MULTI"),
        // or, for UNWATCH, planned like any command without a key.
        for parts in [&[&b"EXEC"[..]][..], &[b"DISCARD"], &[b"UNWATCH"], &[b"GET", b"MULTI"], &[b"MULTIPLY"]] {
            assert!(!is_transaction_command(&request(parts)), "{parts:?}");
        }
    }
}
