//! ValkeySinkCluster compared with a node of the cluster on a direct connection: pub/sub
//! (the same raw bytes both ways, messages published by another client), MONITOR, clients
//! that leave while blocked, and where `direct_connection` sends node-wide commands.
//!
//! Every read waits for the bytes it expects; a read timeout fails the test.

use crate::cluster_sink::hiding_proxy;
use crate::fidelity::{blocked_clients, lossy, orphaned_blocking_commands_steal_nothing, Raw};
use redis::Value;
use shotover_integration_tests::*;

/// The reply to `PING fidelity-marker-7f3a`, subscribed (RESP2: `*2 pong <marker>`) or not.
const MARKER: &[u8] = b"$20\r\nfidelity-marker-7f3a\r\n";

/// Sends `bytes` then `PING <marker>` (which a subscribed connection answers too), and
/// returns everything read up to the marker's reply, that reply included.
fn step(raw: &mut Raw, bytes: &[u8]) -> String {
    raw.send(bytes);
    raw.send(b"PING fidelity-marker-7f3a\r\n");
    lossy(&raw.read_until(MARKER))
}

fn node_client(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap().get_connection().unwrap()
}

fn port_of(node: &str) -> u16 {
    node.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The masters, from CLUSTER SLOTS: (first slot, last slot, port, node id).
fn masters(admin: &mut redis::Connection) -> Vec<(i64, i64, u16, String)> {
    let Value::Array(ranges) = redis::cmd("CLUSTER").arg("SLOTS").query(admin).unwrap() else { panic!() };
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Value::Int(start), Value::Int(end), Value::Array(master)) = (&fields[0], &fields[1], &fields[2]) else {
            continue;
        };
        let (Value::Int(port), Value::BulkString(id)) = (&master[1], &master[2]) else { continue };
        out.push((*start, *end, *port as u16, String::from_utf8_lossy(id).into_owned()));
    }
    out
}

fn keyslot(admin: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query(admin).unwrap()
}

/// The port and id of the master of `slot`.
fn master_of(admin: &mut redis::Connection, slot: i64) -> (u16, String) {
    let found = masters(admin).into_iter().find(|(s, e, _, _)| (*s..=*e).contains(&slot));
    found.map(|(_, _, port, id)| (port, id)).expect("a master serves the slot")
}

/// The node the proxy sends commands without a key to (the first master): from INFO.
fn default_node_port(proxy: u16) -> u16 {
    let info: String = redis::cmd("INFO").arg("server").query(&mut connect(proxy)).unwrap();
    info.lines().find_map(|l| l.strip_prefix("tcp_port:")).unwrap().trim().parse().unwrap()
}

/// Moves the empty `slot` from one master to another, as `moved_slots_are_followed` does.
fn migrate(slot: i64, (from, from_id): (u16, &str), (to, to_id): (u16, &str)) {
    let setslot = |port: u16, state: &str, id: &str| {
        let mut c = node_client(port);
        let _: () = redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(id).query(&mut c).unwrap();
    };
    setslot(to, "IMPORTING", from_id);
    setslot(from, "MIGRATING", to_id);
    setslot(to, "NODE", to_id);
    setslot(from, "NODE", to_id);
}

/// A pub/sub conversation on a connection to `port`; HELLO 3 first with `resp3`.
fn pubsub_conversation(port: u16, publisher: &mut redis::Connection, resp3: bool) -> Vec<String> {
    let mut raw = Raw::connect(port);
    if resp3 {
        // HELLO's reply names the connection (its id): read, not compared.
        raw.talk(b"HELLO 3\r\n");
    }
    let mut seen = vec![step(&mut raw, b"SUBSCRIBE news sport\r\nPSUBSCRIBE p*\r\n")];
    let _: i64 = redis::cmd("PUBLISH").arg("news").arg("first").query(publisher).unwrap();
    seen.push(lossy(&raw.read_until(b"$5\r\nfirst\r\n")));
    let _: i64 = redis::cmd("PUBLISH").arg("pq").arg("second").query(publisher).unwrap();
    seen.push(lossy(&raw.read_until(b"$6\r\nsecond\r\n")));
    // `hello` lives on the first master: in RESP2 the node refuses GET in this context.
    seen.push(step(&mut raw, b"GET hello\r\nPING\r\nSUBSCRIBE news\r\n"));
    seen.push(step(&mut raw, b"UNSUBSCRIBE news\r\nPUNSUBSCRIBE\r\nUNSUBSCRIBE\r\n"));
    seen.push(step(&mut raw, b"UNSUBSCRIBE\r\nPING\r\n"));
    seen
}

