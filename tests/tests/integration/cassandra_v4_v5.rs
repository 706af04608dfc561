//! CQL v4 and v5 through CassandraSinkSingle to real Cassandra 5.0: a node of the ring the
//! tests share (`backends::shared_ring`, PasswordAuthenticator on), driven by the Python
//! cassandra-driver and the scylla Rust driver. Each test keeps to keyspaces and roles of
//! its own.

use crate::cassandra::{cassandra_sink, cassandra_topology};
use shotover_integration_tests::backends::{run_python, shared_ring, SHARED_RING_USER};
use shotover_integration_tests::*;

/// Makes a superuser `ROLE` (password `pw`), then as that role, through the proxy at `PORT`
/// only: schema, a literal insert, a prepared insert of a value over 128 KiB (in v5 it spans
/// several segments both ways), a batch, and reads. Then reads `system_views.clients` of the
/// node: the proxy's connections for ROLE, with the protocol version and compression the
/// node agreed with the proxy.
const PYTHON_V4_V5: &str = r#"
import sys, logging
logging.basicConfig(level=logging.ERROR)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.policies import WhiteListRoundRobinPolicy
from cassandra.query import BatchStatement
port, version, compression, admin, role = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def connect(user, password):
    # The proxy alone: the peers the node lists are the real nodes, on their own port.
    cluster = Cluster(['127.0.0.1'], port=port, protocol_version=version, connect_timeout=10,
                      compression={'none': False, 'lz4': 'lz4', 'snappy': 'snappy'}[compression],
                      auth_provider=PlainTextAuthProvider(username=user, password=password),
                      load_balancing_policy=WhiteListRoundRobinPolicy(['127.0.0.1']))
    return cluster, cluster.connect()
cluster, s = connect(*admin.split(':'))
s.execute("CREATE ROLE IF NOT EXISTS %s WITH PASSWORD = 'pw' AND LOGIN = true AND SUPERUSER = true" % role)
cluster.shutdown()
cluster, s = connect(role, 'pw')
assert cluster.protocol_version == version, cluster.protocol_version
ks = role
s.execute("DROP KEYSPACE IF EXISTS %s" % ks)
s.execute("CREATE KEYSPACE %s WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 1}" % ks)
s.execute("CREATE TABLE %s.t (k int PRIMARY KEY, v text, big blob)" % ks)
s.execute("INSERT INTO %s.t (k, v) VALUES (1, 'literal')" % ks)
p = s.prepare("INSERT INTO %s.t (k, v, big) VALUES (?, ?, ?)" % ks)
s.execute(p, (2, 'large', b'x' * 300000))
b = BatchStatement()
for i in range(10, 20):
    b.add(p, (i, 'b%d' % i, b''))
s.execute(b)
print("literal=%s" % s.execute("SELECT v FROM %s.t WHERE k = 1" % ks).one().v)
print("large=%d" % len(s.execute("SELECT big FROM %s.t WHERE k = 2" % ks).one().big))
q = s.prepare("SELECT v FROM %s.t WHERE k = ?" % ks)
print("batch=%s" % s.execute(q, (15,)).one().v)
seen = sorted({"v%d/%s" % (r.protocol_version, (r.client_options or {}).get('COMPRESSION', 'none'))
               for r in s.execute("SELECT username, protocol_version, client_options FROM system_views.clients")
               if r.username == role})
print("upstream=" + ",".join(seen))
cluster.shutdown()
"#;

#[test]
fn cql_v4_and_v5_through_the_proxy_with_real_cassandra() {
    let ring = shared_ring();
    let port = free_port();
    let _shotover = Shotover::start(&cassandra_topology(port, &cassandra_sink(&ring.nodes[0])), port);
    for (version, compression) in [("4", "none"), ("4", "lz4"), ("4", "snappy"), ("5", "none"), ("5", "lz4")] {
        let role = format!("single_v{version}_{compression}");
        let args = [port.to_string(), version.to_string(), compression.to_string(), SHARED_RING_USER.to_string(), role];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_python(PYTHON_V4_V5, &args).expect_success();
        for want in ["literal=literal", "large=300000", "batch=b15"] {
            assert!(out.lines().any(|l| l == want), "v{version} {compression}: no {want}:\n{out}");
        }
        // What the node agreed with the proxy is what the driver asked the proxy for.
        assert_eq!(
            out.lines().find_map(|l| l.strip_prefix("upstream=")),
            Some(format!("v{version}/{compression}").as_str()),
            "{out}"
        );
    }
}

#[test]
fn scylla_driver_through_the_proxy_with_real_cassandra() {
    use scylla::client::session_builder::SessionBuilder;
    use scylla::client::Compression;
    use scylla::policies::host_filter::AllowListHostFilter;
    let ring = shared_ring();
    let port = free_port();
    let _shotover = Shotover::start(&cassandra_topology(port, &cassandra_sink(&ring.nodes[0])), port);
    let (user, password) = SHARED_RING_USER.split_once(':').unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        for (compression, keyspace) in [(None, "single_scylla_plain"), (Some(Compression::Lz4), "single_scylla_lz4")] {
            let proxy = format!("127.0.0.1:{port}");
            // The proxy alone: the peers the node lists are the real nodes.
            let only_proxy = AllowListHostFilter::new([proxy.as_str()]).unwrap();
            let session = SessionBuilder::new()
                .known_node(&proxy)
                .user(user, password)
                .compression(compression)
                .host_filter(std::sync::Arc::new(only_proxy))
                .build()
                .await
                .unwrap_or_else(|e| panic!("scylla cannot connect through the proxy ({compression:?}): {e}"));
            scylla_crud(&session, keyspace).await;
        }
    });
}

