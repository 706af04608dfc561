//! CassandraSinkCluster against a real Cassandra 5.0 ring of two data centres (shared by
//! these tests, each in keyspaces of its own), driven by the Python cassandra-driver with its
//! token-aware policy, the scylla Rust driver and cqlsh.

use crate::cassandra::cassandra_topology;
use shotover_integration_tests::backends::{
    backends_dir, run_python, run_python_with_timeout, shared_ring, Cassandra, SharedRing, SHARED_RING_USER,
};
use shotover_integration_tests::fault_proxy::{delays_stall_cuts_then_silence, FaultProxy};
use shotover_integration_tests::*;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// The three Shotover nodes a cluster of proxies has: one per place of the shared ring.
const SHOTOVER: [(&str, &str, &str, &str); 3] = [
    ("127.0.0.1", "dc1", "rack1", "2dd022d6-2937-4754-89d6-02d2933a8f7a"),
    ("127.0.0.2", "dc1", "rack2", "3c3c4e2d-ba74-4f76-b52e-fb5bcee6a9f4"),
    ("127.0.0.3", "dc2", "rack1", "fa74d7ec-1223-472b-97de-04a32ccdb70b"),
];

/// A CassandraSinkCluster chain for the Shotover node `local` (index into `nodes`).
fn cluster_sink(contact: &[String], nodes: &[(&str, &str, &str, &str)], port: u16, local: usize) -> String {
    let contact = contact.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "        - CassandraSinkCluster:\n            first_contact_points: [{contact}]\n            local_shotover_host_id: \"{}\"\n            connect_timeout_ms: 3000\n            shotover_nodes:\n",
        nodes[local].3
    );
    for (ip, dc, rack, id) in nodes {
        out.push_str(&format!(
            "              - address: \"{ip}:{port}\"\n                data_center: \"{dc}\"\n                rack: \"{rack}\"\n                host_id: \"{id}\"\n"
        ));
    }
    out
}

fn topology_on(ip: &str, port: u16, chain: &str) -> String {
    cassandra_topology(port, chain).replace(&format!("127.0.0.1:{port}"), &format!("{ip}:{port}"))
}

fn script(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name)).unwrap()
}

fn lines_of(out: &str, key: &str) -> String {
    out.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default().to_string()
}

/// Runs `cql_cluster.py` through the proxy at `ip:port`; asserts it finished.
fn drive(ip: &str, port: u16, direct: &str, version: &str, keyspace: &str, factors: &str) -> String {
    drive_as(SHARED_RING_USER, ip, port, direct, version, keyspace, factors)
}

/// [`drive`], logged in as `user` (`name:password`).
fn drive_as(user: &str, ip: &str, port: u16, direct: &str, version: &str, keyspace: &str, factors: &str) -> String {
    let (direct_ip, direct_port) = direct.split_once(':').unwrap();
    let port = port.to_string();
    let args = [ip, port.as_str(), direct_ip, direct_port, version, "dc1", keyspace, factors, user];
    let out = run_python_with_timeout(&script("cql_cluster.py"), &args, Duration::from_secs(240)).expect_success();
    assert!(out.lines().any(|l| l == "done"), "{out}");
    out
}

/// The shared ring, and one proxy in front of it, the first of [`SHOTOVER`], on a free port.
fn one_proxy_on_the_shared_ring() -> (SharedRing, u16, Shotover) {
    let ring = shared_ring();
    let port = free_port();
    let shotover =
        Shotover::start(&cassandra_topology(port, &cluster_sink(&ring.nodes, &SHOTOVER[..1], port, 0)), port);
    (ring, port, shotover)
}

#[test]
fn token_aware_routing_stays_in_the_local_data_centre_and_prefers_the_rack() {
    let (ring, port, shotover) = one_proxy_on_the_shared_ring();

    // One replica per data centre: every insert is coordinated by dc1's replica of its
    // partition, in whichever rack, never by dc2's.
    for version in ["3", "4", "5"] {
        let out = drive("127.0.0.1", port, &ring.nodes[0], version, &format!("cl_one_v{version}"), "dc1:1,dc2:1");
        assert_eq!(lines_of(&out, "on_local_replica"), "40/40", "v{version}:\n{out}");
        assert_eq!(lines_of(&out, "reads"), "40/40", "v{version}:\n{out}");
        // The proxy is the only node the driver sees, in its own place.
        assert_eq!(lines_of(&out, "hosts"), format!("127.0.0.1:{port}/dc1/rack1"), "{out}");
        assert!(out.contains(&format!("local=dc1/rack1/{} tokens=", SHOTOVER[0].3)), "{out}");
        assert_eq!(lines_of(&out, "peers"), "", "{out}");
    }
    // Two replicas in dc1, one per rack: the proxy's own rack (rack1, 127.0.0.1) coordinates all.
    let out = drive("127.0.0.1", port, &ring.nodes[0], "4", "cl_two", "dc1:2,dc2:1");
    assert_eq!(lines_of(&out, "rack_preferred"), "40/40", "{out}");
    assert_eq!(lines_of(&out, "coordinators"), "127.0.0.1:40", "{out}");
    let metrics = shotover.metrics();
    assert_eq!(metric_value(&metrics, "failed_requests{chain=\"cql\",transform=\"CassandraSinkCluster\"}"), 0.0);
    let sent = "shotover_source_to_sink_latency_seconds_count{sink=\"CassandraSinkCluster\"}";
    assert!(metric_value(&metrics, sent) >= 1.0, "{metrics}");
}

