//! Cluster hiding against the fair bar: the same commands sent through ValkeySinkCluster in
//! front of a 6-node cluster (3 masters) and to a single cluster-enabled Valkey node that
//! owns every slot, reply for reply. Multi-key commands keep their keys in one hash tag, as
//! Valkey Cluster requires even of a single node.
//!
//! Differences that cannot be avoided are listed where they are skipped, with their reason.
//! CLIENT TRACKING is compared on raw connections, where RESP3 pushes can be seen.

use crate::fidelity::{lossy, Raw};
use redis::Value;
use shotover_integration_tests::*;
use std::time::Duration;

/// `--enable-debug-command yes`: DEBUG OBJECT and DEBUG SLEEP are compared too.
const DEBUG: &str = "--enable-debug-command yes";

/// A single cluster-enabled node that owns all 16384 slots (its port leaves room for its
/// cluster bus port, 10000 above).
fn one_node_cluster() -> ValkeyServer {
    let server =
        ValkeyServer::start_on(free_cluster_port(), &["--cluster-enabled", "yes", "--enable-debug-command", "yes"]);
    let mut c = server.client();
    let _: () = redis::cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(0).arg(16383).query(&mut c).unwrap();
    let ok = wait_until(Duration::from_secs(10), || {
        redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c).is_ok_and(|i| i.contains("cluster_state:ok"))
    });
    assert!(ok, "the one-node cluster did not become ok");
    server
}

fn hiding(cluster: &ValkeyCluster) -> (Shotover, u16) {
    let port = free_port();
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let chain = format!("        - ValkeySinkCluster:\n            first_contact_points: [{}]\n", contacts.join(", "));
    (Shotover::start(&valkey_topology(port, &chain), port), port)
}

/// A reply, or the error's text: what a user sees either way.
fn run(c: &mut redis::Connection, args: &[&str]) -> Result<Value, String> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query::<Value>(c).map_err(|e| format!("{:?}: {}", e.code(), e.detail().unwrap_or_default()))
}

/// A reply both gave (an error reply is a reply too: it need not be used).
struct Reply(Result<Value, String>);

/// The proxy and the reference node, one connection to each.
struct Pair {
    proxy: redis::Connection,
    reference: redis::Connection,
}

impl Pair {
    fn both(&mut self, args: &[&str]) -> (Result<Value, String>, Result<Value, String>) {
        (run(&mut self.proxy, args), run(&mut self.reference, args))
    }

    /// Sends `args` to both and asserts the replies are equal.
    fn same(&mut self, args: &[&str]) -> Reply {
        let (proxy, reference) = self.both(args);
        assert_eq!(proxy, reference, "{args:?}: the proxy (left) and one node (right) differ");
        Reply(proxy)
    }

