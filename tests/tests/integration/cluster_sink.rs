//! ValkeySinkCluster in hiding mode: a client that knows nothing of clusters uses a 6-node
//! cluster through one proxy address.

use redis::{Commands, RedisResult, Value};
use shotover_integration_tests::*;

pub fn hiding_proxy() -> (ValkeyCluster, Shotover, u16) {
    let cluster = ValkeyCluster::start_on_one_ip(free_cluster_port_range());
    let port = free_port();
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let chain = format!("        - ValkeySinkCluster:\n            first_contact_points: [{}]\n", contacts.join(", "));
    let shotover = Shotover::start(&valkey_topology(port, &chain), port);
    (cluster, shotover, port)
}

#[test]
fn cross_slot_multi_key_and_node_wide_commands() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let pairs: Vec<(String, String)> = (0..20).map(|i| (format!("key-{i}"), format!("value-{i}"))).collect();
    let _: () = c.mset(&pairs).unwrap();
    let keys: Vec<&String> = pairs.iter().map(|(k, _)| k).collect();
    let mut with_missing = keys.clone();
    let missing = "no-such-key".to_string();
    with_missing.insert(5, &missing);
    let values: Vec<Option<String>> = c.mget(&with_missing).unwrap();
    assert_eq!(values.len(), 21);
    assert_eq!(values[5], None);
    for (i, (_, v)) in pairs.iter().enumerate() {
        let at = if i < 5 { i } else { i + 1 };
        assert_eq!(values[at].as_deref(), Some(v.as_str()), "position {at}");
    }
    assert_eq!(redis::cmd("EXISTS").arg(&keys).query::<i64>(&mut c).unwrap(), 20);
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 20);
    let mut all: Vec<String> = redis::cmd("KEYS").arg("key-*").query(&mut c).unwrap();
    all.sort();
    assert_eq!(all.len(), 20);
    assert_eq!(c.del::<_, i64>(&keys[..10]).unwrap(), 10);
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 10);
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 0);
    // (Pub/sub through the cluster: cluster_sink_fidelity.rs.)
    assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
    // Scripts are loaded on every master, so EVALSHA works for keys on any of them.
    let sha: String = redis::cmd("SCRIPT").arg("LOAD").arg("return redis.call('GET', KEYS[1])").query(&mut c).unwrap();
    let exists: Vec<i64> = redis::cmd("SCRIPT").arg("EXISTS").arg(&sha).arg("0000").query(&mut c).unwrap();
    assert_eq!(exists, vec![1, 0]);
    for i in 0..10 {
        let _: () = c.set(format!("lua-{i}"), i).unwrap();
        let got: i64 = redis::cmd("EVALSHA").arg(&sha).arg(1).arg(format!("lua-{i}")).query(&mut c).unwrap();
        assert_eq!(got, i);
    }
}