#[test]
fn subscribe_and_psubscribe_match_a_direct_node_in_resp2_and_resp3() {
    let (cluster, _shotover, port) = hiding_proxy();
    let global = default_node_port(port);
    // Published on another node: the cluster carries it to the subscribed one.
    let other = cluster.nodes.iter().map(|n| port_of(n)).find(|p| *p != global).unwrap();
    let mut publisher = node_client(other);
    for resp3 in [false, true] {
        let direct = pubsub_conversation(global, &mut publisher, resp3);
        let proxied = pubsub_conversation(port, &mut publisher, resp3);
        assert_eq!(proxied, direct, "through the proxy (left) and direct (right) differ, resp3: {resp3}");
        assert!(direct[0].matches("subscribe").count() == 3 && direct[1].contains("message"), "{direct:?}");
        assert!(direct[2].contains("pmessage") && direct[5].contains("NOSUB"), "{direct:?}");
    }
}

#[test]
fn subscribed_in_resp2_every_key_is_refused_as_the_node_refuses_its_own() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let global = default_node_port(port);
    let mut direct = Raw::connect(global);
    let mut proxied = Raw::connect(port);
    step(&mut direct, b"SUBSCRIBE news\r\n");
    step(&mut proxied, b"SUBSCRIBE news\r\n");
    let refused = step(&mut direct, b"GET hello\r\n");
    assert!(refused.starts_with("-ERR Can't execute 'get'"), "{refused:?}");
    // Keys of every master (hello, c and foo are on three different ones): the same answer,
    // where the first master alone would redirect the other two.
    for key in ["hello", "c", "foo"] {
        assert_eq!(step(&mut proxied, format!("GET {key}\r\n").as_bytes()), refused, "GET {key}");
    }
}

#[test]
fn unsubscribing_when_not_subscribed_matches_a_direct_node() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let global = default_node_port(port);
    for resp3 in [false, true] {
        let run = |port: u16| {
            let mut raw = Raw::connect(port);
            if resp3 {
                raw.talk(b"HELLO 3\r\n");
            }
            let steps: [&[u8]; 7] = [
                b"UNSUBSCRIBE foo bar quux\r\n",
                b"PING\r\n",
                b"PUNSUBSCRIBE a* b*\r\n",
                // Shard channels of two slots, then one of the first master's own slots.
                b"SUNSUBSCRIBE s1 s2\r\n",
                b"SUNSUBSCRIBE hello\r\nSUNSUBSCRIBE\r\n",
                b"*1\r\n$11\r\nUNSUBSCRIBE\r\n",
                b"PING\r\n",
            ];
            steps.iter().map(|s| lossy(&raw.talk(s))).collect::<Vec<_>>()
        };
        let direct = run(global);
        assert_eq!(run(port), direct, "through the proxy (left) and direct (right) differ, resp3: {resp3}");
        assert_eq!(direct[0].matches("NOSUB").count(), 1, "one -NOSUB for three channels: {direct:?}");
        assert!(direct[3].starts_with("-CROSSSLOT"), "{direct:?}");
    }
}

