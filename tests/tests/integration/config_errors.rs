//! Bad configuration is a startup error: exit code 1, with file, YAML path and reason.

use shotover_integration_tests::*;
use std::time::Duration;

const SINK: &str = "        - ValkeySinkSingle:\n            remote_address: \"127.0.0.1:6379\"\n";

fn source(fields: &str, chain: &str) -> String {
    format!("sources:\n  - Valkey:\n      name: \"valkey\"\n{fields}      chain:\n{chain}")
}

/// Runs shotover with `topology` (and `config`, if given) and expects exit code 1 with
/// every `expected` string in its output.
fn expect_error(topology: &str, config: Option<&str>, args: &[&str], expected: &[&str]) {
    let mut builder = Shotover::builder(topology);
    if let Some(config) = config {
        builder = builder.config(config);
    }
    for arg in args {
        builder = builder.arg(arg);
    }
    let (status, output) = builder.run_to_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "expected exit 1 for:\n{topology}\noutput:\n{output}");
    for e in expected {
        assert!(output.contains(e), "expected {e:?} in:\n{output}\nfor topology:\n{topology}");
    }
}

#[test]
fn bad_topologies_exit_1_with_path_and_reason() {
    let ok_addr = format!("      listen_addr: \"127.0.0.1:{}\"\n", free_port());
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            source(&format!("{ok_addr}      listen_adr: \"x\"\n"), SINK),
            vec!["topology.yaml", "sources[0].Valkey", "unknown field `listen_adr`"],
        ),
        (
            source("      listen_addr: \"127.0.0.1\"\n", SINK),
            vec!["sources[0].Valkey.listen_addr", "is not an IP:port or host:port address"],
        ),
        (source("      listen_addr: \"localhost:99999\"\n", SINK), vec!["sources[0].Valkey.listen_addr"]),
        (
            source(&ok_addr, "        - QueryCounter:\n            name: \"q\"\n"),
            vec!["sources[0].Valkey.chain[0]", "QueryCounter is not a terminating transform"],
        ),
        (
            source(&ok_addr, &format!("        - NullSink\n{SINK}")),
            vec!["sources[0].Valkey.chain[0]", "NullSink is a terminating transform, so it must be the last"],
        ),
        (source(&ok_addr, "        []\n"), vec!["sources[0].Valkey.chain", "the chain is empty"]),
        (
            source(&ok_addr, "        - Nope\n"),
            vec!["sources[0].Valkey.chain[0]", "unknown transform \"Nope\"", "ValkeySinkSingle"],
        ),
        (
            source(&ok_addr, "        - ValkeySinkSingle:\n            remote_adress: \"127.0.0.1:6379\"\n"),
            vec!["sources[0].Valkey.chain[0].ValkeySinkSingle", "unknown field `remote_adress`"],
        ),
        (
            source(&ok_addr, "        - ValkeySinkSingle:\n            remote_address: \"nowhere\"\n"),
            vec!["sources[0].Valkey.chain[0].ValkeySinkSingle", "remote_address \"nowhere\""],
        ),
        (
            source(&format!("{ok_addr}      connection_limit: many\n"), SINK),
            vec!["sources[0].Valkey.connection_limit", "invalid type"],
        ),
        (
            source(&format!("{ok_addr}      connection_limit: 0\n"), SINK),
            vec!["sources[0].Valkey.connection_limit", "at least 1"],
        ),
        (
            source(&ok_addr, "        - DebugReturner:\n            Cassandra: \"x\"\n"),
            vec!["sources[0].Valkey.chain[0].DebugReturner", "unknown variant `Cassandra`"],
        ),
        (
            source(&ok_addr, &format!("        - QueryTypeFilter:\n            AllowList: [Reads]\n{SINK}")),
            vec!["sources[0].Valkey.chain[0].QueryTypeFilter.AllowList[0]", "unknown variant `Reads`"],
        ),
        (format!("sources:\n  - Memcached:\n{ok_addr}"), vec!["sources[0].Memcached", "unknown source \"Memcached\""]),
        ("sources: []\n".to_string(), vec!["no sources"]),
        ("sourcez: []\n".to_string(), vec!["missing field `sources`"]),
        ("sources: [\n".to_string(), vec!["topology.yaml", "invalid YAML"]),
        (
            format!("{}{}", source(&ok_addr, SINK), source(&ok_addr, SINK).replace("sources:\n", "")),
            vec!["sources[1].Valkey.listen_addr", "already the listen_addr of sources[0]"],
        ),
    ];
    for (topology, expected) in cases {
        expect_error(&topology, None, &[], &expected);
    }
}

#[test]
fn bad_configs_and_flags_exit_1() {
    let port = free_port();
    let topology = source(&format!("      listen_addr: \"127.0.0.1:{port}\"\n"), SINK);
    expect_error(&topology, Some("main_log_levl: info\n"), &[], &["config.yaml", "unknown field `main_log_levl`"]);
    expect_error(
        &topology,
        Some("observability_interface: \"localhost\"\n"),
        &[],
        &["config.yaml", "observability_interface"],
    );
    expect_error(&topology, Some("main_log_level: \"shotover=loud\"\n"), &[], &["config.yaml", "main_log_level"]);
    expect_error(
        &topology,
        Some("connection_placement: nearest\n"),
        &[],
        &["config.yaml", "connection_placement", "unknown variant `nearest`, expected `adaptive` or `kernel`"],
    );
    expect_error(
        &topology,
        Some("main_log_level: info\n"),
        &["--worker-cores", "3-1"],
        &["invalid worker cores", "backwards"],
    );
    expect_error(
        &topology,
        Some("main_log_level: info\n"),
        &["--worker-cores", "4000"],
        &["CPU 4000 is not available"],
    );
}

#[test]
fn a_port_held_by_another_process_is_a_startup_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let topology = source(&format!("      listen_addr: \"127.0.0.1:{port}\"\n"), SINK);
    expect_error(&topology, None, &[], &["cannot listen on 127.0.0.1:", "in use"]);
}