#[test]
fn three_shotover_nodes_look_like_a_cluster_to_drivers_and_cqlsh() {
    let ring = shared_ring();
    let port = free_port();
    let proxies: Vec<Shotover> = (0..SHOTOVER.len())
        .map(|i| {
            let topology = topology_on(SHOTOVER[i].0, port, &cluster_sink(&ring.nodes, &SHOTOVER, port, i));
            Shotover::builder(&topology).start().expect("shotover did not start")
        })
        .collect();
    for (ip, ..) in SHOTOVER {
        assert!(
            wait_until(Duration::from_secs(15), || TcpStream::connect((ip, port)).is_ok()),
            "no proxy on {ip}:{port}:\n{}",
            proxies.iter().map(Shotover::output).collect::<String>()
        );
    }

    // The driver finds all three proxies, in their places, from the first one's tables, and
    // sends each partition to a proxy whose rack holds its replica.
    let out = std::panic::catch_unwind(|| drive("127.0.0.1", port, &ring.nodes[0], "4", "cl_three", "dc1:1,dc2:1"))
        .unwrap_or_else(|_| panic!("the proxies said:\n{}", proxies.iter().map(Shotover::output).collect::<String>()));
    let hosts: Vec<String> = SHOTOVER.iter().map(|(ip, dc, rack, _)| format!("{ip}:{port}/{dc}/{rack}")).collect();
    assert_eq!(lines_of(&out, "hosts"), hosts.join(","), "{out}");
    assert_eq!(lines_of(&out, "peers"), "127.0.0.2/dc1/rack2,127.0.0.3/dc2/rack1", "{out}");
    assert_eq!(lines_of(&out, "on_local_replica"), "40/40", "{out}");
    assert_eq!(lines_of(&out, "reads"), "40/40", "{out}");

    // cqlsh sees the second proxy as itself.
    let cqlsh = backends_dir().join("venv/bin/cqlsh").display().to_string();
    let (user, password) = SHARED_RING_USER.split_once(':').unwrap();
    let port_text = port.to_string();
    let query = "SELECT data_center, rack, host_id FROM system.local";
    let (status, out) = run_tool(&cqlsh, &["-u", user, "-p", password, "127.0.0.2", &port_text, "-e", query]);
    assert!(status.success(), "{out}");
    assert!(out.contains("dc1") && out.contains("rack2") && out.contains(SHOTOVER[1].3), "{out}");

    // The scylla Rust driver: it discovers the other proxies and runs prepared statements.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(format!("127.0.0.1:{port}"))
            .user(user, password)
            .build()
            .await
            .expect("scylla driver connects through the proxies");
        let state = session.get_cluster_state();
        let mut seen: Vec<String> = state.get_nodes_info().iter().map(|n| n.address.to_string()).collect();
        seen.sort();
        let expected: Vec<String> = SHOTOVER.iter().map(|(ip, ..)| format!("{ip}:{port}")).collect();
        assert_eq!(seen, expected);
        session.query_unpaged("CREATE TABLE IF NOT EXISTS cl_three.s (k int PRIMARY KEY, v text)", &[]).await.unwrap();
        let mut insert = session.prepare("INSERT INTO cl_three.s (k, v) VALUES (?, ?)").await.unwrap();
        // The keyspace has a replica in each data centre and the driver reads through any of
        // the three proxies (LOCAL_QUORUM by default): a write must reach both replicas
        // before it is acknowledged, or a read in the other data centre may miss it.
        insert.set_consistency(scylla::statement::Consistency::All);
        let select = session.prepare("SELECT v FROM cl_three.s WHERE k = ?").await.unwrap();
        for k in 0..20i32 {
            session.execute_unpaged(&insert, (k, format!("s{k}"))).await.unwrap();
        }
        for k in 0..20i32 {
            let rows = session.execute_unpaged(&select, (k,)).await.unwrap().into_rows_result().unwrap();
            let (v,): (String,) = rows.single_row().unwrap();
            assert_eq!(v, format!("s{k}"));
        }
    });
}

