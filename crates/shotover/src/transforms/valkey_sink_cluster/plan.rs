//! Planning: how one client request becomes sub-requests, each for one node, and how their
//! replies will be merged back ([`Merge`]).
//!
//! A command with a key goes to the master of the key's slot. `MGET`, `MSET` and multi-key
//! `DEL`/`EXISTS`/`UNLINK`/`TOUCH` are split into one sub-request per slot (Valkey Cluster
//! refuses keys of different slots in one command, even on one node). Node-wide commands
//! (`DBSIZE`, `KEYS`, `FLUSHALL`, `FLUSHDB`, `SCRIPT`) go to every master, and `SCAN` to the
//! master its cursor names, unless `direct_connection` is set: then they go to that node
//! alone, as every command without a key does. Commands without a key go to
//! [`Routes::default_node`]. Requests the proxy answers itself (transaction commands outside
//! a transaction) get no sub-request and a [`Merge::Error`]; pub/sub commands and `MONITOR`
//! never get here (see `pubsub.rs`).

use super::route::{is_script, script_key, Routes};
use crate::message::Message;
use crate::sinks::valkey_slots::slot;
use bytes::Bytes;
use shotover_protocols::valkey::command::{array_strings, request_word};
use std::borrow::Cow;
use std::net::SocketAddr;

/// One request sent to one node.
pub(super) struct Sub {
    pub(super) node: SocketAddr,
    pub(super) raw: Bytes,
    pub(super) slot: Option<u16>,
    /// The reply, or why there is none (static text where it can be, to allocate nothing).
    pub(super) reply: Result<Bytes, Cow<'static, str>>,
    /// Written to its node: only a sub-request never sent may be retried elsewhere.
    pub(super) sent: bool,
    /// `raw` is `ASKING` followed by the command: two replies, the command's is the second.
    pub(super) asking: bool,
}

