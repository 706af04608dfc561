//! Real drivers straight against the CQL test double (no proxy): they prove the double
//! answers v4 and v5 the way drivers expect, so that proxy tests built on it mean something.
//! The double is a test double, not a database: see `shotover_integration_tests::cql_double`.

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::client::Compression;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimestamp;
use shotover_integration_tests::cql_double::{CqlDouble, DoubleOptions};
use std::path::PathBuf;
use std::process::Command;

/// The python with `cassandra-driver`: `$SHOTOVER_PYTHON`, or the venv of
/// `scripts/install-backends`.
fn python() -> Option<PathBuf> {
    let path = std::env::var_os("SHOTOVER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/shotover-backends/venv/bin/python"));
    path.exists().then_some(path)
}

async fn scylla_session(double: &CqlDouble, compression: Option<Compression>, auth: bool) -> Session {
    let mut builder = SessionBuilder::new().known_node(double.address()).compression(compression);
    if auth {
        builder = builder.user("cassandra", "secret");
    }
    builder.build().await.unwrap_or_else(|e| panic!("scylla cannot connect to the double ({compression:?}): {e}"))
}

/// Schema, writes (literal, prepared, batch) and reads through one session.
pub(crate) async fn scylla_crud(session: &Session) {
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS ks.t (k text PRIMARY KEY, n int, big bigint, ok boolean, d double, b blob, ts timestamp)",
            &[],
        )
        .await
        .unwrap();
    session.query_unpaged("INSERT INTO ks.t (k, n, ok) VALUES ('literal', 1, true)", &[]).await.unwrap();
    let insert =
        session.prepare("INSERT INTO ks.t (k, n, big, ok, d, b, ts) VALUES (?, ?, ?, ?, ?, ?, ?)").await.unwrap();
    let row = ("prepared", 2i32, 1i64 << 40, false, 2.5f64, vec![0xca_u8, 0xfe], CqlTimestamp(1_700_000_000_123));
    session.execute_unpaged(&insert, row.clone()).await.unwrap();
    // A batch of a prepared statement and a query string.
    let mut batch = Batch::new(BatchType::Unlogged);
    batch.append_statement(insert.clone());
    batch.append_statement("INSERT INTO ks.t (k, n) VALUES ('batched', 3)");
    session.batch(&batch, (("in-batch", 4i32, 0i64, true, 0.0f64, vec![1u8], CqlTimestamp(0)), ())).await.unwrap();

    let select = session.prepare("SELECT k, n, big, ok, d, b, ts FROM ks.t WHERE k = ?").await.unwrap();
    let result = session.execute_unpaged(&select, ("prepared",)).await.unwrap().into_rows_result().unwrap();
    let got: (String, i32, i64, bool, f64, Vec<u8>, CqlTimestamp) = result.single_row().unwrap();
    assert_eq!((got.0.as_str(), got.1, got.2, got.3, got.4, got.5, got.6), row);
    let all = session.query_unpaged("SELECT k, n FROM ks.t", &[]).await.unwrap().into_rows_result().unwrap();
    let mut keys: Vec<(String, Option<i32>)> =
        all.rows::<(String, Option<i32>)>().unwrap().map(Result::unwrap).collect();
    keys.sort();
    assert_eq!(
        keys,
        [("batched", 3), ("in-batch", 4), ("literal", 1), ("prepared", 2)]
            .map(|(k, n)| (k.to_string(), Some(n)))
            .to_vec()
    );
    // The schema the driver reads back from system_schema.
    session.refresh_metadata().await.unwrap();
    let state = session.get_cluster_state();
    let keyspace = state.get_keyspace("ks").expect("keyspace ks in the driver's metadata");
    let table = keyspace.tables.get("t").expect("table ks.t in the driver's metadata");
    assert_eq!(table.partition_key, ["k"]);
    assert_eq!(table.columns.len(), 7);
    // Statements the double does not run are errors, not silence.
    let err = session.query_unpaged("UPDATE ks.t SET n = 1 WHERE k = 'x'", &[]).await.unwrap_err();
    assert!(err.to_string().contains("does not support"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_double_scylla_driver_v4() {
    for compression in [None, Some(Compression::Lz4), Some(Compression::Snappy)] {
        let double = CqlDouble::start();
        let session = scylla_session(&double, compression, false).await;
        scylla_crud(&session).await;
        let handshakes = double.handshakes();
        assert!(handshakes.iter().all(|h| h.version == 4), "{handshakes:?}");
        let expected = compression.map(|c| c.as_str().to_string());
        assert!(handshakes.iter().all(|h| h.compression == expected), "{handshakes:?}");
        assert_eq!(double.errors(), Vec::<String>::new());
        let queries = double.queries();
        assert!(queries.iter().any(|q| q.contains("FROM system.local")), "{queries:#?}");
        assert!(queries.iter().any(|q| q.contains("FROM system_schema.columns")), "{queries:#?}");
    }

    // PasswordAuthenticator: a wrong password is refused, the right one works.
    let double = CqlDouble::start_with(DoubleOptions {
        require_auth: Some(("cassandra".into(), "secret".into())),
        ..DoubleOptions::default()
    });
    let refused = SessionBuilder::new().known_node(double.address()).user("cassandra", "wrong").build().await;
    let Err(refused) = refused else { panic!("a wrong password was accepted") };
    assert!(refused.to_string().contains("incorrect"), "{refused}");
    scylla_crud(&scylla_session(&double, Some(Compression::Lz4), true).await).await;
    assert_eq!(double.errors(), Vec::<String>::new());

    // Three nodes sharing one catalog: the driver finds the peers and spreads requests.
    let nodes = CqlDouble::start_cluster(3, DoubleOptions::default());
    let session = scylla_session(&nodes[0], None, false).await;
    assert_eq!(session.get_cluster_state().get_nodes_info().len(), 3);
    scylla_crud(&session).await;
    for node in &nodes {
        assert!(!node.handshakes().is_empty(), "the driver never connected to {}", node.address());
        assert_eq!(node.errors(), Vec::<String>::new());
    }
}

const PYTHON_DRIVER: &str = r#"
import sys, uuid, datetime, logging
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from cassandra import InvalidRequest
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import DCAwareRoundRobinPolicy
from cassandra.query import BatchStatement, BatchType, SimpleStatement

port, version, compression, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
profile = ExecutionProfile(load_balancing_policy=DCAwareRoundRobinPolicy(local_dc='datacenter1'))
kwargs = dict(contact_points=['127.0.0.1'], port=port, connect_timeout=5,
              execution_profiles={EXEC_PROFILE_DEFAULT: profile})
if version != 'negotiate':
    kwargs['protocol_version'] = int(version)
kwargs['compression'] = {'none': False, 'lz4': 'lz4', 'snappy': 'snappy'}[compression]
if mode == 'auth':
    from cassandra.auth import PlainTextAuthProvider
    kwargs['auth_provider'] = PlainTextAuthProvider(username='cassandra', password='secret')
cluster = Cluster(**kwargs)
session = cluster.connect()
expected = 5 if version == 'negotiate' else int(version)
assert cluster.protocol_version == expected, cluster.protocol_version
if mode == 'cluster':
    hosts = cluster.metadata.all_hosts()
    assert len(hosts) == 3 and all(h.is_up for h in hosts), hosts
    assert len(cluster.metadata.token_map.ring) == 3, cluster.metadata.token_map.ring
    # Pools for discovered peers open in the background.
    import time
    deadline = time.time() + 10
    while len(session.get_pools()) < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert len(session.get_pools()) == 3, session.get_pools()

session.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}")
session.execute("CREATE TABLE ks.t (k text PRIMARY KEY, n int, big bigint, id uuid, ok boolean, d double, b blob, ts timestamp)")
assert 't' in cluster.metadata.keyspaces['ks'].tables, cluster.metadata.keyspaces
assert cluster.metadata.keyspaces['ks'].tables['t'].partition_key[0].name == 'k'

some_id = uuid.UUID('123e4567-e89b-12d3-a456-426614174000')
when = datetime.datetime(2024, 2, 29, 12, 34, 56, 789000)
# Bound on the client side: the values travel as CQL literals.
session.execute("INSERT INTO ks.t (k, n, big, id, ok, d, b, ts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                ('literal', 1, 2 ** 40, some_id, True, 1.5, b'\x01\x02', when))
insert = session.prepare("INSERT INTO ks.t (k, n, big, id, ok, d, b, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
session.execute(insert, ('prepared', 2, -5, some_id, False, -0.25, b'\xff', when))
for kind in (BatchType.LOGGED, BatchType.UNLOGGED):
    batch = BatchStatement(batch_type=kind)
    batch.add(insert, ('batch-%s' % kind, 3, 3, some_id, True, 3.0, b'', when))
    batch.add(SimpleStatement("INSERT INTO ks.t (k, n) VALUES ('batch-literal-%s', 4)" % kind))
    session.execute(batch)

select = session.prepare("SELECT * FROM ks.t WHERE k = ?")
for key, n, big, ok, d, b in (('literal', 1, 2 ** 40, True, 1.5, b'\x01\x02'), ('prepared', 2, -5, False, -0.25, b'\xff')):
    row = session.execute(select, (key,)).one()
    assert (row.k, row.n, row.big, row.id, row.ok, row.d, row.b, row.ts) == (key, n, big, some_id, ok, d, b, when), row
row = session.execute("SELECT k, n FROM ks.t WHERE k = 'batch-literal-%s'" % BatchType.UNLOGGED).one()
assert row.n == 4, row
session.set_keyspace('ks')
count = session.execute("SELECT count(*) FROM t").one()[0]
assert count == 6, count
assert len(list(session.execute("SELECT k FROM t"))) == 6
try:
    session.execute("UPDATE t SET n = 1 WHERE k = 'x'")
    raise SystemExit("UPDATE was accepted")
except InvalidRequest as e:
    assert 'does not support' in str(e), e
cluster.shutdown()
print("ok protocol v%d compression %s %s" % (expected, compression, mode))
"#;

#[test]
fn cql_double_python_driver_v4_v5() {
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: no python with cassandra-driver (set SHOTOVER_PYTHON, or run scripts/install-backends \
             for /opt/shotover-backends/venv)"
        );
        return;
    };
    let has = |module: &str| {
        Command::new(&python).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
    };
    assert!(has("lz4"), "{} has no `lz4` module: `pip install lz4` in that venv", python.display());
    let mut runs = vec![
        ("4", "none", ""),
        ("4", "lz4", ""),
        ("5", "none", ""),
        ("5", "lz4", ""),
        ("negotiate", "lz4", ""),
        ("4", "lz4", "auth"),
        ("5", "lz4", "auth"),
        ("4", "none", "cluster"),
        ("5", "lz4", "cluster"),
    ];
    // Snappy (v4 only) needs `python-snappy`, which the venv may not have; the Rust driver
    // covers snappy in any case.
    if has("snappy") {
        runs.push(("4", "snappy", ""));
    } else {
        eprintln!("python-snappy is not installed: skipping the python driver with snappy");
    }
    for (version, compression, mode) in runs {
        let auth = (mode == "auth").then(|| ("cassandra".to_string(), "secret".to_string()));
        let options = DoubleOptions { require_auth: auth, ..DoubleOptions::default() };
        let doubles =
            if mode == "cluster" { CqlDouble::start_cluster(3, options) } else { vec![CqlDouble::start_with(options)] };
        let double = &doubles[0];
        let out = Command::new(&python)
            .args(["-c", PYTHON_DRIVER, &double.port.to_string(), version, compression, mode])
            .output()
            .expect("cannot run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "python driver, protocol {version}, compression {compression} {mode}:\n{stdout}\n{stderr}\nqueries: {:#?}",
            double.queries()
        );
        let wanted = if version == "negotiate" { 5 } else { version.parse().unwrap() };
        let wanted_compression = (compression != "none").then(|| compression.to_string());
        for double in &doubles {
            let handshakes = double.handshakes();
            assert!(!handshakes.is_empty() && handshakes.iter().all(|h| h.version == wanted), "{handshakes:?}");
            assert!(handshakes.iter().all(|h| h.compression == wanted_compression), "{handshakes:?}");
            assert_eq!(double.errors(), Vec::<String>::new());
        }
        // The driver logs what it dislikes (metadata it cannot parse, peers it ignores).
        // Without a version it probes DSE v2 (66), DSE v1 (65), then 5, and says so.
        let downgrade = "Downgrading core protocol version";
        if version == "negotiate" {
            assert!(stderr.contains("from 66 to 65") && stderr.contains("from 65 to 5"), "{stderr}");
        }
        let complaints: Vec<&str> = stderr
            .lines()
            .filter(|l| (l.starts_with("WARNING") || l.starts_with("ERROR")) && !l.contains(downgrade))
            .collect();
        assert!(complaints.is_empty(), "python driver, protocol {version}, {compression}:\n{stderr}");
        eprintln!("{}", stdout.trim());
    }
}
