//! Where a request goes: which node serves a key, which node answers commands without one,
//! and which requests need connections of their own instead of the core's shared ones.
//!
//! Everything here reads the slot map as it is and does no I/O, so planning a batch never
//! waits and can be tested without a cluster.

use crate::message::Message;
use crate::sinks::valkey_slots::{slot, SlotMap};
use shotover_protocols::valkey::command::array_strings;
use std::net::SocketAddr;

/// What routing needs to know: the slot map and the nodes to use when it does not say.
pub(super) struct Routes<'a> {
    pub(super) map: &'a SlotMap,
    /// `direct_connection`: the node for commands without a key.
    pub(super) direct: Option<SocketAddr>,
    /// `first_contact_points`, the last resort while the slot map is empty.
    pub(super) contact: &'a [SocketAddr],
}

impl Routes<'_> {
    /// The node for commands without a key: `direct_connection`, else the first master,
    /// else the first contact point.
    pub(super) fn default_node(&self) -> Option<SocketAddr> {
        self.direct.or_else(|| self.map.masters.first().copied()).or_else(|| self.contact.first().copied())
    }

    /// The master of `key`'s slot (if the map knows it), and the slot.
    pub(super) fn node_for(&self, key: &[u8]) -> (Option<SocketAddr>, u16) {
        let slot = slot(key);
        (self.map.master_of(slot), slot)
    }

    /// The node a command's first key lives on, if it has one. The first argument is taken
    /// as the key, except for scripts and functions (see [`script_key`]).
    pub(super) fn key_node(&self, request: &Message) -> Option<SocketAddr> {
        let raw = request.raw()?;
        let words = array_strings(raw);
        let key = match words.split_first()? {
            (name, args) if is_script(&name.to_ascii_uppercase()) => script_key(args)?,
            (_, args) => args.first()?,
        };
        self.map.master_of(slot(key))
    }
}

/// `EVAL`, `EVALSHA`, `FCALL` and their `_RO` variants, whose keys follow a key count
/// (`name` in upper case).
pub(super) fn is_script(name: &[u8]) -> bool {
    matches!(name, b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO")
}

/// The first key of a script or function call, from its arguments (script or function,
/// `numkeys`, keys...): `None` when `numkeys` is 0 or not a number.
pub(super) fn script_key<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let numkeys = args.get(1).and_then(|n| std::str::from_utf8(n).ok()).and_then(|n| n.parse::<usize>().ok());
    match (numkeys, args.get(2)) {
        (Some(n), Some(key)) if n > 0 => Some(key),
        _ => None,
    }
}

/// Requests that need connections of their own (see [`keeps_state`]).
pub(super) use crate::sinks::valkey_mux::keeps_state as is_stateful;

#[cfg(test)]
mod tests {
    use super::super::fixtures::{request, routes, three_masters, A, B, C, D};
    use super::*;
    use crate::message::{Frame, Protocol};
    use bytes::Bytes;
    use shotover_protocols::valkey::command::may_block;
    use shotover_protocols::valkey::ValkeyFrame;
    use std::time::Instant;

    #[test]
    fn keys_route_to_the_master_of_their_slot() {
        let map = three_masters();
        let routes = routes(&map);
        assert_eq!(routes.node_for(b"hello"), (Some(A), 866));
        assert_eq!(routes.node_for(b"c"), (Some(B), 7365));
        assert_eq!(routes.node_for(b"foo"), (Some(C), 12182));
        assert_eq!(routes.node_for(b"{foo}x"), (Some(C), 12182), "a hash tag picks the slot");
        assert_eq!(routes.key_node(&request(&[b"GET", b"c"])), Some(B));
        assert_eq!(routes.key_node(&request(&[b"WATCH", b"hello", b"foo"])), Some(A), "the first key decides");
        assert_eq!(routes.key_node(&request(&[b"PING"])), None);
        let unknown = SlotMap::from_ranges(&[(0, 5460, A)]);
        assert_eq!(super::super::fixtures::routes(&unknown).node_for(b"foo"), (None, 12182));
    }