#[test]
fn real_driver_workload_through_the_cluster_sink() {
    let ring = shared_ring();
    let port = free_port();
    let chain = cluster_sink(&ring.nodes, &SHOTOVER[..1], port, 0);
    let _shotover = Shotover::start(&cassandra_topology(port, &chain), port);
    // Every native type, prepared statements, a batch, paging through 10 000 rows, and a
    // schema change made on a node reaching the client as an event: v4 with LZ4, and v5.
    let workload = script("cql_workload.py");
    let (user, password) = SHARED_RING_USER.split_once(':').unwrap();
    std::env::set_var("CQL_USER", user);
    std::env::set_var("CQL_PASSWORD", password);
    std::env::set_var("CQL_KEYSPACE_SUFFIX", "_cluster");
    for (version, compression) in [("4", "lz4"), ("5", "none")] {
        let port = port.to_string();
        let out = run_python_with_timeout(
            &workload,
            &[
                "127.0.0.1",
                &port,
                version,
                compression,
                &ring.port.to_string(),
                "{'class': 'NetworkTopologyStrategy', 'dc1': 2, 'dc2': 1}",
            ],
            Duration::from_secs(240),
        )
        .expect_success();
        for line in ["types_roundtrip=True", "prepared_select=batch10005", "paged_rows=10010", "schema_event=True"] {
            assert!(out.lines().any(|l| l == line), "v{version} {compression}: missing {line}:\n{out}");
        }
    }
}

#[test]
fn cluster_sink_config_errors_name_the_field() {
    let port = free_port();
    let good = cluster_sink(&["127.0.0.1:9042".to_string()], &SHOTOVER, port, 0);
    let cases = [
        (
            good.replace(
                "local_shotover_host_id: \"2dd022d6-2937-4754-89d6-02d2933a8f7a\"",
                "local_shotover_host_id: \"00000000-0000-0000-0000-000000000001\"",
            ),
            "local_shotover_host_id: 00000000-0000-0000-0000-000000000001 is not the host_id of any entry of shotover_nodes",
        ),
        (good.replace("127.0.0.2:", "127.0.0.2.7:"), "shotover_nodes[1].address"),
        (good.replace("[\"127.0.0.1:9042\"]", "[\"no-port\"]"), "first_contact_points[0]"),
        (good.replace("fa74d7ec-1223-472b-97de-04a32ccdb70b", "fa74d7ec"), "shotover_nodes[2].host_id: \"fa74d7ec\" is not a UUID"),
    ];
    for (chain, expected) in cases {
        let (status, output) =
            Shotover::builder(&cassandra_topology(port, &chain)).run_to_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(1), "{output}");
        assert!(output.contains(expected), "expected {expected:?} in:\n{output}");
        assert!(output.contains("sources[0].Cassandra.chain[0]"), "{output}");
    }
}

fn failover(port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let mut all = vec!["127.0.0.1", port.as_str()];
    all.extend_from_slice(args);
    run_python_with_timeout(&script("cql_failover.py"), &all, Duration::from_secs(180)).expect_success()
}

/// Runs 20 s of prepared inserts through the proxy on `port` (`shotover`) while
/// [`delays_stall_cuts_then_silence`] runs on `faults` (the last one stalls and goes
/// silent), then checks what clients saw: nothing waited for the driver's own 20 s
/// timeout, the last quarter of the run succeeded, and every acknowledged insert reads back
/// at ALL.
fn load_through_faults(port: u16, shotover: &Shotover, faults: &[FaultProxy]) {
    let markers = TempDir::new("faults");
    let started = markers.path("load-started");
    let started_arg = started.display().to_string();
    let load = std::thread::spawn(move || {
        let args = ["127.0.0.1", &port.to_string(), "load", "20", &started_arg, "verify"].map(str::to_string);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_python_with_timeout(&script("cql_failover.py"), &args, Duration::from_secs(180))
    });
    assert!(wait_until(Duration::from_secs(60), || started.exists()), "the load did not start");
    let last = faults.len() - 1;
    delays_stall_cuts_then_silence(faults, Duration::from_secs(1), last, Duration::from_secs(1), Some(last));
    let out = load.join().expect("the load thread").expect_success_with_log(shotover);
    eprintln!("under faults: {}", out.lines().collect::<Vec<_>>().join("; "));
    let count = |key: &str| lines_of(&out, key).parse::<u64>().unwrap_or_else(|_| panic!("{key}:\n{out}"));
    assert_eq!(count("timed_out"), 0, "a request waited 20 s:\n{out}\n{}", shotover.output());
    let (read, acked) =
        lines_of(&out, "acked_and_read").split_once('/').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
    assert_eq!(read, acked, "every acknowledged insert reads back:\n{out}");
    assert!(acked.parse::<u64>().unwrap() > 1000, "{out}");
    let (at_end_ok, at_end_all) =
        lines_of(&out, "ok_at_end").split_once('/').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
    assert_eq!(at_end_ok, at_end_all, "recovered by the last quarter:\n{out}\n{}", shotover.output());
    assert!(faults.iter().all(|f| f.accepted() > 0), "the sink reached every node through its fault proxy");
    assert!(shotover.wait_for_log("within the read_timeout", Duration::from_secs(5)), "{}", shotover.output());
}

