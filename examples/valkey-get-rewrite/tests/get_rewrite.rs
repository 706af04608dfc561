//! The custom build, configured by name in topology.yaml, against a real valkey-server.

use redis::Commands;
use shotover_integration_tests::*;

#[test]
fn get_replies_are_rewritten_and_the_rest_passes_through() {
    let valkey = ValkeyServer::start();
    let port = free_port();
    let chain =
        format!("        - ValkeyGetRewrite:\n            result: \"Rewritten value\"\n{}", sink_single(valkey.port));
    let _shotover = Shotover::builder(&valkey_topology(port, &chain))
        .binary(env!("CARGO_BIN_EXE_valkey-get-rewrite-proxy"))
        .wait_for(port)
        .start()
        .unwrap();
    let mut c = connect(port);
    let _: () = c.set("k", "stored").unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "Rewritten value");
    // A missing key stays missing, other commands are untouched.
    assert_eq!(c.get::<_, Option<String>>("missing").unwrap(), None);
    assert_eq!(c.strlen::<_, usize>("k").unwrap(), 6);
    assert_eq!(valkey.client().get::<_, String>("k").unwrap(), "stored");
}

#[test]
fn the_custom_build_still_validates_its_topology() {
    let port = free_port();
    let chain = "        - ValkeyGetRewrite:\n            reslt: \"typo\"\n        - NullSink\n";
    let (status, out) = Shotover::builder(&valkey_topology(port, chain))
        .binary(env!("CARGO_BIN_EXE_valkey-get-rewrite-proxy"))
        .run_to_exit(std::time::Duration::from_secs(10))
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        out.contains("sources[0].Valkey.chain[0].ValkeyGetRewrite") && out.contains("unknown field `reslt`"),
        "{out}"
    );
}