    #[test]
    fn scripts_in_a_transaction_are_pinned_by_their_first_key() {
        let map = three_masters();
        let routes = routes(&map);
        assert_eq!(routes.key_node(&request(&[b"EVAL", b"return 1", b"1", b"c"])), Some(B));
        assert_eq!(routes.key_node(&request(&[b"evalsha_ro", b"sha", b"2", b"hello", b"foo"])), Some(A));
        assert_eq!(routes.key_node(&request(&[b"FCALL", b"f", b"1", b"foo", b"arg"])), Some(C));
        assert_eq!(routes.key_node(&request(&[b"EVAL", b"return 1", b"0", b"c"])), None, "numkeys 0: no key");
        assert_eq!(routes.key_node(&request(&[b"EVAL", b"return 1"])), None);
    }

    #[test]
    fn commands_without_a_key_go_to_direct_connection_then_first_master_then_contact() {
        let map = three_masters();
        let contact = [D];
        assert_eq!(Routes { map: &map, direct: Some(D), contact: &[] }.default_node(), Some(D));
        assert_eq!(Routes { map: &map, direct: None, contact: &contact }.default_node(), Some(A));
        let empty = SlotMap::default();
        assert_eq!(Routes { map: &empty, direct: None, contact: &contact }.default_node(), Some(D));
        assert_eq!(Routes { map: &empty, direct: None, contact: &[] }.default_node(), None);
    }

    #[test]
    fn commands_that_keep_state_on_the_connection_are_stateful() {
        for parts in [
            &[&b"AUTH"[..], b"secret"][..],
            &[b"hello", b"3"],
            &[b"SELECT", b"1"],
            &[b"multi"],
            &[b"WATCH", b"foo"],
            &[b"BLPOP", b"foo", b"0"],
            &[b"CLIENT", b"SETNAME", b"me"],
            &[b"MONITOR"],
            &[b"ASKING"],
        ] {
            assert!(is_stateful(&request(parts)), "{parts:?}");
        }
        for parts in [
            &[&b"GET"[..], b"foo"][..],
            &[b"MGET", b"foo", b"hello"],
            &[b"PING"],
            &[b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"],
            &[b"client", b"setinfo", b"lib-ver", b"1"],
        ] {
            assert!(!is_stateful(&request(parts)), "{parts:?}");
        }
    }

    #[test]
    fn every_command_that_may_block_gets_a_connection_of_its_own() {
        let blocking: [&[&[u8]]; 12] = [
            &[b"BLPOP", b"l", b"0"],
            &[b"brpop", b"l", b"0"],
            &[b"BLMOVE", b"l", b"d", b"LEFT", b"RIGHT", b"0"],
            &[b"BRPOPLPUSH", b"l", b"d", b"0"],
            &[b"BZPOPMIN", b"z", b"0"],
            &[b"BZPOPMAX", b"z", b"0"],
            &[b"BLMPOP", b"0", b"1", b"l", b"LEFT"],
            &[b"BZMPOP", b"0", b"1", b"z", b"MIN"],
            &[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"$"],
            &[b"XREADGROUP", b"GROUP", b"g", b"c", b"BLOCK", b"0", b"STREAMS", b"s", b">"],
            &[b"WAIT", b"1", b"0"],
            &[b"WAITAOF", b"1", b"0", b"0"],
        ];
        for parts in blocking {
            let r = request(parts);
            assert!(r.valkey_request().is_some_and(|v| may_block(&v)), "{parts:?} is on the source's list");
            assert!(is_stateful(&r), "{parts:?} must not go on a shared connection");
        }
    }

    #[test]
    fn requests_that_are_not_one_command_array_are_stateful() {
        let raw =
            |bytes: &'static [u8]| Message::from_bytes(Bytes::from_static(bytes), Protocol::Valkey, Instant::now());
        assert!(is_stateful(&raw(b"PING\r\n")), "inline command");
        assert!(is_stateful(&raw(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n")), "two commands in one message");
        assert!(is_stateful(&raw(b"*1\r\n:1\r\n")), "not bulk strings");
        let built = Message::from_frame(Frame::Valkey(ValkeyFrame::Array { data: Vec::new(), attributes: None }));
        assert!(is_stateful(&built), "no raw bytes");
    }
}