/// Fault injection (issue 16) for CassandraSinkCluster and then CassandraSinkSingle, on a
/// ring of their own (Cassandra 2.1, two nodes, both replicas of everything) whose nodes
/// tell clients (`system.peers`) that they are at 127.0.1.N: a fault proxy there in front of
/// each node carries every connection the cluster sink makes, to the contact point and to
/// the node it discovers. Under prepared inserts: delays on every node, a 2 s stall of one
/// (under `read_timeout`: late, not failed), cuts in the middle of answers, then one node's
/// connections silent until `read_timeout` (3 s) ends them (see [`load_through_faults`]).
/// The single sink gets the same, through a fault proxy of its own in front of node 1.
#[test]
fn delays_stalls_cuts_and_silence_lose_nothing_acknowledged() {
    use std::net::{IpAddr, SocketAddr};
    let ring = Cassandra::start_with(&["127.0.0.1", "127.0.0.2"], &["--broadcast-rpc-net", "127.0.1"]);
    let faults: Vec<FaultProxy> = (ring.nodes.iter())
        .map(|node| {
            let upstream: SocketAddr = node.parse().expect("a node address");
            let IpAddr::V4(ip) = upstream.ip() else { panic!("an IPv4 node: {node}") };
            FaultProxy::start_on(SocketAddr::from(([127, 0, 1, ip.octets()[3]], upstream.port())), upstream)
        })
        .collect();
    let contact = [format!("127.0.1.1:{}", faults[0].port)];
    let port = free_port();
    let nodes = [("127.0.0.1", "datacenter1", "rack1", SHOTOVER[0].3)];
    let sink = cluster_sink(&contact, &nodes, port, 0) + "            read_timeout: 3\n";
    let shotover = Shotover::start(&cassandra_topology(port, &sink), port);
    assert!(failover(port, &["setup"]).contains("setup=ok"));
    load_through_faults(port, &shotover, &faults);

    let fault = FaultProxy::start(ring.nodes[0].parse().expect("a node address"));
    let port = free_port();
    let sink = crate::cassandra::cassandra_sink(&fault.address()) + "            read_timeout: 3\n";
    let shotover = Shotover::start(&cassandra_topology(port, &sink), port);
    load_through_faults(port, &shotover, &[fault]);
}

/// Crashes and restarts on a ring of its own (Cassandra 2.1, two nodes, both replicas of
/// everything): a node killed under load, every node down, and the nodes back with their
/// prepared statements forgotten.
#[test]
fn node_failures_give_the_guides_errors_and_unprepared_is_recovered() {
    let ring = Cassandra::start(&["127.0.0.1", "127.0.0.2"]);
    let port = free_port();
    let nodes = [("127.0.0.1", "datacenter1", "rack1", SHOTOVER[0].3)];
    let shotover = Shotover::start(&cassandra_topology(port, &cluster_sink(&ring.nodes, &nodes, port, 0)), port);
    assert!(failover(port, &["setup"]).contains("setup=ok"));

    // Node 2 dies a second into 12 s of load (once requests flow: a busy machine can take
    // seconds to start the driver): what was in flight on it gets the Server error, and from
    // then on every request goes to node 1. It is frozen for a second before it dies, so that
    // requests are surely in flight on it (a CI run once killed it between two of its requests).
    let markers = TempDir::new("failover");
    let started = markers.path("load-started");
    let started_arg = started.display().to_string();
    let load = std::thread::spawn(move || failover(port, &["load", "12", &started_arg]));
    assert!(wait_until(Duration::from_secs(60), || started.exists()), "the load did not start");
    std::thread::sleep(Duration::from_secs(1));
    ring.freeze_node(2, true);
    std::thread::sleep(Duration::from_secs(1));
    ring.kill_node(2);
    let out = load.join().unwrap();
    let count = |key: &str| lines_of(&out, key).parse::<u64>().unwrap_or_else(|_| panic!("{key}:\n{out}"));
    assert!(count("server_errors") >= 1, "{out}\n{}", shotover.output());
    assert_eq!(count("other_errors"), 0, "{out}\n{}", shotover.output());
    let (at_end_ok, at_end_all) =
        lines_of(&out, "ok_at_end").split_once('/').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
    assert_eq!(at_end_ok, at_end_all, "{out}");
    let failed = "failed_requests{chain=\"cql\",transform=\"CassandraSinkCluster\"}";
    assert!(metric_value(&shotover.metrics(), failed) >= count("server_errors") as f64);

    // A client prepares a statement, then every node goes down: Overloaded, so that the client
    // tries again later. The nodes come back without the statements prepared before: the
    // proxy prepares them again where it meets UNPREPARED, and the client never sees it.
    let (prepared, restarted) = (markers.path("prepared"), markers.path("restarted"));
    let args = [prepared.display().to_string(), restarted.display().to_string()];
    let session = std::thread::spawn(move || failover(port, &["prepared", &args[0], &args[1]]));
    assert!(wait_until(Duration::from_secs(60), || prepared.exists()), "the client did not prepare");
    ring.kill_node(1);
    let out = failover(port, &["one"]);
    assert!(
        out.contains("code=1001") && out.contains("no Cassandra node in the data centre could take the request"),
        "{out}"
    );
    ring.start_again();
    std::fs::write(&restarted, b"").unwrap();
    let out = session.join().unwrap();
    assert_eq!(lines_of(&out, "prepared_ok"), "40/40", "{out}");
    assert!(shotover.output().contains("prepared it again"), "{}", shotover.output());
}