#[test]
fn pipeline_of_1000_mixed_slot_commands_keeps_order() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("p{i}"), i).ignore();
        pipe.get(format!("p{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut c).unwrap();
    assert_eq!(values, (0..500).collect::<Vec<_>>());
}

#[test]
fn moved_slots_are_followed() {
    let (cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let _: () = c.set("warm-up", 1).unwrap();
    // Give the (empty) slot of "moving" to another master, behind the proxy's back.
    let node = |addr: &str| {
        let (host, p) = addr.rsplit_once(':').unwrap();
        redis::Client::open(format!("redis://{host}:{p}/")).unwrap().get_connection().unwrap()
    };
    let mut first = node(&cluster.nodes[0]);
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg("moving").query(&mut first).unwrap();
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut first).unwrap();
    let Value::Array(ranges) = slots else { panic!() };
    let mut owner = None;
    let mut other = None;
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Value::Int(start), Value::Int(end), Value::Array(master)) = (&fields[0], &fields[1], &fields[2]) else {
            continue;
        };
        let id = match &master[2] {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            _ => continue,
        };
        let Value::Int(p) = master[1] else { continue };
        if (*start..=*end).contains(&slot) {
            owner = Some((id, p));
        } else if other.is_none() {
            other = Some((id, p));
        }
    }
    let ((owner_id, owner_port), (target_id, target_port)) = (owner.unwrap(), other.unwrap());
    let mut target = node(&format!("127.0.0.1:{target_port}"));
    let mut old = node(&format!("127.0.0.1:{owner_port}"));
    // A proper migration of the empty slot. Ending the IMPORTING state makes the target bump
    // its config epoch, so gossip from the other nodes cannot hand the slot back to the old
    // owner (which would bounce MOVED between the two for a while).
    let setslot = |conn: &mut redis::Connection, state: &str, id: &str| {
        let _: () = redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(id).query(conn).unwrap();
    };
    setslot(&mut target, "IMPORTING", &owner_id);
    setslot(&mut old, "MIGRATING", &target_id);
    setslot(&mut target, "NODE", &target_id);
    setslot(&mut old, "NODE", &target_id);
    // The proxy still thinks the old owner has it: it gets MOVED and follows it.
    let _: () = c.set("moving", "there").unwrap();
    assert_eq!(c.get::<_, String>("moving").unwrap(), "there");
    assert_eq!(target.get::<_, String>("moving").unwrap(), "there");
}

#[test]
fn transactions_in_one_slot_and_a_clear_error_across_slots() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let (a, b): (i64, i64) =
        redis::pipe().atomic().incr("{user7}.visits", 1).incr("{user7}.clicks", 5).query(&mut c).unwrap();
    assert_eq!((a, b), (1, 5));
    // WATCH: a change by another client aborts the transaction.
    let mut other = connect(port);
    let _: () = redis::cmd("WATCH").arg("{user7}.visits").query(&mut c).unwrap();
    let _: () = other.set("{user7}.visits", 100).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let queued: String = redis::cmd("INCR").arg("{user7}.visits").query(&mut c).unwrap();
    assert_eq!(queued, "QUEUED");
    let exec: Value = redis::cmd("EXEC").query(&mut c).unwrap();
    assert_eq!(exec, Value::Nil);
    assert_eq!(c.get::<_, i64>("{user7}.visits").unwrap(), 100);
    // Keys of two different nodes in one transaction: an error, then EXECABORT.
    let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
    let mut saw_crossslot = false;
    for i in 0..10 {
        let r: RedisResult<String> = redis::cmd("SET").arg(format!("spread-{i}")).arg(1).query(&mut c);
        saw_crossslot |= r.is_err_and(|e| e.to_string().to_lowercase().contains("crossslot"));
    }
    assert!(saw_crossslot);
    let exec: RedisResult<Value> = redis::cmd("EXEC").query(&mut c);
    assert!(exec.unwrap_err().to_string().to_lowercase().contains("execabort"));
    assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
}

#[test]
fn scan_sees_every_key_of_the_cluster_exactly_once() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let mut pipe = redis::pipe();
    for i in 0..300 {
        pipe.set(format!("scan-{i}"), i).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let mut cursor: u64 = 0;
    let mut seen = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg("scan-*").arg("COUNT").arg(50).query(&mut c).unwrap();
        seen.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "no key twice");
    assert_eq!(seen.len(), 300, "every key once");
}