    /// One `field:value` of an INFO section from each.
    fn info_field(&mut self, section: &str, field: &str) -> (Option<String>, Option<String>) {
        let pick = |v: Result<Value, String>| {
            let text = match v {
                Ok(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(Value::VerbatimString { text, .. }) => text,
                other => panic!("INFO {section}: {other:?}"),
            };
            text.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
        };
        let (p, r) = self.both(&["INFO", section]);
        (pick(p), pick(r))
    }
}

fn text(v: &Result<Value, String>) -> String {
    match v {
        Ok(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Ok(Value::SimpleString(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn the_cluster_behind_the_proxy_answers_like_one_node_that_owns_every_slot() {
    let cluster = ValkeyCluster::start_on_one_ip_with(free_cluster_port_range(), DEBUG);
    let reference = one_node_cluster();
    let (shotover, port) = hiding(&cluster);
    let mut pair = Pair { proxy: connect(port), reference: reference.client() };

    // 1001 keys, spread over every master.
    let mut pipe = redis::pipe();
    for i in 0..1001 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
    }
    let _: () = pipe.query(&mut pair.proxy).unwrap();
    let _: () = pipe.query(&mut pair.reference).unwrap();

    // Node-wide reads count the whole cluster.
    pair.same(&["DBSIZE"]);
    let (proxy, one) = pair.info_field("keyspace", "db0");
    assert_eq!(proxy, one, "INFO keyspace");
    assert!(proxy.is_some_and(|db0| db0.starts_with("keys=1001,")));
    let (proxy, one) = pair.info_field("persistence", "rdb_changes_since_last_save");
    assert_eq!(proxy, one, "INFO persistence: writes since the last save, every master's");
    let keys = pair.same(&["KEYS", "key:1000"]).0;
    assert_eq!(keys, Ok(Value::Array(vec![Value::BulkString(b"key:1000".to_vec())])));

    // RANDOMKEY finds a key wherever it lives: after FLUSHALL, one key on one master.
    pair.same(&["FLUSHALL"]);
    pair.same(&["RANDOMKEY"]);
    pair.same(&["SET", "lonely", "1"]);
    assert_eq!(pair.same(&["RANDOMKEY"]).0, Ok(Value::BulkString(b"lonely".to_vec())));

    // Keyed subcommands reach the key's master. DEBUG OBJECT's text holds an address and
    // LRU figures that differ from node to node: its encoding is compared.
    for key in ["lonely", "a", "b", "c"] {
        pair.same(&["SET", key, "x"]);
        let (proxy, one) = pair.both(&["DEBUG", "OBJECT", key]);
        let encoding =
            |v: &Result<Value, String>| text(v).split(' ').find(|w| w.starts_with("encoding:")).map(str::to_string);
        assert_eq!(encoding(&proxy), encoding(&one), "DEBUG OBJECT {key}: {proxy:?} / {one:?}");
        assert!(encoding(&proxy).is_some(), "DEBUG OBJECT {key}: {proxy:?}");
        pair.same(&["OBJECT", "ENCODING", key]);
        pair.same(&["MEMORY", "USAGE", key]);
    }

    // Arguments are keys only where the command table says so: DEBUG SLEEP takes none.
    pair.same(&["MULTI"]);
    pair.same(&["RPUSH", "mylist", "a"]);
    pair.same(&["DEBUG", "SLEEP", "0"]);
    assert_eq!(pair.same(&["EXEC"]).0, Ok(Value::Array(vec![Value::Int(1), Value::Okay])));

    // Transaction commands out of their order answer as Valkey does.
    assert_eq!(pair.same(&["UNWATCH"]).0, Ok(Value::Okay));
    pair.same(&["EXEC"]);
    pair.same(&["DISCARD"]);
    for refused in ["MULTI", "WATCH"] {
        pair.same(&["MULTI"]);
        pair.same(&["SET", "a", "1"]);
        let mut args = vec![refused];
        if refused == "WATCH" {
            args.push("a");
        }
        pair.same(&args);
        let exec = pair.same(&["EXEC"]).0;
        assert!(exec.as_ref().is_err_and(|e| e.contains("EXECABORT")), "{refused} inside MULTI: {exec:?}");
    }
    pair.same(&["MULTI"]);
    pair.same(&["UNWATCH"]);
    pair.same(&["EXEC"]);
    // Commands without a key queued before the first key ("c" is not on the first master)
    // run in the key's transaction, in their place.
    pair.same(&["MULTI"]);
    pair.same(&["PING"]);
    pair.same(&["UNWATCH"]);
    pair.same(&["SET", "c", "1"]);
    pair.same(&["ECHO", "after"]);
    pair.same(&["EXEC"]);
    pair.same(&["MULTI"]);
    pair.same(&["ECHO", "alone"]);
    pair.same(&["EXEC"]);

    // Functions and scripts are loaded, deleted and flushed on every master.
    let library = "#!lua name=hiding\nserver.register_function('hidden_get', function(keys) return server.call('GET', keys[1]) end)";
    pair.same(&["FUNCTION", "LOAD", library]);
    for key in ["lonely", "a", "b", "c"] {
        pair.same(&["FCALL", "hidden_get", "1", key]);
    }
    pair.same(&["FUNCTION", "DELETE", "hiding"]);
    pair.same(&["FUNCTION", "LOAD", library]);
    pair.same(&["FUNCTION", "FLUSH"]);
    pair.same(&["FCALL", "hidden_get", "1", "a"]);
    let sha = text(&pair.same(&["SCRIPT", "LOAD", "return redis.call('GET', KEYS[1])"]).0);
    for key in ["lonely", "a", "b", "c"] {
        pair.same(&["EVALSHA", &sha, "1", key]);
    }
    pair.same(&["SCRIPT", "EXISTS", &sha, "0000000000000000000000000000000000000000"]);

    // Server-wide settings reach every node.
    pair.same(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]);
    for key in ["lonely", "a", "b", "c"] {
        let (proxy, one) = pair.both(&["OBJECT", "FREQ", key]);
        assert!(
            matches!((&proxy, &one), (Ok(Value::Int(_)), Ok(Value::Int(_)))),
            "OBJECT FREQ {key}: {proxy:?} / {one:?}"
        );
    }
    pair.same(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    pair.same(&["CONFIG", "GET", "maxmemory-policy"]);
    for key in ["lonely", "a", "b", "c"] {
        pair.same(&["GET", key]);
    }
    pair.same(&["CONFIG", "RESETSTAT"]);
    let (proxy, one) = pair.info_field("stats", "keyspace_hits");
    assert_eq!((proxy.as_deref(), one.as_deref()), (Some("0"), Some("0")), "CONFIG RESETSTAT on every node");
    pair.same(&["LATENCY", "RESET"]);
    // A slow command on the masters other than the first (slots 5461-16383: `c`, `foo`) shows
    // in LATENCY LATEST. Timings, and events such as `fast-command` that a loaded machine may
    // add on any node, differ from the one node's: the `command` event is looked for.
    pair.same(&["CONFIG", "SET", "latency-monitor-threshold", "1"]);
    let busy = "local i = 0 while i < 3000000 do i = i + 1 end return i";
    for key in ["c", "foo"] {
        pair.same(&["EVAL", busy, "1", key]);
    }
    let events = |v: Result<Value, String>| match v {
        Ok(Value::Array(events)) => events
            .into_iter()
            .filter_map(|e| match e {
                Value::Array(fields) => fields.into_iter().next(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        other => panic!("LATENCY LATEST: {other:?}"),
    };
    let (proxy, one) = pair.both(&["LATENCY", "LATEST"]);
    let command = Value::BulkString(b"command".to_vec());
    let (proxy, one) = (events(proxy), events(one));
    assert!(proxy.contains(&command) && one.contains(&command), "LATENCY LATEST: {proxy:?} / {one:?}");
    pair.same(&["CONFIG", "SET", "latency-monitor-threshold", "0"]);

    // The client's name holds on every node it reaches.
    pair.same(&["CLIENT", "SETNAME", "hider"]);
    for key in ["lonely", "a", "b", "c"] {
        pair.same(&["GET", key]);
    }
    pair.same(&["CLIENT", "GETNAME"]);
    pair.same(&["PING"]);
    pair.same(&["ECHO", "hello"]);

    // SCAN walks every master: the same keys as the one node (cursors differ: the proxy's
    // names a master as well).
    let scan_all = |c: &mut redis::Connection| {
        let mut keys: Vec<String> = c.scan::<String>().unwrap().collect();
        keys.sort();
        keys
    };
    use redis::Commands;
    assert_eq!(scan_all(&mut pair.proxy), scan_all(&mut pair.reference));
    let sent = "shotover_source_to_sink_latency_seconds_count{sink=\"ValkeySinkCluster\"}";
    assert!(metric_value(&shotover.metrics(), sent) >= 10.0, "{}", shotover.metrics());
}

#[test]
fn resp3_after_hello_3_and_blocked_clients_count_the_whole_cluster() {
    let cluster = ValkeyCluster::start_on_one_ip_with(free_cluster_port_range(), DEBUG);
    let reference = one_node_cluster();
    let (_shotover, port) = hiding(&cluster);
    let resp3 = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}/?protocol=resp3")).unwrap().get_connection().unwrap()
    };
    let mut pair = Pair { proxy: resp3(port), reference: resp3(reference.port) };
    for key in ["z", "{z}2", "a", "b"] {
        pair.same(&["ZADD", key, "1.5", "one", "2", "two"]);
        let reply = pair.same(&["ZRANGE", key, "0", "-1", "WITHSCORES"]).0;
        let first_score = match &reply {
            Ok(Value::Array(pairs)) => match pairs.first() {
                Some(Value::Array(pair)) => pair.get(1).cloned(),
                _ => None,
            },
            _ => None,
        };
        assert_eq!(first_score, Some(Value::Double(1.5)), "{key}: RESP3 scores are doubles: {reply:?}");
        pair.same(&["HSET", &format!("h{key}"), "f", "v"]);
        pair.same(&["HGETALL", &format!("h{key}")]);
    }
    // A client blocked on a key of any master counts.
    let mut blockers = Vec::new();
    for p in [port, reference.port] {
        blockers.push(std::thread::spawn(move || {
            let mut c = connect(p);
            let _: Option<(String, String)> = redis::cmd("BLPOP").arg("blocked-list").arg(5).query(&mut c).unwrap();
        }));
    }
    let mut plain = Pair { proxy: connect(port), reference: reference.client() };
    let counted = wait_until(Duration::from_secs(4), || {
        plain.info_field("clients", "blocked_clients") == (Some("1".into()), Some("1".into()))
    });
    assert!(counted, "blocked_clients: {:?}", plain.info_field("clients", "blocked_clients"));
    plain.same(&["RPUSH", "blocked-list", "a", "b"]);
    for blocker in blockers {
        blocker.join().unwrap();
    }
}

#[test]
fn with_command_refused_by_acl_the_built_in_table_routes() {
    let cluster = ValkeyCluster::start_on_one_ip_with(free_cluster_port_range(), DEBUG);
    for node in &cluster.nodes {
        let port: u16 = node.rsplit_once(':').unwrap().1.parse().unwrap();
        let _: () = redis::cmd("ACL").arg("SETUSER").arg("default").arg("-command").query(&mut connect(port)).unwrap();
    }
    let reference = one_node_cluster();
    let (shotover, port) = hiding(&cluster);
    let mut pair = Pair { proxy: connect(port), reference: reference.client() };
    for i in 0..50 {
        pair.same(&["SET", &format!("key:{i}"), "v"]);
    }
    assert!(
        shotover.wait_for_log("the cluster refused COMMAND", Duration::from_secs(5)),
        "a warning says why the built-in table is used:\n{}",
        shotover.output()
    );
    pair.same(&["DBSIZE"]);
    pair.same(&["MULTI"]);
    pair.same(&["SET", "a", "1"]);
    pair.same(&["DEBUG", "SLEEP", "0"]);
    pair.same(&["EXEC"]);
    pair.same(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]);
    for key in ["a", "b", "c", "key:1"] {
        pair.same(&["SET", key, "1"]);
        let (proxy, _) = pair.both(&["OBJECT", "FREQ", key]);
        assert!(matches!(proxy, Ok(Value::Int(_))), "OBJECT FREQ {key} after CONFIG SET on every node: {proxy:?}");
    }
}

#[test]
fn client_tracking_invalidations_come_from_every_master() {
    let cluster = ValkeyCluster::start_on_one_ip_with(free_cluster_port_range(), DEBUG);
    let reference = one_node_cluster();
    let (_shotover, port) = hiding(&cluster);
    let keys: Vec<String> = (0..8).map(|i| format!("tracked:{i}")).collect();
    for target in [port, reference.port] {
        let mut tracker = Raw::connect(target);
        tracker.talk(b"HELLO 3\r\n");
        assert_eq!(lossy(&tracker.talk(b"CLIENT TRACKING ON\r\n")), "+OK\r\n");
        for key in &keys {
            assert_eq!(lossy(&tracker.talk(format!("GET {key}\r\n").as_bytes())), "_\r\n", "{target}: GET {key}");
        }
        let mut writer = connect(target);
        for key in &keys {
            let _: () = redis::cmd("SET").arg(key).arg("v").query(&mut writer).unwrap();
        }
        // Each key's invalidation comes as a RESP3 push, before a later reply or while idle,
        // from whichever master holds the key; and no push is taken for a reply.
        let mut seen = String::new();
        let all = wait_until(Duration::from_secs(5), || {
            seen.push_str(&lossy(&tracker.talk(b"PING\r\n")));
            keys.iter().all(|k| seen.contains(&format!(">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{k}\r\n", k.len())))
        });
        assert!(all, "{target}: every key's invalidation: {seen:?}");
        assert_eq!(lossy(&tracker.talk(b"GET tracked:0\r\n")), "$1\r\nv\r\n", "{target}: replies stay paired");

        // Tracking turned on in the same pipeline as the read applies to that read.
        let mut piped = Raw::connect(target);
        let start = lossy(&piped.talk(b"HELLO 3\r\nCLIENT TRACKING ON\r\nGET tracked:5\r\n"));
        assert!(start.ends_with("+OK\r\n$1\r\nv\r\n"), "{target}: {start:?}");
        let _: () = redis::cmd("SET").arg("tracked:5").arg("w").query(&mut writer).unwrap();
        let mut seen = String::new();
        let invalidated = wait_until(Duration::from_secs(5), || {
            seen.push_str(&lossy(&piped.talk(b"PING\r\n")));
            seen.contains(">2\r\n$10\r\ninvalidate\r\n*1\r\n$9\r\ntracked:5\r\n")
        });
        assert!(invalidated, "{target}: {seen:?}");
    }
    // REDIRECT names a connection of one node, and OPTIN's CLIENT CACHING applies to the next
    // command on one node: refused rather than tracking the wrong reads.
    let mut proxy = connect(port);
    for mode in [&["REDIRECT", "1"][..], &["OPTIN"]] {
        let refused = run(&mut proxy, &[&["CLIENT", "TRACKING", "ON"][..], mode].concat());
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("not supported by ValkeySinkCluster")),
            "{mode:?}: {refused:?}"
        );
    }
}