/// A node joins the ring and is then decommissioned (Cassandra 2.1, nodetool over JMX): the
/// proxy reads the ring again on the TOPOLOGY_CHANGE events and routes by the new one.
#[test]
fn nodes_joining_and_leaving_the_ring_are_picked_up() {
    let ring = Cassandra::start(&["127.0.0.1"]);
    let port = free_port();
    let nodes = [("127.0.0.1", "datacenter1", "rack1", SHOTOVER[0].3)];
    let shotover = Shotover::start(&cassandra_topology(port, &cluster_sink(&ring.nodes, &nodes, port, 0)), port);
    let (proxy_port, direct_port) = (port.to_string(), ring.port.to_string());
    let routed = |keyspace: &str| {
        let args = ["127.0.0.1", &proxy_port, "127.0.0.1", &direct_port, "3", "datacenter1", keyspace, "datacenter1:1"];
        let out = run_python_with_timeout(&script("cql_cluster.py"), &args, Duration::from_secs(240)).expect_success();
        assert_eq!(lines_of(&out, "on_local_replica"), "40/40", "{out}\n{}", shotover.output());
        lines_of(&out, "coordinators")
    };
    assert_eq!(routed("cl_before"), "127.0.0.1:40");

    let joined = ring.join("127.0.0.2");
    let second = &joined.nodes[0];
    let said =
        |what: &str| shotover.output().contains(&format!("the node {second} (datacenter1/rack1) {what} the ring"));
    assert!(wait_until(Duration::from_secs(30), || said("joined")), "{}", shotover.output());
    let coordinators = routed("cl_grown");
    assert!(coordinators.starts_with("127.0.0.1:") && coordinators.contains(",127.0.0.2:"), "{coordinators}");

    let (status, out) = joined.nodetool(1, &["decommission"]);
    assert!(status.success(), "{out}");
    assert!(wait_until(Duration::from_secs(30), || said("left")), "{}", shotover.output());
    assert_eq!(routed("cl_shrunk"), "127.0.0.1:40");
    let failed = "failed_requests{chain=\"cql\",transform=\"CassandraSinkCluster\"}";
    assert_eq!(metric_value(&shotover.metrics(), failed), 0.0, "{}", shotover.output());
}

/// Through the proxy at port argv[1], LZ4-compressed: 1,000 prepared inserts in flight at
/// once into keyspace argv[2], then all of them read back in pages. (Cassandra 2.1.0 runs
/// out of heap in its TLS handler with 10,000 in flight, even straight from the driver.)
const TLS_WORKLOAD: &str = r#"
import sys, logging
logging.basicConfig(level=logging.CRITICAL)
from cassandra.cluster import Cluster
from cassandra.query import SimpleStatement
port, ks = int(sys.argv[1]), sys.argv[2]
s = Cluster(['127.0.0.1'], port=port, protocol_version=3, compression='lz4', connect_timeout=20).connect()
s.execute("CREATE KEYSPACE IF NOT EXISTS %s WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}" % ks)
s.execute("CREATE TABLE IF NOT EXISTS %s.kv (k int PRIMARY KEY, v text)" % ks)
insert = s.prepare("INSERT INTO %s.kv (k, v) VALUES (?, ?)" % ks)
for f in [s.execute_async(insert, (i, "v%d" % i)) for i in range(1000)]:
    f.result()
