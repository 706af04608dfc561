//! Planning: how one client request becomes sub-requests, each for one node, and how their
//! replies will be merged back ([`Merge`]).
//!
//! A command with a key goes to the master of the key's slot. `MGET`, `MSET` and multi-key
//! `DEL`/`EXISTS`/`UNLINK`/`TOUCH` are split into one sub-request per slot (Valkey Cluster
//! refuses keys of different slots in one command, even on one node). Node-wide commands
//! (`DBSIZE`, `KEYS`, `FLUSHALL`, `FLUSHDB`, `SCRIPT`) go to every master. `SCAN` goes to the
//! master its cursor names. Commands without a key go to [`Routes::default_node`]. Requests
//! the proxy answers itself (pub/sub subscriptions, `MONITOR`, transaction commands outside
//! a transaction) get no sub-request and a [`Merge::Error`].

use super::route::Routes;
use crate::message::Message;
use crate::sinks::valkey_cluster::slot;
use bytes::{BufMut, Bytes, BytesMut};
use shotover_protocols::valkey::command::array_strings;
use std::net::SocketAddr;

/// One request sent to one node.
pub(super) struct Sub {
    pub(super) node: SocketAddr,
    pub(super) raw: Bytes,
    pub(super) slot: Option<u16>,
    pub(super) reply: Result<Bytes, String>,
    /// Written to its node: only a sub-request never sent may be retried elsewhere.
    pub(super) sent: bool,
    /// `raw` is `ASKING` followed by the command: two replies, the command's is the second.
    pub(super) asking: bool,
}

/// How the replies of a request's sub-requests become its response.
pub(super) enum Merge {
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

/// What became of one request.
pub(super) struct Plan {
    /// Its sub-requests: these indices of the batch's list of sub-requests.
    pub(super) subs: std::ops::Range<usize>,
    pub(super) merge: Merge,
    /// `AUTH` or `HELLO`: once it succeeds, it is replayed on the client's new connections.
    pub(super) session: bool,
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

impl Routes<'_> {
    /// Splits one request into sub-requests (appended to `subs`).
    pub(super) fn plan(&self, request: &Message, subs: &mut Vec<Sub>) -> Plan {
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
                let mut masters = self.map.masters.clone();
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
                    let node = self.map.master_of(*s);
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
                    let node = self.map.master_of(s);
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
                    let node = self.map.master_of(s);
                    push(subs, node, command(&parts), Some(s));
                }
                Merge::AllOk
            }
            b"DBSIZE" | b"KEYS" | b"FLUSHALL" | b"FLUSHDB" | b"SCRIPT" => {
                let masters = self.map.masters.clone();
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
}
