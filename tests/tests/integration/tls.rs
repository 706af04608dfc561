//! TLS on both sides: valkey-cli over TLS to the proxy, the proxy over TLS to Valkey.

use shotover_integration_tests::*;
use std::time::Duration;

fn cli(port: u16, certs: &Certs, client_cert: bool, args: &[&str]) -> (bool, String) {
    let port = port.to_string();
    let ca = certs.path("ca.crt");
    let (crt, key) = (certs.path("client.crt"), certs.path("client.key"));
    let mut all = vec!["--tls", "--cacert", &ca, "-p", &port];
    if client_cert {
        all.extend(["--cert", &crt, "--key", &key]);
    }
    all.extend(args);
    let (status, out) = run_tool("valkey-cli", &all);
    (status.success(), out)
}

fn tls_sink(port: u16, certs: &Certs, verify_hostname: bool) -> String {
    format!(
        "        - ValkeySinkSingle:\n            remote_address: \"127.0.0.1:{port}\"\n            tls:\n              certificate_authority_path: \"{}\"\n              verify_hostname: {verify_hostname}\n",
        certs.path("ca.crt")
    )
}

fn tls_source(port: u16, certs: &Certs, client_ca: bool, chain: &str) -> String {
    let ca = if client_ca {
        format!("        certificate_authority_path: \"{}\"\n", certs.path("ca.crt"))
    } else {
        String::new()
    };
    format!(
        "sources:\n  - Valkey:\n      name: \"valkey\"\n      listen_addr: \"127.0.0.1:{port}\"\n      tls:\n        certificate_path: \"{}\"\n        private_key_path: \"{}\"\n{ca}      chain:\n{chain}",
        certs.path("server.crt"),
        certs.path("server.key")
    )
}

#[test]
fn tls_source_and_tls_sink() {
    let certs = Certs::generate();
    let valkey = ValkeyServer::start_tls(&certs, "server");
    let port = free_port();
    let _shotover = Shotover::start(&tls_source(port, &certs, false, &tls_sink(valkey.port, &certs, true)), port);
    let (ok, out) = cli(port, &certs, false, &["SET", "secret", "value"]);
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = cli(port, &certs, false, &["GET", "secret"]);
    assert!(ok && out.trim() == "value", "{out}");
    // Pipelined load over TLS on both sides.
    let p = port.to_string();
    let ca = certs.path("ca.crt");
    let (status, out) = run_tool(
        "valkey-benchmark",
        &["--tls", "--cacert", &ca, "-p", &p, "-c", "10", "-n", "5000", "-P", "16", "-t", "set,get", "-q", "--csv"],
    );
    assert!(status.success() && out.contains("\"GET\""), "{out}");
    // A plain-text client is refused.
    let (status, out) = run_tool("valkey-cli", &["-p", &p, "PING"]);
    assert!(!status.success() || !out.contains("PONG"), "{out}");
}

#[test]
fn mutual_tls_source_requires_a_client_certificate() {
    let certs = Certs::generate();
    let valkey = ValkeyServer::start();
    let port = free_port();
    let shotover = Shotover::start(&tls_source(port, &certs, true, &sink_single(valkey.port)), port);
    let (ok, out) = cli(port, &certs, false, &["PING"]);
    assert!(!ok || !out.contains("PONG"), "a client without a certificate must be refused: {out}");
    assert!(shotover.wait_for_log("TLS handshake failed", Duration::from_secs(5)), "{}", shotover.output());
    let (ok, out) = cli(port, &certs, true, &["PING"]);
    assert!(ok && out.contains("PONG"), "{out}");
}

#[test]
fn sink_hostname_verification() {
    let certs = Certs::generate();
    // This server's certificate names other.example, not 127.0.0.1.
    let valkey = ValkeyServer::start_tls(&certs, "other-host");
    let checked = free_port();
    let _a = Shotover::start(&valkey_topology(checked, &tls_sink(valkey.port, &certs, true)), checked);
    let mut c = connect(checked);
    let err = redis::cmd("PING").query::<String>(&mut c).unwrap_err().to_string();
    assert!(err.contains("TLS handshake") && err.contains("failed"), "{err}");

    let unchecked = free_port();
    let _b = Shotover::start(&valkey_topology(unchecked, &tls_sink(valkey.port, &certs, false)), unchecked);
    let mut c = connect(unchecked);
    assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
}

#[test]
fn missing_certificate_files_are_startup_errors() {
    let certs = Certs::generate();
    let port = free_port();
    let bad_source = tls_source(port, &certs, false, &sink_single(6379))
        .replace(&certs.path("server.crt"), "/nonexistent/server.crt");
    let (status, out) = Shotover::builder(&bad_source).run_to_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("sources[0].Valkey.tls") && out.contains("/nonexistent/server.crt"), "{out}");

    let bad_sink =
        valkey_topology(port, &tls_sink(6379, &certs, true)).replace(&certs.path("ca.crt"), "/nonexistent/ca.crt");
    let (status, out) = Shotover::builder(&bad_sink).run_to_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("sources[0].Valkey.chain[0].ValkeySinkSingle") && out.contains("/nonexistent/ca.crt"),
        "{out}"
    );
}