print("rows=%d" % sum(1 for _ in s.execute(SimpleStatement("SELECT k FROM %s.kv" % ks, fetch_size=100))))
"#;

/// Both Cassandra sinks to a node that speaks only TLS (Cassandra 2.1), checking its
/// certificate and name; and a cluster sink that does not trust the node's certificate.
#[test]
fn both_sinks_speak_tls_to_the_nodes() {
    let certs = Certs::generate();
    let p12 = certs.path("server.p12");
    let (crt, key) = (certs.path("server.crt"), certs.path("server.key"));
    let export = ["pkcs12", "-export", "-in", &crt, "-inkey", &key, "-out", &p12, "-passout", "pass:shotover"];
    let (status, out) = run_tool("openssl", &export);
    assert!(status.success(), "{out}");
    let node = Cassandra::start_with(&["127.0.0.1"], &["--tls-keystore", &p12]);
    let tls = |ca: &str| {
        format!("            tls:\n              certificate_authority_path: \"{ca}\"\n              verify_hostname: true\n")
    };
    let ca = certs.path("ca.crt");
    let nodes = [("127.0.0.1", "datacenter1", "rack1", SHOTOVER[0].3)];
    let [single_port, cluster_port, untrusting_port] = [free_port(), free_port(), free_port()];
    let single = format!("{}{}", crate::cassandra::cassandra_sink(&node.nodes[0]), tls(&ca));
    let _single = Shotover::start(&cassandra_topology(single_port, &single), single_port);
    let cluster = format!("{}{}", cluster_sink(&node.nodes, &nodes, cluster_port, 0), tls(&ca));
    let _cluster = Shotover::start(&cassandra_topology(cluster_port, &cluster), cluster_port);
    for (port, keyspace) in [(single_port, "tls_single"), (cluster_port, "tls_cluster")] {
        let out = run_python(TLS_WORKLOAD, &[&port.to_string(), keyspace]).expect_success();
        assert!(out.lines().any(|l| l == "rows=1000"), "{keyspace}:\n{out}");
    }

    // The server certificate given as the authority: it signed nothing, so no node can be
    // reached, and the client hears Overloaded.
    let untrusting =
        format!("{}{}", cluster_sink(&node.nodes, &nodes, untrusting_port, 0), tls(&certs.path("other-host.crt")));
    let refused = Shotover::start(&cassandra_topology(untrusting_port, &untrusting), untrusting_port);
    let out = run_python(TLS_WORKLOAD, &[&untrusting_port.to_string(), "tls_untrusted"]);
    assert!(!out.success() && out.stderr.contains("code=1001 [Coordinator node overloaded]"), "{out:?}");
    assert!(refused.output().contains("certificate"), "{}", refused.output());
}