#[test]
fn acl_users_see_only_what_their_user_may_do() {
    let (cluster, _shotover, port) = hiding_proxy();
    for node in &cluster.nodes {
        let (host, p) = node.rsplit_once(':').unwrap();
        let mut n = redis::Client::open(format!("redis://{host}:{p}/")).unwrap().get_connection().unwrap();
        for (user, pattern) in [("alice", "~alice:*"), ("bob", "~bob:*")] {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(user)
                .arg("on")
                .arg(">secret")
                .arg(pattern)
                .arg("+@all")
                .query(&mut n)
                .unwrap();
        }
    }
    let mut alice = connect(port);
    let mut bob = connect(port);
    let _: () = redis::cmd("AUTH").arg("alice").arg("secret").query(&mut alice).unwrap();
    let _: () = redis::cmd("AUTH").arg("bob").arg("secret").query(&mut bob).unwrap();
    // A failed AUTH does not undo the successful one.
    assert!(redis::cmd("AUTH").arg("bob").arg("wrong").query::<()>(&mut alice).is_err());
    for i in 0..10 {
        let _: () = alice.set(format!("alice:{i}"), i).unwrap();
        let _: () = bob.set(format!("bob:{i}"), i).unwrap();
        let denied: RedisResult<Option<String>> = alice.get(format!("bob:{i}"));
        assert!(denied.unwrap_err().to_string().contains("NOPERM"));
        let denied: RedisResult<()> = bob.set(format!("alice:{i}"), "x");
        assert!(denied.unwrap_err().to_string().contains("NOPERM"));
    }
    // A third client, not authenticated, is the default user: it may do anything.
    let mut anonymous = connect(port);
    assert_eq!(anonymous.get::<_, i64>("alice:3").unwrap(), 3);
}

#[test]
fn a_master_failover_recovers_without_restarting_the_proxy() {
    let (cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    for i in 0..30 {
        let _: () = c.set(format!("fo-{i}"), i).unwrap();
    }
    // Kill the master of fo-0 (found from the first node's view of the cluster).
    let first = &cluster.nodes[0];
    let (host, p) = first.rsplit_once(':').unwrap();
    let mut n = redis::Client::open(format!("redis://{host}:{p}/")).unwrap().get_connection().unwrap();
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg("fo-0").query(&mut n).unwrap();
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut n).unwrap();
    let master_port = nodes
        .lines()
        .filter(|l| l.contains("master"))
        .find(|l| {
            l.split_whitespace().skip(8).any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                (a.parse::<i64>().unwrap_or(-1)..=b.parse::<i64>().unwrap_or(-1)).contains(&slot)
            })
        })
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|a| a.split('@').next())
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap();
    let master_host = nodes
        .lines()
        .find_map(|l| l.split_whitespace().nth(1).filter(|a| a.contains(&format!(":{master_port}@"))))
        .and_then(|a| a.rsplit_once(':'))
        .map(|(h, _)| h.to_string())
        .unwrap();
    // valkey-cli's own status says little (the server closes the connection on SHUTDOWN):
    // the master must be gone, or the "recovery" below proves nothing.
    let _shutdown = run_tool("valkey-cli", &["-h", &master_host, "-p", &master_port, "SHUTDOWN", "NOSAVE"]);
    let master_gone = wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect((master_host.as_str(), master_port.parse::<u16>().unwrap())).is_err()
    });
    assert!(master_gone, "the master {master_host}:{master_port} still accepts connections after SHUTDOWN");
    // Until a replica is promoted, requests to that master fail; afterwards they succeed
    // through the same proxy, and so does every other key.
    let recovered = wait_until(std::time::Duration::from_secs(40), || c.set::<_, _, ()>("fo-0", "again").is_ok());
    assert!(recovered, "writes to the failed master's slots never recovered");
    // Give the other nodes a moment to learn of the promotion too.
    std::thread::sleep(std::time::Duration::from_secs(1));
    for i in 1..30 {
        let _: () = c.set(format!("fo-{i}"), "after").unwrap();
    }
}

#[test]
fn resharding_during_traffic_shows_no_errors() {
    let (cluster, _shotover, port) = hiding_proxy();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = connect(port);
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let key = format!("reshard-{}", n % 500);
                let _: () = c.set(&key, n).unwrap_or_else(|e| panic!("SET {key} during resharding: {e}"));
                let got: u64 = c.get(&key).unwrap_or_else(|e| panic!("GET {key} during resharding: {e}"));
                assert_eq!(got, n);
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Move 200 slots from the first master to the second with the cluster's own tooling.
    let first = &cluster.nodes[0];
    let (host, p) = first.rsplit_once(':').unwrap();
    let mut n = redis::Client::open(format!("redis://{host}:{p}/")).unwrap().get_connection().unwrap();
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut n).unwrap();
    let masters: Vec<String> = nodes
        .lines()
        .filter(|l| l.contains("master"))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    let (status, out) = run_tool(
        "valkey-cli",
        &[
            "--cluster",
            "reshard",
            first,
            "--cluster-from",
            &masters[0],
            "--cluster-to",
            &masters[1],
            "--cluster-slots",
            "200",
            "--cluster-yes",
        ],
    );
    assert!(status.success(), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Release);
    let requests = traffic.join().expect("a client saw an error during resharding");
    assert!(requests > 100, "{requests}");
}

