//! Planning: how one client request becomes sub-requests, each for one node, and how their
//! replies will be merged back ([`Merge`]).
//!
//! Valkey's command table decides ([`Routes::commands`]): its key specifications say which
//! arguments are keys, its `request_policy` tips which commands run on every master
//! (`all_shards`: `DBSIZE`, `KEYS`, `FLUSHALL`, `FUNCTION LOAD`, `INFO`...), on every node
//! (`all_nodes`: `CONFIG SET`, `SCRIPT LOAD`, `ACL SETUSER`...) or split by slot
//! (`multi_shard`: `MGET`, `MSET`, `DEL`...; Valkey Cluster refuses keys of different slots
//! in one command, even on one node), and its `response_policy` tips how their replies
//! combine. A command with keys goes to the master of its first key's slot, one without to
//! [`Routes::default_node`]. With `direct_connection` (handling mode) what would run on
//! several nodes goes to that node alone. `SCAN` walks the masters one by one. Requests the
//! proxy answers itself (transaction commands outside a transaction) get no sub-request;
//! pub/sub commands and `MONITOR` never get here (see `pubsub.rs`).

use super::route::{Leading, Name, Routes};
use crate::message::Message;
use crate::sinks::valkey_slots::slot;
use bytes::Bytes;
use shotover_protocols::valkey::command::array_strings;
use shotover_protocols::valkey::commands::{first_key, CommandInfo, RequestPolicy, ResponsePolicy};
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
    /// As the command's `response_policy` says (see [`ResponsePolicy`]).
    Policy(ResponsePolicy),
    /// A split command without a response policy (`MGET`): element `j` of the response is
    /// element `.1` of sub-request `.0`'s reply.
    Mget(Vec<(usize, usize)>),
    /// SCAN on master `.0` of `.1`: the node's cursor is turned into a cluster-wide one.
    Scan(usize, usize),
    /// INFO: one report, counters summed (`info.rs`).
    Info,
    /// RANDOMKEY: a key from a master that has one, picked at random.
    RandomKey,
    /// LATENCY LATEST: each event once, with its latest sample and its largest across nodes.
    LatencyLatest,
    /// Answered by the proxy with these bytes.
    Local(&'static [u8]),
    /// Answered by the proxy with this error.
    Error(String),
}

/// What became of one request.
pub(super) struct Plan {
    /// Its sub-requests: these indices of the batch's list of sub-requests.
    pub(super) subs: std::ops::Range<usize>,
    pub(super) merge: Merge,
    /// `AUTH`, `HELLO`, `CLIENT SETNAME` or `CLIENT TRACKING`: once it succeeds, it is
    /// replayed on the client's new connections.
    pub(super) session: bool,
}

/// What a session command sets on a connection: replayed on every node connection the client
/// opens, a later command of the same kind replacing the earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionKind {
    Auth,
    Hello,
    /// CLIENT SETNAME.
    Name,
    /// CLIENT TRACKING.
    Tracking,
}

/// The session kind of a request named `name` (upper case).
fn session_kind_of(name: &[u8], leading: &Leading<'_>) -> Option<SessionKind> {
    let sub = |want: &[u8]| leading.words().get(1).is_some_and(|w| w.eq_ignore_ascii_case(want));
    match name {
        b"AUTH" => Some(SessionKind::Auth),
        b"HELLO" => Some(SessionKind::Hello),
        b"CLIENT" if sub(b"SETNAME") => Some(SessionKind::Name),
        b"CLIENT" if sub(b"TRACKING") => Some(SessionKind::Tracking),
        _ => None,
    }
}

/// The session kind of a request: `AUTH`, `HELLO`, `CLIENT SETNAME` or `CLIENT TRACKING`.
pub(super) fn session_kind(raw: &[u8]) -> Option<SessionKind> {
    let leading = Leading::of(raw);
    session_kind_of(Name::of(&leading).as_bytes(), &leading)
}

/// Encodes a command as a RESP array of bulk strings.
pub(super) fn command(parts: &[&[u8]]) -> Bytes {
    shotover_protocols::valkey::command::encode(parts)
}

/// Appends a sub-request for `node`; one for no node (a slot no master serves) is never
/// written, and its error becomes the response.
fn push(subs: &mut Vec<Sub>, node: Option<SocketAddr>, raw: Bytes, slot: Option<u16>) {
    let reply = match node {
        Some(_) => Err(Cow::Borrowed("not sent")),
        None => Err(Cow::Borrowed("no node serves this slot")),
    };
    let node = node.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    subs.push(Sub { node, raw, slot, reply, sent: false, asking: false });
}