/// A client spread over the data centre's nodes switches keyspace 50 times, and each time,
/// as soon as the USE is answered, sends 40 unqualified queries in one write: each must read
/// the keyspace just chosen. Cassandra runs a connection's requests concurrently, so the
/// USE the proxy sends on its other node connections must be answered before the client's
/// requests follow it there.
#[test]
fn a_keyspace_switch_reaches_every_node_before_the_next_request() {
    use std::io::Write;
    let (_ring, port, shotover) = one_proxy_on_the_shared_ring();
    let keyspaces = ["cl_use_a", "cl_use_b"];
    let setup = keyspaces.iter().map(|ks| format!(
        "s.execute(\"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'NetworkTopologyStrategy', 'dc1': 1, 'dc2': 1}}\")\n\
         s.execute(\"CREATE TABLE IF NOT EXISTS {ks}.t (k int PRIMARY KEY, v text)\")\n\
         s.execute(\"INSERT INTO {ks}.t (k, v) VALUES (1, '{ks}')\")\n"
    ));
    let script = format!(
        "import sys\nfrom cassandra.auth import PlainTextAuthProvider\nfrom cassandra.cluster import Cluster\n\
         user, password = sys.argv[1].split(':')\n\
         s = Cluster(['127.0.0.1'], port=int(sys.argv[2]), auth_provider=PlainTextAuthProvider(user, password), connect_timeout=20).connect()\n\
         s.default_timeout = 60\n{}",
        setup.collect::<String>()
    );
    run_python(&script, &[SHARED_RING_USER, &port.to_string()]).expect_success();

    let mut c = cql_v4_session(port, Some(SHARED_RING_USER));
    // Qualified queries go round robin: the proxy opens a connection to every local node.
    let spread: Vec<u8> = (1..=10)
        .flat_map(|s| cql_request(4, s, 0x07, &cql_query_body("SELECT v FROM cl_use_a.t WHERE k = 1")))
        .collect();
    c.write_all(&spread).unwrap();
    (0..10).for_each(|_| assert_eq!(read_cql_frame(&mut c)[4], 0x08));
    let unqualified: Vec<u8> =
        (1..=40).flat_map(|s| cql_request(4, s, 0x07, &cql_query_body("SELECT v FROM t WHERE k = 1"))).collect();
    let mut wrong = Vec::new();
    for round in 0..50 {
        let ks = keyspaces[round % 2];
        c.write_all(&cql_request(4, 100, 0x07, &cql_query_body(&format!("USE {ks}")))).unwrap();
        assert_eq!(read_cql_frame(&mut c)[4], 0x08, "USE {ks}");
        c.write_all(&unqualified).unwrap();
        for _ in 0..40 {
            let answer = read_cql_frame(&mut c);
            // A RESULT whose one row's one cell, the last bytes of the frame, is `ks`.
            let mut cell = (ks.len() as i32).to_be_bytes().to_vec();
            cell.extend_from_slice(ks.as_bytes());
            if answer[4] != 0x08 || !answer.ends_with(&cell) {
                wrong.push(format!("round {round}: {}", String::from_utf8_lossy(&answer[9..])));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 2000 answers were not from {keyspaces:?} as chosen: {:?}\n{}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        shotover.output()
    );
}

/// As the superuser, straight to the ring: a keyspace with rows, and a user who may only
/// read it.
const MAKE_READER: &str = r#"
import sys
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = Cluster([host], port=port, auth_provider=PlainTextAuthProvider(username=user, password=password), connect_timeout=20).connect()
s.execute("CREATE KEYSPACE IF NOT EXISTS cl_auth WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1, 'dc2': 1}")
s.execute("CREATE TABLE IF NOT EXISTS cl_auth.t (k int PRIMARY KEY, v text)")
for k in range(40):
    s.execute("INSERT INTO cl_auth.t (k, v) VALUES (%s, %s)", (k, "r%d" % k))
s.execute("CREATE ROLE IF NOT EXISTS reader WITH PASSWORD = 'reader-pw' AND LOGIN = true")
s.execute("GRANT SELECT ON KEYSPACE cl_auth TO reader")
print("made")
"#;

/// As `reader` through the proxy: reads, a write it may not do, and a wrong password.
const AS_READER: &str = r#"
import sys
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
port = int(sys.argv[1])
def connect(password):
    return Cluster(["127.0.0.1"], port=port, auth_provider=PlainTextAuthProvider(username="reader", password=password),
                   load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc="dc1")), connect_timeout=20).connect()
s = connect("reader-pw")
select = s.prepare("SELECT v FROM cl_auth.t WHERE k = ?")
print("reads=%d/40" % sum(1 for k in range(40) if s.execute(select, (k,)).one().v == "r%d" % k))
try:
    s.execute("INSERT INTO cl_auth.t (k, v) VALUES (100, 'x')")
    print("insert=allowed")
except Exception as e:
    print("insert=%s" % type(e).__name__)
try:
    connect("wrong")
    print("wrong_password=accepted")
except Exception as e:
    print("wrong_password=%s" % ("AuthenticationFailed" if "AuthenticationFailed" in repr(e) or "Bad credentials" in str(e) else repr(e)))
"#;

#[test]
fn a_real_user_logs_in_through_the_cluster_sink_and_cassandra_decides_what_it_may_do() {
    let ring = shared_ring();
    let (user, password) = SHARED_RING_USER.split_once(':').unwrap();
    let ring_port = ring.port.to_string();
    let out =
        run_python_with_timeout(MAKE_READER, &["127.0.0.1", &ring_port, user, password], Duration::from_secs(120))
            .expect_success();
    assert!(out.contains("made"), "{out}");
    // A proxy whose first client, and so its control connection, logs in as the reader.
    let port = free_port();
    let shotover =
        Shotover::start(&cassandra_topology(port, &cluster_sink(&ring.nodes, &SHOTOVER[..1], port, 0)), port);
    let out = run_python_with_timeout(AS_READER, &[&port.to_string()], Duration::from_secs(120)).expect_success();
    assert_eq!(lines_of(&out, "reads"), "40/40", "{out}");
    // Cassandra's own errors pass through: Unauthorized for the write, and the failed login.
    assert_eq!(lines_of(&out, "insert"), "Unauthorized", "{out}");
    assert_eq!(lines_of(&out, "wrong_password"), "AuthenticationFailed", "{out}");
    assert_eq!(
        metric_value(&shotover.metrics(), "failed_requests{chain=\"cql\",transform=\"CassandraSinkCluster\"}"),
        0.0
    );
}