/// Schema, writes (literal, prepared, batch, update) and reads through one session, in
/// `keyspace`.
async fn scylla_crud(session: &scylla::client::session::Session, keyspace: &str) {
    use scylla::statement::batch::{Batch, BatchType};
    use scylla::value::CqlTimestamp;
    let run = |cql: String| async move { session.query_unpaged(cql, &[]).await.unwrap() };
    run(format!("DROP KEYSPACE IF EXISTS {keyspace}")).await;
    run(format!("CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'NetworkTopologyStrategy', 'dc1': 1}}"))
        .await;
    run(format!(
        "CREATE TABLE {keyspace}.t (k text PRIMARY KEY, n int, big bigint, ok boolean, d double, b blob, ts timestamp)"
    ))
    .await;
    // The driver checks schema agreement on the nodes it is connected to, the proxy alone;
    // the node the proxy talks to must see every peer with its version before writes reach them.
    let versions = |table: &'static str| async move {
        let rows = session.query_unpaged(format!("SELECT schema_version FROM system.{table}"), &[]).await.unwrap();
        let rows = rows.into_rows_result().unwrap();
        rows.rows::<(Option<scylla::value::CqlValue>,)>().unwrap().map(|r| r.unwrap().0).collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let local = versions("local").await;
        if versions("peers").await.iter().all(|v| local.contains(v)) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    run(format!("INSERT INTO {keyspace}.t (k, n, ok) VALUES ('literal', 1, true)")).await;
    let insert = session
        .prepare(format!("INSERT INTO {keyspace}.t (k, n, big, ok, d, b, ts) VALUES (?, ?, ?, ?, ?, ?, ?)"))
        .await
        .unwrap();
    let row = ("prepared", 2i32, 1i64 << 40, false, 2.5f64, vec![0xca_u8, 0xfe], CqlTimestamp(1_700_000_000_123));
    session.execute_unpaged(&insert, row.clone()).await.unwrap();
    // A batch of a prepared statement and a query string.
    let mut batch = Batch::new(BatchType::Unlogged);
    batch.append_statement(insert.clone());
    batch.append_statement(format!("INSERT INTO {keyspace}.t (k, n) VALUES ('batched', 3)").as_str());
    session.batch(&batch, (("in-batch", 4i32, 0i64, true, 0.0f64, vec![1u8], CqlTimestamp(0)), ())).await.unwrap();
    run(format!("UPDATE {keyspace}.t SET n = 5 WHERE k = 'literal'")).await;

    let select =
        session.prepare(format!("SELECT k, n, big, ok, d, b, ts FROM {keyspace}.t WHERE k = ?")).await.unwrap();
    let result = session.execute_unpaged(&select, ("prepared",)).await.unwrap().into_rows_result().unwrap();
    let got: (String, i32, i64, bool, f64, Vec<u8>, CqlTimestamp) = result.single_row().unwrap();
    assert_eq!((got.0.as_str(), got.1, got.2, got.3, got.4, got.5, got.6), row);
    let all = run(format!("SELECT k, n FROM {keyspace}.t")).await.into_rows_result().unwrap();
    let mut keys: Vec<(String, Option<i32>)> =
        all.rows::<(String, Option<i32>)>().unwrap().map(Result::unwrap).collect();
    keys.sort();
    let want = [("batched", 3), ("in-batch", 4), ("literal", 5), ("prepared", 2)];
    assert_eq!(keys, want.map(|(k, n)| (k.to_string(), Some(n))).to_vec());
    // The schema the driver reads back from system_schema.
    session.refresh_metadata().await.unwrap();
    let state = session.get_cluster_state();
    let table = state.get_keyspace(keyspace).and_then(|k| k.tables.get("t")).expect("the table in the metadata");
    assert_eq!(table.partition_key, ["k"]);
    assert_eq!(table.columns.len(), 7);
    // Cassandra's own errors pass through.
    let err = session.query_unpaged(format!("SELECT nope FROM {keyspace}.t"), &[]).await.unwrap_err();
    assert!(err.to_string().contains("Undefined column name nope"), "{err}");
}

#[test]
fn peers_rewrite_shows_the_proxy_port() {
    let ring = shared_ring();
    let port = free_port();
    let chain =
        format!("        - CassandraPeersRewrite:\n            port: {port}\n{}", cassandra_sink(&ring.nodes[0]));
    let _shotover = Shotover::start(&cassandra_topology(port, &chain), port);
    let script = r#"
import sys, logging
logging.basicConfig(level=logging.CRITICAL)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.policies import WhiteListRoundRobinPolicy
user, password = sys.argv[1].split(':')
for port in sys.argv[2:]:
    c = Cluster(['127.0.0.1'], port=int(port), protocol_version=4,
                auth_provider=PlainTextAuthProvider(username=user, password=password),
                load_balancing_policy=WhiteListRoundRobinPolicy(['127.0.0.1']), connect_timeout=20)
    s = c.connect()
    for row in s.execute("SELECT peer, native_port FROM system.peers_v2"):
        print("%s %s %d" % (port, row.peer, row.native_port))
    c.shutdown()
"#;
    let out = run_python(script, &[SHARED_RING_USER, &port.to_string(), &ring.port.to_string()]).expect_success();
    for peer in ["127.0.0.2", "127.0.0.3"] {
        assert!(out.lines().any(|l| l == format!("{port} {peer} {port}")), "through the proxy:\n{out}");
        assert!(out.lines().any(|l| l == format!("{} {peer} {}", ring.port, ring.port)), "direct:\n{out}");
    }
}