#[test]
fn handling_mode_sidecars_serve_cluster_aware_clients() {
    let node_port = free_cluster_port();
    let proxy_port = free_port();
    let cluster = ValkeyCluster::start_on_six_ips(node_port);
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let _proxies: Vec<Shotover> = (1..=6)
        .map(|i| {
            let topology = format!(
                "sources:\n  - Valkey:\n      listen_addr: \"127.0.0.{i}:{proxy_port}\"\n      chain:\n        - ValkeyClusterPortsRewrite:\n            new_port: {proxy_port}\n        - ValkeySinkCluster:\n            first_contact_points: [{}]\n            direct_connection: \"127.0.0.{i}:{node_port}\"\n",
                contacts.join(", ")
            );
            let s = Shotover::builder(&topology).start().unwrap();
            assert!(
                wait_until(std::time::Duration::from_secs(10), || {
                    std::net::TcpStream::connect((format!("127.0.0.{i}").as_str(), proxy_port)).is_ok()
                }),
                "proxy {i} did not listen"
            );
            s
        })
        .collect();
    let port = proxy_port.to_string();
    let (status, out) = run_tool(
        "valkey-benchmark",
        &["--cluster", "-h", "127.0.0.1", "-p", &port, "-c", "10", "-n", "3000", "-t", "set,get", "-q", "--csv"],
    );
    assert!(status.success() && out.contains("\"GET\""), "{out}");
    assert_eq!(out.matches(&format!(":{port}")).count(), 3, "{out}");
    let client = redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{proxy_port}/")]).unwrap();
    let mut c = client.get_connection().unwrap();
    for i in 0..30 {
        let _: () = c.set(format!("h-{i}"), i).unwrap();
        assert_eq!(c.get::<_, i64>(format!("h-{i}")).unwrap(), i);
    }
}

#[test]
fn tls_cluster() {
    let certs = Certs::generate();
    let cluster = ValkeyCluster::start_tls_on_one_ip(free_cluster_port_range(), &certs);
    let port = free_port();
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let chain = format!(
        "        - ValkeySinkCluster:\n            first_contact_points: [{}]\n            tls:\n              certificate_authority_path: \"{}\"\n",
        contacts.join(", "),
        certs.path("ca.crt")
    );
    let _shotover = Shotover::start(&valkey_topology(port, &chain), port);
    let mut c = connect(port);
    let pairs: Vec<(String, i64)> = (0..30).map(|i| (format!("tls-{i}"), i)).collect();
    let _: () = c.mset(&pairs).unwrap();
    let keys: Vec<&String> = pairs.iter().map(|(k, _)| k).collect();
    let values: Vec<i64> = c.mget(&keys).unwrap();
    assert_eq!(values, (0..30).collect::<Vec<_>>());
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 30);
}