/// Concurrent prepared inserts, then concurrent reads, through the proxy: many requests per
/// batch, answered by the nodes in any order.
const CONCURRENT: &str = r#"
import sys
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args
port, user, password, setup_port = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
auth = PlainTextAuthProvider(username=user, password=password)
direct = Cluster(["127.0.0.1"], port=setup_port, auth_provider=auth, connect_timeout=20).connect()
direct.execute("CREATE KEYSPACE IF NOT EXISTS cl_tee WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 2, 'dc2': 1}")
direct.execute("CREATE TABLE IF NOT EXISTS cl_tee.t (k int PRIMARY KEY, v text)")
s = Cluster(["127.0.0.1"], port=port, auth_provider=auth, protocol_version=4, connect_timeout=20).connect()
insert = s.prepare("INSERT INTO cl_tee.t (k, v) VALUES (?, ?)")
results = execute_concurrent_with_args(s, insert, [(k, "t%d" % k) for k in range(2000)], concurrency=64, raise_on_first_error=False)
print("inserted=%d/2000" % sum(1 for ok, _ in results if ok))
print("errors=%s" % sorted(set(str(r)[:120] for ok, r in results if not ok)))
select = s.prepare("SELECT v FROM cl_tee.t WHERE k = ?")
results = execute_concurrent_with_args(s, select, [(k,) for k in range(2000)], concurrency=64, raise_on_first_error=False)
print("read=%d/2000" % sum(1 for (ok, r), k in zip(results, range(2000)) if ok and r.one().v == "t%d" % k))
"#;

/// Tee comparing two CQL chains and ParallelMap dealing over two: answers are paired with
/// their requests by stream, not by position, and every instance gets the session.
#[test]
fn tee_and_parallel_map_pair_cql_answers_with_their_requests() {
    let ring = shared_ring();
    let port = free_port();
    let node = &ring.nodes[0];
    let single = format!(
        "CassandraSinkSingle:\n{0}  remote_address: \"{node}\"\n{0}  connect_timeout_ms: 3000\n",
        " ".repeat(18)
    );
    let chain = format!(
        "        - Tee:\n            behavior: FailOnMismatch\n            chain:\n              - {single}        - ParallelMap:\n            parallelism: 2\n            ordered_results: true\n            chain:\n              - {single}"
    );
    let shotover = Shotover::start(&cassandra_topology(port, &chain), port);
    let (user, password) = SHARED_RING_USER.split_once(':').unwrap();
    let args = [port.to_string(), user.to_string(), password.to_string(), ring.port.to_string()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_python_with_timeout(CONCURRENT, &args, Duration::from_secs(180)).expect_success();
    assert_eq!(lines_of(&out, "inserted"), "2000/2000", "{out}\n{}", shotover.output());
    assert_eq!(lines_of(&out, "read"), "2000/2000", "{out}\n{}", shotover.output());
    assert!(!shotover.output().contains("did not match"), "{}", shotover.output());
}

/// `read_timeout` on the cluster sink: the node stops answering (frozen, on a ring of its
/// own); the waiting request gets a Server error and the client connection closes.
#[test]
fn cluster_read_timeout_answers_the_waiting_request_then_closes() {
    use crate::cassandra::{v3_query, v3_session};
    use std::io::Read;
    let ring = Cassandra::start_single();
    let port = free_port();
    let nodes = [("127.0.0.1", "datacenter1", "rack1", SHOTOVER[0].3)];
    let chain = format!("{}            read_timeout: 2\n", cluster_sink(&ring.nodes, &nodes, port, 0));
    let shotover = Shotover::start(&cassandra_topology(port, &chain), port);
    let mut raw = v3_session(port);
    raw.write_all(&v3_query(2, "SELECT release_version FROM system.local")).unwrap();
    assert_eq!(read_cql_frame(&mut raw)[4], 0x08, "a RESULT while the node answers");

    ring.freeze(true);
    raw.write_all(&v3_query(3, "SELECT cluster_name FROM system.local")).unwrap();
    let frame = read_cql_frame(&mut raw);
    assert_eq!((frame[4], &frame[9..13]), (0x00, &[0u8, 0, 0, 0][..]), "a Server error: {frame:?}");
    assert_eq!(i16::from_be_bytes([frame[2], frame[3]]), 3);
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap(), 0, "the connection is closed");
    assert!(shotover.wait_for_log("within the read_timeout", Duration::from_secs(5)), "{}", shotover.output());
    ring.freeze(false);
}