impl Routes<'_> {
    /// Splits one request into sub-requests (appended to `subs`).
    pub(super) fn plan(&self, request: &Message, subs: &mut Vec<Sub>) -> Plan {
        let start = subs.len();
        let answer = |merge: Merge| Plan { subs: start..start, merge, session: false };
        let Some(raw) = request.raw() else {
            return answer(Merge::Error("ERR shotover: cannot route a modified request".into()));
        };
        let leading = Leading::of_request(request);
        let name = Name::of(&leading);
        let name = name.as_bytes();
        let info = self.info(name, &leading);
        // AUTH, HELLO, CLIENT SETNAME and TRACKING set state of the client's connection: they
        // join its session, replayed on every node connection it opens.
        let kind = session_kind_of(name, &leading);
        let session = kind.is_some();
        if kind == Some(SessionKind::Tracking) {
            let words = array_strings(raw);
            let unsupported = ["REDIRECT", "OPTIN", "OPTOUT"];
            if words.iter().any(|w| unsupported.iter().any(|u| w.eq_ignore_ascii_case(u.as_bytes()))) {
                // REDIRECT names a connection of one node; CLIENT CACHING would apply to the
                // next command on the node it reached, not to the node of the next command.
                let text = "ERR shotover: CLIENT TRACKING with REDIRECT, OPTIN or OPTOUT is not supported by ValkeySinkCluster (use RESP3 tracking, default or BCAST)";
                return answer(Merge::Error(text.into()));
            }
        }
        match name {
            // Only reached without an open transaction (see `transaction.rs`).
            b"EXEC" | b"DISCARD" | b"MULTI" | b"WATCH" => {
                return answer(Merge::Error(format!("ERR {} without MULTI", String::from_utf8_lossy(name))))
            }
            b"UNWATCH" => return answer(Merge::Local(b"+OK\r\n")),
            b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"SUNSUBSCRIBE"
            | b"MONITOR" => {
                let name = String::from_utf8_lossy(name);
                return answer(Merge::Error(format!(
                    "ERR shotover: {name} needs a pub/sub connection, and none is known"
                )));
            }
            _ => {}
        }
        let request_policy = info.map_or(RequestPolicy::Default, |i| i.request);
        let response_policy = info.map_or(ResponsePolicy::Default, |i| i.response);
        // CLIENT SETNAME and SETINFO are `all_nodes`, but they name the client's connection:
        // they go with its session to every connection it uses instead.
        let node_wide =
            matches!(request_policy, RequestPolicy::AllNodes | RequestPolicy::AllShards | RequestPolicy::Special)
                && name != b"CLIENT";
        let merge = if node_wide && self.direct.is_some() {
            // Handling mode: the direct node's alone (a cluster-aware client asks each node).
            push(subs, self.direct, raw.clone(), None);
            Merge::Single
        } else if name == b"SCAN" {
            match self.scan(raw, subs) {
                Some(merge) => merge,
                None => return answer(Merge::Error("ERR invalid cursor".into())),
            }
        } else if node_wide {
            let replicas = if request_policy == RequestPolicy::AllNodes { self.map.replicas.as_slice() } else { &[] };
            for node in self.map.masters.iter().chain(replicas) {
                push(subs, Some(*node), raw.clone(), None);
            }
            if self.map.masters.is_empty() {
                // No slot map yet: a contact point answers for the cluster.
                push(subs, self.default_node(), raw.clone(), None);
            }
            let sub = |want: &[u8]| leading.words().get(1).is_some_and(|s| s.eq_ignore_ascii_case(want));
            match name {
                b"INFO" => Merge::Info,
                b"RANDOMKEY" => Merge::RandomKey,
                b"LATENCY" if sub(b"LATEST") => Merge::LatencyLatest,
                // Every node's samples of the event, joined.
                b"LATENCY" if sub(b"HISTORY") => Merge::Policy(ResponsePolicy::Default),
                _ => Merge::Policy(response_policy),
            }
        } else if let Some(merge) = info
            // One key (`DEL k`, `MSET k v`) has nothing to split: no need to list the arguments.
            .filter(|i| {
                request_policy == RequestPolicy::MultiShard
                    && request.valkey_request().map_or(0, |v| v.argc) > i.key_step()
            })
            .and_then(|info| self.split(info, name, raw, subs))
        {
            merge
        } else {
            match first_key(info, name, leading.words(), raw) {
                Some(key) => {
                    let (node, s) = self.node_for(key);
                    push(subs, node, raw.clone(), Some(s));
                }
                None => push(subs, self.default_node(), raw.clone(), None),
            }
            Merge::Single
        };
        Plan { subs: start..subs.len(), merge, session }
    }

    /// SCAN: the cluster cursor is the node's cursor << 8 | the master's index, masters in
    /// address order. `None` for a cursor that is not one.
    fn scan(&self, raw: &Bytes, subs: &mut Vec<Sub>) -> Option<Merge> {
        let words = array_strings(raw);
        let args = words.get(1..).unwrap_or_default();
        let cursor = args.first().and_then(|c| std::str::from_utf8(c).ok()).and_then(|c| c.parse::<u64>().ok())?;
        let mut masters = self.map.masters.clone();
        masters.sort();
        let index = (cursor & 0xff) as usize;
        let node = masters.get(index).copied()?;
        let node_cursor = (cursor >> 8).to_string();
        let mut parts: Vec<&[u8]> = vec![b"SCAN", node_cursor.as_bytes()];
        parts.extend(args.get(1..).unwrap_or_default());
        push(subs, Some(node), command(&parts), None);
        Some(Merge::Scan(index, masters.len()))
    }

    /// A `multi_shard` command split into one command per slot, each key with the
    /// arguments that follow it (`MSET`'s values). `None` when it has fewer than two keys or
    /// its arguments are not a plain list of keys (the node then judges it whole).
    fn split(&self, info: &CommandInfo, name: &[u8], raw: &Bytes, subs: &mut Vec<Sub>) -> Option<Merge> {
        let words = array_strings(raw);
        let mut keys = Vec::new();
        info.keys(&words, &mut keys);
        let step = info.key_step();
        let first = *keys.first()?;
        let plain = keys.iter().enumerate().all(|(i, k)| *k == first + i * step);
        if keys.len() < 2 || !plain || first + keys.len() * step != words.len() {
            return None;
        }
        let start = subs.len();
        let mut by_slot: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let s = slot(words.get(*key)?);
            match by_slot.iter_mut().find(|(sl, _)| *sl == s) {
                Some((_, group)) => group.push(i),
                None => by_slot.push((s, vec![i])),
            }
        }
        let mut positions = vec![(0, 0); keys.len()];
        for (group, (s, members)) in by_slot.iter().enumerate() {
            // The split commands are written anew, their name in upper case.
            let mut parts: Vec<&[u8]> = vec![name];
            parts.extend(words.get(1..first).unwrap_or_default());
            for (j, i) in members.iter().enumerate() {
                // In range: the keys were checked to be a plain list above.
                let at = keys.get(*i).copied().unwrap_or_default();
                parts.extend(words.get(at..at + step).unwrap_or_default());
                if let Some(p) = positions.get_mut(*i) {
                    *p = (start + group, j);
                }
            }
            push(subs, self.map.master_of(*s), command(&parts), Some(*s));
        }
        Some(match info.response {
            ResponsePolicy::Default => Merge::Mget(positions),
            policy => Merge::Policy(policy),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{request, routes, table, three_masters, A, B, C, D};
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
        assert_eq!((p.subs, p.merge), (0..2, Merge::Policy(ResponsePolicy::AggSum)));
        let p = plan(&routes(&map), &mut subs, &[b"MSET", b"hello", b"1", b"foo", b"2", b"{foo}x", b"3"]);
        assert_eq!((p.subs, p.merge), (2..4, Merge::Policy(ResponsePolicy::AllSucceeded)));
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
        assert_eq!(p.merge, Merge::Policy(ResponsePolicy::AggSum));
        assert_eq!(
            targets(subs.get(p.subs).unwrap()),
            vec![(A, Some(866), command(&[b"EXISTS", b"hello"])), (A, Some(5061), command(&[b"EXISTS", b"bar"]))]
        );
    }

    #[test]
    fn node_wide_commands_go_to_every_master() {
        let map = three_masters();
        for (parts, merge) in [
            (&[&b"DBSIZE"[..]][..], Merge::Policy(ResponsePolicy::AggSum)),
            (&[b"KEYS", b"user:*"], Merge::Policy(ResponsePolicy::Default)),
            (&[b"flushall", b"ASYNC"], Merge::Policy(ResponsePolicy::AllSucceeded)),
            (&[b"SCRIPT", b"exists", b"sha1", b"sha2"], Merge::Policy(ResponsePolicy::AggLogicalAnd)),
            (&[b"SCRIPT", b"LOAD", b"return 1"], Merge::Policy(ResponsePolicy::AllSucceeded)),
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
        let direct = Routes { map: &map, commands: table(), direct: Some(D), contact: &[] };
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
        let direct = Routes { map: &map, commands: table(), direct: Some(D), contact: &[] };
        let mut subs = Vec::new();
        for parts in [&[&b"TIME"[..]][..], &[b"LASTSAVE"], &[b"CLUSTER", b"INFO"], &[b"MGET"], &[b"ECHO", b"hi"]] {
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
        Routes { map: &empty, commands: table(), direct: None, contact: &[D] }.plan(&request(&[b"PING"]), &mut subs);
        assert_eq!(subs.last().map(|s| s.node), Some(D));
    }
}
