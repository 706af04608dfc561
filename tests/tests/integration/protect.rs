//! Protect with the Local key manager, in front of the shared Cassandra 5.0 ring, driven by
//! the Python cassandra-driver (`python/cql_protect.py`).

use crate::cassandra::{cassandra_sink, cassandra_topology};
use shotover_integration_tests::backends::{run_python_with_timeout, shared_ring, SHARED_RING_USER};
use shotover_integration_tests::*;
use std::path::Path;
use std::time::Duration;

#[test]
fn protect_encrypts_columns_with_a_local_key() {
    let ring = shared_ring();
    let port = free_port();
    let chain = format!(
        "        - Protect:\n            key_manager:\n              Local:\n                kek: Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=\n                kek_id: \"kek-1\"\n            keyspace_table_columns:\n              protect_local:\n                t:\n                  - col1\n{}",
        cassandra_sink(&ring.nodes[0])
    );
    let shotover = Shotover::start(&cassandra_topology(port, &chain), port);
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cql_protect.py")).unwrap();
    let args = [port.to_string(), ring.port.to_string(), "protect_local".into(), SHARED_RING_USER.into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_python_with_timeout(&script, &args, Duration::from_secs(240));
    assert!(out.success(), "cql_protect.py failed:\n{}\n{}\nproxy:\n{}", out.stdout, out.stderr, shotover.output());
    for line in [
        "paged=True",
        "read_back=1008/1008",
        "plaintext_stored=0 encrypted=1007/1007",
        "lwt_existing=True",
        "ddl=passed",
        "null_kept=True",
        "tampered=True",
        "after_tamper=True",
        "json=refused",
        "number=refused",
        "json_row_stored=False",
        "done",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "missing {line}:\n{}\nproxy:\n{}",
            out.stdout,
            shotover.output()
        );
    }
}