/// How the replies of a request's sub-requests become its response.
#[derive(Debug, PartialEq)]
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
pub(super) fn command(parts: &[&[u8]]) -> Bytes {
    shotover_protocols::valkey::command::encode(parts)
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
        // The name upper-cased on the stack: every command name Valkey has fits in 32 bytes.
        let mut upper = [0u8; 32];
        let long_name;
        let name: &[u8] = match request_word(&raw, 0) {
            Some(n) => match upper.get_mut(..n.len()) {
                Some(buf) => {
                    buf.copy_from_slice(n);
                    buf.make_ascii_uppercase();
                    buf
                }
                None => {
                    long_name = n.to_ascii_uppercase();
                    &long_name
                }
            },
            None => b"",
        };
        // Only the commands that split, fan out or read more than their first argument need
        // every argument listed (an allocation); the rest route by their first argument.
        let all_args = is_script(name)
            || matches!(
                name,
                b"SCAN"
                    | b"MGET"
                    | b"DEL"
                    | b"EXISTS"
                    | b"UNLINK"
                    | b"TOUCH"
                    | b"MSET"
                    | b"DBSIZE"
                    | b"KEYS"
                    | b"FLUSHALL"
                    | b"FLUSHDB"
                    | b"SCRIPT"
            );
        let words = if all_args { array_strings(&raw) } else { Vec::new() };
        let args = words.get(1..).unwrap_or_default();
        let first_arg = if all_args { args.first().copied() } else { request_word(&raw, 1) };
        let needs_own = |what: &str| Plan {
            subs: start..start,
            merge: Merge::Error(format!("ERR shotover: {what} needs a pub/sub connection, and none is known")),
            session: false,
        };
        let push = |subs: &mut Vec<Sub>, node: Option<SocketAddr>, raw: Bytes, slot: Option<u16>| {
            let reply = match node {
                Some(_) => Err(Cow::Borrowed("not sent")),
                None => Err(Cow::Borrowed("no node serves this slot")),
            };
            let node = node.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            subs.push(Sub { node, raw, slot, reply, sent: false, asking: false });
        };
        let merge = match name {
            b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH" => {
                // Only reached when planning a batch without an open transaction.
                return Plan {
                    subs: start..start,
                    merge: Merge::Error(format!("ERR {} without MULTI", String::from_utf8_lossy(name))),
                    session: false,
                };
            }
            b"DBSIZE" | b"KEYS" | b"FLUSHALL" | b"FLUSHDB" | b"SCRIPT" | b"SCAN" if self.direct.is_some() => {
                // Handling mode: like every command without a key, the direct node's alone
                // (a cluster-aware client asks each node itself).
                push(subs, self.direct, raw.clone(), None);
                Merge::Single
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
            | b"MONITOR" => return needs_own(&String::from_utf8_lossy(name)),
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
                    let mut parts: Vec<&[u8]> = vec![name];
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
                match name {
                    b"DBSIZE" => Merge::Sum,
                    b"KEYS" => Merge::Concat,
                    b"SCRIPT" if exists => Merge::AllOf,
                    _ => Merge::AllOk,
                }
            }
            script if is_script(script) => {
                match script_key(args) {
                    Some(key) => {
                        let (node, s) = self.node_for(key);
                        push(subs, node, raw.clone(), Some(s));
                    }
                    None => push(subs, self.default_node(), raw.clone(), None),
                }
                Merge::Single
            }
            b"AUTH" | b"HELLO" | b"PING" | b"ECHO" | b"INFO" | b"TIME" | b"COMMAND" | b"CLIENT" | b"CLUSTER"
            | b"SELECT" | b"READONLY" | b"READWRITE" | b"RANDOMKEY" | b"LASTSAVE" | b"ROLE" => {
                push(subs, self.default_node(), raw.clone(), None);
                Merge::Single
            }
            _ => match first_arg {
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
        let session = matches!(name, b"AUTH" | b"HELLO");
        Plan { subs: start..subs.len(), merge, session }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{request, routes, three_masters, A, B, C, D};
    use super::*;
    use crate::sinks::valkey_slots::SlotMap;

    /// Plans `parts` after the sub-requests already in `subs`.
    fn plan(routes: &Routes, subs: &mut Vec<Sub>, parts: &[&[u8]]) -> Plan {
        routes.plan(&request(parts), subs)
    }

    /// Where each of `subs` goes, for which slot, with which command.
    fn targets(subs: &[Sub]) -> Vec<(SocketAddr, Option<u16>, Bytes)> {
        subs.iter().map(|s| (s.node, s.slot, s.raw.clone())).collect()
    }

    #[test]
    fn command_is_an_array_of_bulk_strings() {
        assert_eq!(command(&[b"MGET", b"a", b""]), &b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$0\r\n\r\n"[..]);
        assert_eq!(command(&[b"SET", b"k", b"a\r\nb"]), &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n"[..]);
        assert_eq!(command(&[]), &b"*0\r\n"[..]);
    }

    #[test]
    fn a_single_key_command_goes_to_its_slots_master_unchanged() {
        let map = three_masters();
        let mut subs = Vec::new();
        let get = request(&[b"GET", b"foo"]);
        let p = routes(&map).plan(&get, &mut subs);
        assert_eq!((p.subs, p.merge, p.session), (0..1, Merge::Single, false));
        assert_eq!(targets(&subs), vec![(C, Some(12182), get.raw().cloned().unwrap())]);
        assert_eq!((subs[0].reply.clone(), subs[0].sent, subs[0].asking), (Err("not sent".into()), false, false));
        // One key: DEL and MSET with odd arguments are not split (the node judges the latter).
        let p = plan(&routes(&map), &mut subs, &[b"DEL", b"c"]);
        assert_eq!((p.subs, p.merge), (1..2, Merge::Single));
        let p = plan(&routes(&map), &mut subs, &[b"MSET", b"hello", b"1", b"foo"]);
        assert_eq!((p.subs, p.merge), (2..3, Merge::Single));
        assert_eq!((subs[1].node, subs[2].node), (B, A));
    }

    #[test]
    fn mget_is_split_by_slot_and_remembers_where_each_key_went() {
        let map = three_masters();
        let mut subs = Vec::new();
        plan(&routes(&map), &mut subs, &[b"GET", b"hello"]);
        let p = plan(&routes(&map), &mut subs, &[b"MGET", b"foo", b"hello", b"{foo}x", b"c"]);
        assert_eq!(p.subs, 1..4);
        assert_eq!(
            targets(subs.get(1..).unwrap()),
            vec![
                (C, Some(12182), command(&[b"MGET", b"foo", b"{foo}x"])),
                (A, Some(866), command(&[b"MGET", b"hello"])),
                (B, Some(7365), command(&[b"MGET", b"c"])),
            ]
        );
        // Key i is element .1 of the reply of sub-request .0 (indices into the whole batch).
        assert_eq!(p.merge, Merge::Mget(vec![(1, 0), (2, 0), (1, 1), (3, 0)]));
    }

    #[test]
    fn del_exists_and_mset_are_split_by_slot() {
        let map = three_masters();
        let mut subs = Vec::new();
        let p = plan(&routes(&map), &mut subs, &[b"UNLINK", b"foo", b"hello", b"{foo}x"]);
        assert_eq!((p.subs, p.merge), (0..2, Merge::Sum));
        let p = plan(&routes(&map), &mut subs, &[b"MSET", b"hello", b"1", b"foo", b"2", b"{foo}x", b"3"]);
        assert_eq!((p.subs, p.merge), (2..4, Merge::AllOk));
        assert_eq!(
            targets(&subs),
            vec![
                (C, Some(12182), command(&[b"UNLINK", b"foo", b"{foo}x"])),
                (A, Some(866), command(&[b"UNLINK", b"hello"])),
                (A, Some(866), command(&[b"MSET", b"hello", b"1"])),
                (C, Some(12182), command(&[b"MSET", b"foo", b"2", b"{foo}x", b"3"])),
            ]
        );
        // Keys of different slots are split even when one master serves both; the split
        // commands are written anew, their name in upper case.
        let p = plan(&routes(&map), &mut subs, &[b"exists", b"hello", b"bar"]);
        assert_eq!(p.merge, Merge::Sum);
        assert_eq!(
            targets(subs.get(p.subs).unwrap()),
            vec![(A, Some(866), command(&[b"EXISTS", b"hello"])), (A, Some(5061), command(&[b"EXISTS", b"bar"]))]
        );
    }

    #[test]
    fn node_wide_commands_go_to_every_master() {
        let map = three_masters();
        for (parts, merge) in [
            (&[&b"DBSIZE"[..]][..], Merge::Sum),
            (&[b"KEYS", b"user:*"], Merge::Concat),
            (&[b"flushall", b"ASYNC"], Merge::AllOk),
            (&[b"SCRIPT", b"exists", b"sha1", b"sha2"], Merge::AllOf),
            (&[b"SCRIPT", b"LOAD", b"return 1"], Merge::AllOk),
        ] {
            let mut subs = Vec::new();
            let p = plan(&routes(&map), &mut subs, parts);
            assert_eq!((p.subs, p.merge), (0..3, merge), "{parts:?}");
            let raw = command(parts);
            assert_eq!(targets(&subs), vec![(A, None, raw.clone()), (B, None, raw.clone()), (C, None, raw)]);
        }
    }

    #[test]
    fn with_direct_connection_node_wide_commands_and_scan_go_to_the_direct_node_alone() {
        let map = three_masters();
        let direct = Routes { map: &map, direct: Some(D), contact: &[] };
        for parts in [
            &[&b"DBSIZE"[..]][..],
            &[b"keys", b"user:*"],
            &[b"FLUSHALL", b"ASYNC"],
            &[b"FLUSHDB"],
            &[b"SCRIPT", b"EXISTS", b"sha1"],
            &[b"SCRIPT", b"LOAD", b"return 1"],
            &[b"SCAN", b"1234", b"COUNT", b"10"],
        ] {
            let mut subs = Vec::new();
            let p = plan(&direct, &mut subs, parts);
            assert_eq!((p.subs, p.merge), (0..1, Merge::Single), "{parts:?}");
            // Unchanged: a SCAN cursor is the node's own.
            assert_eq!(targets(&subs), vec![(D, None, command(parts))], "{parts:?}");
        }
    }

    #[test]
    fn commands_without_a_key_go_to_the_default_node() {
        let map = three_masters();
        let direct = Routes { map: &map, direct: Some(D), contact: &[] };
        let mut subs = Vec::new();
        for parts in [&[&b"PING"[..]][..], &[b"INFO", b"server"], &[b"CLUSTER", b"INFO"], &[b"MGET"], &[b"ECHO", b"hi"]]
        {
            plan(&routes(&map), &mut subs, parts);
            plan(&direct, &mut subs, parts);
        }
        assert_eq!(subs.iter().map(|s| (s.node, s.slot)).collect::<Vec<_>>(), [(A, None), (D, None)].repeat(5));
        // direct_connection does not change where keys go.
        plan(&direct, &mut subs, &[b"GET", b"c"]);
        assert_eq!(subs.last().map(|s| s.node), Some(B));
    }

    #[test]
    fn auth_and_hello_go_to_the_default_node_and_join_the_session() {
        let map = three_masters();
        let mut subs = Vec::new();
        let auth = plan(&routes(&map), &mut subs, &[b"AUTH", b"user", b"foo"]);
        let hello = plan(&routes(&map), &mut subs, &[b"hello", b"3"]);
        let select = plan(&routes(&map), &mut subs, &[b"SELECT", b"0"]);
        assert_eq!((auth.session, hello.session, select.session), (true, true, false));
        assert_eq!(targets(&subs).iter().map(|t| (t.0, t.1)).collect::<Vec<_>>(), [(A, None); 3]);
    }

    #[test]
    fn scripts_and_functions_go_to_their_first_keys_master() {
        let map = three_masters();
        let mut subs = Vec::new();
        plan(&routes(&map), &mut subs, &[b"EVAL", b"return 1", b"2", b"c", b"foo"]);
        plan(&routes(&map), &mut subs, &[b"fcall_ro", b"f", b"1", b"hello"]);
        plan(&routes(&map), &mut subs, &[b"EVALSHA", b"sha", b"0", b"foo"]);
        plan(&routes(&map), &mut subs, &[b"EVAL", b"return 1", b"many"]);
        let routed = [(B, Some(7365)), (A, Some(866)), (A, None), (A, None)];
        assert_eq!(subs.iter().map(|s| (s.node, s.slot)).collect::<Vec<_>>(), routed, "numkeys 0: no key");
    }

    #[test]
    fn scan_cursor_names_the_master_and_its_cursor() {
        // Masters are taken in address order, whatever the order of the map.
        let map = SlotMap::from_ranges(&[(0, 5460, C), (5461, 10922, A), (10923, 16383, B)]);
        let mut subs = Vec::new();
        let first = plan(&routes(&map), &mut subs, &[b"SCAN", b"0", b"MATCH", b"k*", b"COUNT", b"10"]);
        let next = plan(&routes(&map), &mut subs, &[b"scan", &((5 << 8) | 2).to_string().into_bytes()]);
        assert_eq!(
            (first.subs, first.merge, next.subs, next.merge),
            (0..1, Merge::Scan(0, 3), 1..2, Merge::Scan(2, 3))
        );
        assert_eq!(
            targets(&subs),
            vec![
                (A, None, command(&[b"SCAN", b"0", b"MATCH", b"k*", b"COUNT", b"10"])),
                (C, None, command(&[b"SCAN", b"5"]))
            ]
        );
        for cursor in [&b"3"[..], b"-1", b"x"] {
            let p = plan(&routes(&map), &mut subs, &[b"SCAN", cursor]);
            assert_eq!((p.subs, p.merge), (2..2, Merge::Error("ERR invalid cursor".into())));
        }
        assert_eq!(plan(&routes(&map), &mut subs, &[b"SCAN"]).merge, Merge::Error("ERR invalid cursor".into()));
    }

    #[test]
    fn a_slot_without_a_master_gets_a_sub_request_that_cannot_be_sent() {
        let map = SlotMap::from_ranges(&[(0, 5460, A)]);
        let mut subs = Vec::new();
        let p = plan(&routes(&map), &mut subs, &[b"MGET", b"hello", b"foo"]);
        assert_eq!(p.subs, 0..2);
        assert_eq!((subs[0].node, subs[0].reply.clone()), (A, Err("not sent".into())));
        // Port 0 marks it: it is never written, and its error becomes the response.
        assert_eq!((subs[1].node, subs[1].slot), ("0.0.0.0:0".parse().unwrap(), Some(12182)));
        assert_eq!(subs[1].reply, Err("no node serves this slot".into()));
        // An empty map: what has no key goes to the first contact point.
        let empty = SlotMap::default();
        Routes { map: &empty, direct: None, contact: &[D] }.plan(&request(&[b"PING"]), &mut subs);
        assert_eq!(subs.last().map(|s| s.node), Some(D));
    }
}
