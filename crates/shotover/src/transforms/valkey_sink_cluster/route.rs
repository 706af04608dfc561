//! Where a request goes: which node serves a key, which node answers commands without one,
//! and which requests need connections of their own instead of the core's shared ones.
//!
//! Everything here reads the slot map as it is and does no I/O, so planning a batch never
//! waits and can be tested without a cluster.

use crate::message::Message;
use crate::sinks::valkey_cluster::{slot, SlotMap};
use shotover_protocols::valkey::command::{array_strings, is_command_array};
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

    /// The node a command's first key lives on, if it has one.
    pub(super) fn key_node(&self, request: &Message) -> Option<SocketAddr> {
        let raw = request.raw()?;
        let words = array_strings(raw);
        let key = words.get(1)?;
        self.map.master_of(slot(key))
    }
}

/// Commands that change or depend on the state of their connection, or that are not plain
/// command arrays: a client that sends one gets connections of its own from then on, so that
/// no state leaks between clients through the shared connections (and no blocking command
/// holds one up).
pub(super) fn is_stateful(request: &Message) -> bool {
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