#[test]
fn ssubscribe_matches_the_owning_node_and_follows_its_slot_when_it_moves() {
    let (cluster, _shotover, port) = hiding_proxy();
    let mut admin = node_client(port_of(&cluster.nodes[0]));
    let slot = keyslot(&mut admin, "{s}1");
    let (owner, owner_id) = master_of(&mut admin, slot);
    let (target, target_id) =
        masters(&mut admin).into_iter().find(|m| m.2 != owner).map(|(_, _, p, id)| (p, id)).unwrap();
    let mut direct = Raw::connect(owner);
    let mut proxied = Raw::connect(port);
    let both = |direct: &mut Raw, proxied: &mut Raw, bytes: &[u8]| {
        let seen = step(direct, bytes);
        assert_eq!(step(proxied, bytes), seen, "through the proxy (left) and direct (right) differ");
        seen
    };
    let subscribed = both(&mut direct, &mut proxied, b"SSUBSCRIBE {s}1 {s}2\r\nSSUBSCRIBE a b\r\nSSUBSCRIBE\r\n");
    assert!(
        subscribed.matches("$10\r\nssubscribe").count() == 2 && subscribed.contains("-CROSSSLOT"),
        "{subscribed:?}"
    );
    let spublish = |port: u16, message: &str| {
        let receivers: i64 = redis::cmd("SPUBLISH").arg("{s}1").arg(message).query(&mut node_client(port)).unwrap();
        assert_eq!(receivers, 2, "both connections are subscribed on the owner");
    };
    spublish(owner, "hi");
    let message = lossy(&direct.read_until(b"$2\r\nhi\r\n"));
    assert!(message.contains("smessage"), "{message:?}");
    assert_eq!(lossy(&proxied.read_until(b"$2\r\nhi\r\n")), message);
    // The slot moves: the node unsubscribes its clients itself, and says so.
    migrate(slot, (owner, &owner_id), (target, &target_id));
    let unsubscribed = lossy(&direct.read_until(b":0\r\n"));
    assert_eq!(unsubscribed.matches("sunsubscribe").count(), 2, "{unsubscribed:?}");
    assert_eq!(lossy(&proxied.read_until(b":0\r\n")), unsubscribed);
    // Subscribing again: the proxy, told MOVED by the old owner, asks the new one.
    let mut direct = Raw::connect(target);
    let again = both(&mut direct, &mut proxied, b"SSUBSCRIBE {s}1\r\n");
    assert!(again.starts_with("*3\r\n$10\r\nssubscribe\r\n"), "{again:?}");
    spublish(target, "there");
    let message = lossy(&direct.read_until(b"$5\r\nthere\r\n"));
    assert_eq!(lossy(&proxied.read_until(b"$5\r\nthere\r\n")), message);
}

#[test]
fn shard_channels_of_two_nodes_are_counted_as_one_node_counts_them() {
    let (cluster, _shotover, port) = hiding_proxy();
    let mut admin = node_client(port_of(&cluster.nodes[0]));
    // `foo` and `c` live on two different masters.
    let (foo, c) = (keyslot(&mut admin, "foo"), keyslot(&mut admin, "c"));
    let (foo_node, c_node) = (master_of(&mut admin, foo).0, master_of(&mut admin, c).0);
    assert_ne!(foo_node, c_node);
    let mut proxied = Raw::connect(port);
    let subscribed = step(&mut proxied, b"SSUBSCRIBE foo\r\nSSUBSCRIBE c\r\n");
    assert_eq!(
        subscribed,
        "*3\r\n$10\r\nssubscribe\r\n$3\r\nfoo\r\n:1\r\n*3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:2\r\n\
         *2\r\n$4\r\npong\r\n$20\r\nfidelity-marker-7f3a\r\n"
    );
    for (node, channel, message) in [(foo_node, "foo", "one"), (c_node, "c", "two")] {
        let receivers: i64 = redis::cmd("SPUBLISH").arg(channel).arg(message).query(&mut node_client(node)).unwrap();
        assert_eq!(receivers, 1);
        let got = lossy(&proxied.read_until(format!("${}\r\n{message}\r\n", message.len()).as_bytes()));
        assert_eq!(got, format!("*3\r\n$8\r\nsmessage\r\n${}\r\n{channel}\r\n$3\r\n{message}\r\n", channel.len()));
    }
    // From every shard channel: each node in turn, the count falling to 0.
    assert_eq!(
        step(&mut proxied, b"SUNSUBSCRIBE\r\n"),
        "*3\r\n$12\r\nsunsubscribe\r\n$3\r\nfoo\r\n:1\r\n*3\r\n$12\r\nsunsubscribe\r\n$1\r\nc\r\n:0\r\n\
         $20\r\nfidelity-marker-7f3a\r\n"
    );
}

