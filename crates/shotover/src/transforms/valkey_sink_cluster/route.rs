//! Where a request goes: which node serves a key, which node answers commands without one,
//! and which requests need connections of their own instead of the core's shared ones.
//!
//! Everything here reads the slot map as it is and does no I/O, so planning a batch never
//! waits and can be tested without a cluster.

use crate::message::Message;
use crate::sinks::valkey_slots::{slot, SlotMap};
use shotover_protocols::valkey::command::{bulk_words, leading_words};
use shotover_protocols::valkey::commands::{self, CommandInfo, CommandTable};
use std::net::SocketAddr;

/// What routing needs to know: the slot map, the command table and the nodes to use when
/// they do not say.
pub(super) struct Routes<'a> {
    pub(super) map: &'a SlotMap,
    /// Valkey's command table: which arguments are keys, and which commands run on every
    /// node (read from a node, else Valkey 8.0.1's built in).
    pub(super) commands: &'a CommandTable,
    /// `direct_connection`: the node for commands without a key.
    pub(super) direct: Option<SocketAddr>,
    /// `first_contact_points`, the last resort while the slot map is empty.
    pub(super) contact: &'a [SocketAddr],
}

/// A command name upper-cased on the stack: every command name Valkey has fits in 32 bytes
/// (a longer one, which no table knows, is kept on the heap).
pub(super) struct Name {
    buf: [u8; 32],
    len: usize,
    long: Option<Vec<u8>>,
}

/// A request's first three words (its name and two arguments), read in one pass: enough to
/// route most commands without reading the request again.
pub(super) struct Leading<'r> {
    words: [&'r [u8]; 3],
    found: usize,
}

impl<'r> Leading<'r> {
    pub(super) fn of(raw: &'r [u8]) -> Leading<'r> {
        let mut words: [&[u8]; 3] = [b""; 3];
        let found = leading_words(raw, &mut words);
        Leading { words, found }
    }

    /// [`Leading::of`] for a request whose name is already known (a source found it while
    /// framing the request): only the words after the name are read. A modified
    /// request has no bytes to read: no words.
    pub(super) fn of_request(request: &'r Message) -> Leading<'r> {
        let raw = request.raw().map_or(&[][..], |raw| &raw[..]);
        let name = match request.valkey_request() {
            Some(view) if raw.first() == Some(&b'*') => view.name,
            _ => return Leading::of(raw),
        };
        // The name is a slice of `raw`; the two bytes after it end its bulk string.
        let after = (name.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize) + name.len() + 2;
        let mut words: [&[u8]; 3] = [name, b"", b""];
        let rest = raw.get(after..).unwrap_or_default();
        let found = 1 + bulk_words(rest, words.get_mut(1..).unwrap_or_default());
        Leading { words, found }
    }

    pub(super) fn words(&self) -> &[&'r [u8]] {
        self.words.get(..self.found).unwrap_or_default()
    }
}

impl Name {
    /// The name of a request (empty when it has none).
    pub(super) fn of(leading: &Leading<'_>) -> Name {
        let mut name = Name { buf: [0; 32], len: 0, long: None };
        let word = leading.words().first().copied().unwrap_or_default();
        if word.len() <= name.buf.len() {
            // Copied and upper-cased in one pass (a copy of a few bytes by length would call
            // memmove).
            for (to, from) in name.buf.iter_mut().zip(word) {
                *to = from.to_ascii_uppercase();
            }
            name.len = word.len();
        } else {
            name.long = Some(word.to_ascii_uppercase());
        }
        name
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match &self.long {
            Some(long) => long,
            None => self.buf.get(..self.len).unwrap_or_default(),
        }
    }
}

impl<'a> Routes<'a> {
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

    /// The table's entry for a request named `name` (upper case); its subcommand, if the
    /// command has any, is its first argument.
    pub(super) fn info(&self, name: &[u8], leading: &Leading<'_>) -> Option<&'a CommandInfo> {
        self.commands.lookup(name, || leading.words().get(1).copied())
    }

    /// The node a request's first key lives on, if it has a key.
    pub(super) fn key_node(&self, request: &Message) -> Option<SocketAddr> {
        let raw = request.raw()?;
        let leading = Leading::of_request(request);
        let name = Name::of(&leading);
        let info = self.info(name.as_bytes(), &leading);
        let key = commands::first_key(info, name.as_bytes(), leading.words(), raw)?;
        self.map.master_of(slot(key))
    }
}

/// Requests that need connections of their own (see [`keeps_state`]).
pub(super) use crate::sinks::valkey_mux::keeps_state as is_stateful;

#[cfg(test)]
mod tests {
    use super::super::fixtures::{request, routes, table, three_masters, A, B, C, D};
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
        assert_eq!(Routes { map: &map, commands: table(), direct: Some(D), contact: &[] }.default_node(), Some(D));
        assert_eq!(Routes { map: &map, commands: table(), direct: None, contact: &contact }.default_node(), Some(A));
        let empty = SlotMap::default();
        assert_eq!(Routes { map: &empty, commands: table(), direct: None, contact: &contact }.default_node(), Some(D));
        assert_eq!(Routes { map: &empty, commands: table(), direct: None, contact: &[] }.default_node(), None);
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
