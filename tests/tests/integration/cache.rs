//! ValkeyCache in front of the shared Cassandra 5.0 ring, with a real valkey-server as the
//! cache, driven by the Python cassandra-driver (`python/cql_cache.py`) and cqlsh.

use crate::cassandra::{cassandra_sink, cassandra_topology};
use shotover_integration_tests::backends::{backends_dir, run_python_with_timeout, shared_ring, SHARED_RING_USER};
use shotover_integration_tests::*;
use std::path::Path;
use std::time::Duration;

const KEYSPACE: &str = "cache_it";

fn run(phase: &str, proxy: u16, direct: u16, shotover: &Shotover) -> String {
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cql_cache.py")).unwrap();
    let mut args = vec![proxy.to_string(), direct.to_string(), KEYSPACE.into(), SHARED_RING_USER.into()];
    let mut words = phase.split(' ');
    args.insert(0, words.next().unwrap_or_default().to_string());
    args.extend(words.map(str::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_python_with_timeout(&script, &args, Duration::from_secs(240));
    assert!(
        out.success(),
        "cql_cache.py {phase} failed:\n{}\n{}\nproxy:\n{}",
        out.stdout,
        out.stderr,
        shotover.output()
    );
    assert!(out.stdout.lines().any(|l| l == "done"), "{}", out.stdout);
    out.stdout
}

fn expect(out: &str, lines: &[&str], shotover: &Shotover) {
    for line in lines {
        assert!(out.lines().any(|l| l == *line), "missing {line}:\n{out}\nproxy:\n{}", shotover.output());
    }
}

fn counter(shotover: &Shotover, name: &str) -> f64 {
    metric_sum(&shotover.metrics(), name, "chain=\"cql\"")
}

#[test]
fn valkey_cache_serves_reads_and_invalidates_on_writes() {
    let ring = shared_ring();
    // Every write is appended to the AOF file before it is answered, so that a restart after
    // SIGKILL brings the old entries back, as a cache node that was only unreachable would
    // still have them. The page cache keeps them across a killed process: no fsync is needed,
    // and `appendfsync always` stalled Valkey past the cache's 1 s timeout on a CI disk.
    let mut valkey = ValkeyServer::start_with(&["--appendonly", "yes", "--appendfsync", "no"]);
    let port = free_port();
    let chain = format!(
        "        - ValkeyCache:\n            caching_schema:\n              {KEYSPACE}.kv:\n                partition_key: [k]\n              {KEYSPACE}.t:\n                partition_key: [id]\n                range_key: [c]\n            chain:\n              - ValkeySinkSingle:\n                  remote_address: \"127.0.0.1:{}\"\n                  connect_timeout_ms: 1000\n{}",
        valkey.port,
        cassandra_sink(&ring.nodes[0])
    );
    let shotover = Shotover::start(&cassandra_topology(port, &chain), port);

    let out = run("main", port, ring.port, &shotover);
    expect(
        &out,
        &[
            "prepared_hit=True",
            "update_invalidated=True",
            "literal_hit=True",
            "insert_invalidated=True",
            "batch_invalidated=True",
            "delete_invalidated=True",
            "truncate_invalidated=True",
            "use_keyspace=True",
            "range_hit=True",
            "partition_read_not_cached=True",
            "partition_invalidated=True",
            "paged_rows=10000",
            "row_5=True",
            "other_role=unauthorized",
            "race_errors=[]",
        ],
        &shotover,
    );
    let race = out.lines().find(|l| l.starts_with("race ")).unwrap_or_default();
    assert!(race.starts_with("race stale=0 checked=1200"), "{race}\n{out}");
    let (hits, misses, invalidations) = (
        counter(&shotover, "shotover_cache_hit_count"),
        counter(&shotover, "shotover_cache_miss_count"),
        counter(&shotover, "shotover_cache_invalidation_count"),
    );
    assert!(hits >= 10.0 && misses >= 10.0 && invalidations >= 1200.0, "{hits} {misses} {invalidations}");
    assert_eq!(counter(&shotover, "shotover_cache_error_count"), 0.0);

    // cqlsh, through the cache: the same answer twice.
    let cqlsh = backends_dir().join("venv/bin/cqlsh").display().to_string();
    let (user, password) = SHARED_RING_USER.split_once(':').unwrap();
    for _ in 0..2 {
        let select = format!("SELECT c, v FROM {KEYSPACE}.t WHERE id = 2 AND c = 7");
        let args = ["127.0.0.1", &port.to_string(), "-u", user, "-p", password, "-e", &select];
        let (status, out) = run_tool(&cqlsh, &args);
        assert!(status.success() && out.contains("r7") && out.contains("(1 rows)"), "{out}");
    }

    // Valkey stalled (SIGSTOP: it accepts connections and answers nothing): after a second
    // without an answer, Cassandra serves everything, and a write made then is never
    // shadowed by what the cache held once Valkey resumes.
    expect(&run("prime 5", port, ring.port, &shotover), &["primed=True"], &shotover);
    valkey.freeze(true);
    let outage = run("outage 6", port, ring.port, &shotover);
    valkey.freeze(false);
    expect(&outage, &["outage_reads=True"], &shotover);
    expect(&run("after 6", port, ring.port, &shotover), &["after_outage=[6]"], &shotover);
    assert!(counter(&shotover, "shotover_cache_error_count") > 0.0);

    // Valkey down: Cassandra serves everything, one WARN for the outage. A write made then
    // cannot invalidate its entry, so every table is invalidated once Valkey is back (with
    // its old entries: see above), before anything is read from it.
    expect(&run("prime 7", port, ring.port, &shotover), &["primed=True"], &shotover);
    valkey.kill();
    expect(&run("outage 8", port, ring.port, &shotover), &["outage_reads=True"], &shotover);
    valkey.restart();
    let hits_before = counter(&shotover, "shotover_cache_hit_count");
    expect(&run("after 8", port, ring.port, &shotover), &["after_outage=[8]"], &shotover);
    assert!(counter(&shotover, "shotover_cache_hit_count") > hits_before, "the cache is used again");
    let output = shotover.output();
    let warnings = output.lines().filter(|l| l.contains("ValkeyCache: the cache failed")).count();
    // One per outage (two of them) and core that met it, not one per request (dozens failed):
    // a core whose connections saw no success between the two outages takes them as one.
    assert!((1..=4).contains(&warnings), "{warnings} warnings:\n{output}");
    // Each core learns that the cache is back from a request of its own, and the kernel
    // places each connection on a core by a hash: the one core that met the outage may have
    // served none of the connections above. New connections reach it sooner or later.
    // The output is read by a thread of its own: wait for the line rather than read once.
    let back = shotover.wait_for_log("ValkeyCache: the cache is back", Duration::from_secs(1))
        || (0..3).any(|_| {
            expect(&run("spread 8", port, ring.port, &shotover), &["spread=[8]"], &shotover);
            shotover.wait_for_log("ValkeyCache: the cache is back", Duration::from_secs(5))
        });
    assert!(back, "{}", shotover.output());
}