#[test]
fn monitor_shows_the_commands_of_the_first_master() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let global = default_node_port(port);
    let mut proxied = Raw::connect(port);
    proxied.send(b"MONITOR\r\n");
    assert_eq!(proxied.read_until(b"\r\n"), b"+OK\r\n");
    let _: String = redis::cmd("ECHO").arg("monitored-echo").query(&mut node_client(global)).unwrap();
    let line = lossy(&proxied.read_until(b"\"ECHO\" \"monitored-echo\"\r\n"));
    assert!(line.starts_with('+'), "{line:?}");
    proxied.send(b"RESET\r\n");
    let rest = lossy(&proxied.read_until(b"+RESET\r\n"));
    assert!(rest.lines().all(|l| l.starts_with('+')), "only MONITOR lines before +RESET: {rest:?}");
    assert_eq!(lossy(&proxied.talk(b"PING\r\n")), "+PONG\r\n");
}

#[test]
fn a_cluster_client_that_leaves_while_blocked_takes_nothing_with_it() {
    let (cluster, _shotover, port) = hiding_proxy();
    let mut nodes: Vec<redis::Connection> = cluster.nodes.iter().map(|n| node_client(port_of(n))).collect();
    let blocked = || nodes.iter_mut().map(blocked_clients).sum();
    orphaned_blocking_commands_steal_nothing(port, blocked, connect(port));
}

#[test]
fn with_direct_connection_node_wide_commands_stay_on_the_direct_node() {
    let cluster = ValkeyCluster::start_on_one_ip(free_cluster_port_range());
    let mut admin = node_client(port_of(&cluster.nodes[0]));
    let all = masters(&mut admin);
    let (direct, other) = (all[0].2, all[1].2);
    let port = free_port();
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let chain = format!(
        "        - ValkeySinkCluster:\n            first_contact_points: [{}]\n            direct_connection: \"127.0.0.1:{direct}\"\n",
        contacts.join(", ")
    );
    let _shotover = Shotover::start(&valkey_topology(port, &chain), port);
    let mut c = connect(port);
    for i in 0..30 {
        let _: () = redis::cmd("SET").arg(format!("dc-{i}")).arg(i).query(&mut c).unwrap();
    }
    let (mut on_direct, mut on_other) = (node_client(direct), node_client(other));
    let dbsize = |c: &mut redis::Connection| redis::cmd("DBSIZE").query::<i64>(c).unwrap();
    let here = dbsize(&mut on_direct);
    assert!(here > 0 && here < 30, "the keys are spread over the masters: {here} on the direct node");
    assert_eq!(dbsize(&mut c), here, "DBSIZE is the direct node's");
    let keys = |c: &mut redis::Connection| {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("dc-*").query(c).unwrap();
        keys.sort();
        keys
    };
    assert_eq!(keys(&mut c), keys(&mut on_direct));
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg("return 7").query(&mut c).unwrap();
    let exists = |c: &mut redis::Connection| redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).query::<Vec<i64>>(c).unwrap();
    assert_eq!((exists(&mut on_direct), exists(&mut on_other)), (vec![1], vec![0]));
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    assert_eq!(dbsize(&mut on_direct), 0);
    assert!(dbsize(&mut on_other) > 0, "FLUSHALL reached only the direct node");
}