#[test]
fn connection_count_bounds_the_connections_to_each_node() {
    let cluster = ValkeyCluster::start_on_one_ip(free_cluster_port_range());
    let port = free_port();
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let chain = format!(
        "        - ValkeySinkCluster:\n            first_contact_points: [{}]\n            connection_count: 2\n",
        contacts.join(", ")
    );
    // One worker core: at most 2 connections per node from the proxy.
    let _shotover = Shotover::builder(&valkey_topology(port, &chain))
        .arg("--worker-cores")
        .arg("0")
        .wait_for(port)
        .start()
        .unwrap();
    let p = port.to_string();
    let load = std::thread::spawn(move || {
        run_tool("valkey-benchmark", &["-p", &p, "-c", "20", "-n", "30000", "-t", "set,get", "-q", "--csv"])
    });
    let mut most = 0;
    while !load.is_finished() {
        for node in &cluster.nodes {
            let (host, np) = node.rsplit_once(':').unwrap();
            let (_, list) = run_tool("valkey-cli", &["-h", host, "-p", np, "CLIENT", "LIST", "TYPE", "normal"]);
            // Our own valkey-cli connection is the one running CLIENT LIST.
            let proxy_connections = list.lines().filter(|l| !l.contains("cmd=client|list")).count();
            most = most.max(proxy_connections);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, out) = load.join().unwrap();
    assert!(status.success() && out.contains("\"GET\""), "{out}");
    assert!(most >= 1, "the sampling saw no proxy connection");
    // Two pooled connections, plus at most one short-lived slot-map fetch.
    assert!(most <= 3, "{most} connections from the proxy to one node");
}

#[test]
fn concurrent_clients_share_node_connections_and_each_gets_its_own_replies() {
    let (cluster, _shotover, port) = hiding_proxy();
    // Eight clients pipeline at once over the core's shared connection to each node: every
    // reply must reach the client that asked, in its order.
    let workers: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = connect(port);
                for round in 0..5 {
                    let mut pipe = redis::pipe();
                    for i in 0..100 {
                        let key = format!("w{w}-k{i}");
                        pipe.set(&key, format!("{w}-{round}-{i}")).ignore();
                        pipe.get(&key);
                    }
                    let got: Vec<String> = pipe.query(&mut c).unwrap();
                    let expected: Vec<String> = (0..100).map(|i| format!("{w}-{round}-{i}")).collect();
                    assert_eq!(got, expected, "worker {w} round {round}");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // The nodes close the proxy's connections: after a moment idle, the next requests go
    // out on new ones.
    for node in &cluster.nodes {
        let (host, p) = node.rsplit_once(':').unwrap();
        let mut n = redis::Client::open(format!("redis://{host}:{p}/")).unwrap().get_connection().unwrap();
        let _: i64 =
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").arg("SKIPME").arg("yes").query(&mut n).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let mut c = connect(port);
    for i in 0..20 {
        assert_eq!(c.get::<_, String>(format!("w3-k{i}")).unwrap(), format!("3-4-{i}"));
    }
}

#[test]
fn odd_requests_never_disturb_the_clients_sharing_a_node_connection() {
    use std::io::Write;
    let (_cluster, _shotover, port) = hiding_proxy();
    let mut good = connect(port);
    let _: () = good.set("shared", "value").unwrap();
    // Requests that a node answers with more than one reply (a bare bulk string, a map, an
    // inline command with a bad quote), or that change the connection for everyone on it
    // (QUIT, ASKING), go on connections of their own.
    for odd in [&b"$3\r\nfoo\r\n"[..], b"%1\r\n+a\r\n+b\r\n", b"GET \"a\r\n", b"*1\r\n$6\r\nASKING\r\n", b"QUIT\r\n"] {
        let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        raw.write_all(odd).unwrap();
        // Each gets its answer: +OK for ASKING and QUIT, an error for the rest.
        let outcome = read_once(&mut raw, std::time::Duration::from_secs(5));
        let ReadOutcome::Data(first) = outcome else {
            panic!("{:?}: {outcome:?}", String::from_utf8_lossy(odd));
        };
        let expected = if odd.ends_with(b"ASKING\r\n") || odd == b"QUIT\r\n" { "+OK\r\n" } else { "-ERR " };
        assert!(first.starts_with(expected), "{:?} got {first:?}", String::from_utf8_lossy(odd));
        // Meanwhile, and after it, the other client gets exactly its own replies.
        for i in 0..20 {
            let _: () = good.set(format!("odd-{i}"), i).unwrap();
            assert_eq!(good.get::<_, String>("shared").unwrap(), "value", "after {:?}", String::from_utf8_lossy(odd));
            assert_eq!(good.get::<_, i64>(format!("odd-{i}")).unwrap(), i);
        }
    }
}
