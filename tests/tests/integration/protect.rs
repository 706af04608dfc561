//! Protect with the Local and AWSKms key managers, in front of the shared Cassandra 5.0 ring,
//! driven by the Python cassandra-driver (`python/cql_protect.py`); KMS is moto's server
//! (`python/kms.py` talks to it with boto3).

use crate::cassandra::{cassandra_sink, cassandra_topology};
use shotover_integration_tests::backends::{
    backends_dir, run_python_with_timeout, shared_ring, PythonOutput, SHARED_RING_USER,
};
use shotover_integration_tests::*;
use std::path::Path;
use std::time::Duration;

/// The lines cql_protect.py prints when every check passed.
const PROTECTED: [&str; 12] = [
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
];

fn script(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name)).unwrap()
}

fn python(name: &str, args: &[&str], shotover: Option<&Shotover>) -> PythonOutput {
    let out = run_python_with_timeout(&script(name), args, Duration::from_secs(240));
    let proxy = shotover.map(Shotover::output).unwrap_or_default();
    assert!(out.success(), "{name} {args:?} failed:\n{}\n{}\nproxy:\n{proxy}", out.stdout, out.stderr);
    out
}

fn expect(out: &PythonOutput, lines: &[&str], shotover: &Shotover) {
    for line in lines {
        assert!(
            out.stdout.lines().any(|l| l == *line),
            "missing {line}:\n{}\nproxy:\n{}",
            out.stdout,
            shotover.output()
        );
    }
}

fn protect_chain(key_manager: &str, keyspace: &str, node: &str) -> String {
    format!(
        "        - Protect:\n            key_manager:\n{key_manager}            keyspace_table_columns:\n              {keyspace}:\n                t:\n                  - col1\n{}",
        cassandra_sink(node)
    )
}

#[test]
fn protect_encrypts_columns_with_a_local_key() {
    let ring = shared_ring();
    let port = free_port();
    let local = "              Local:\n                kek: Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=\n                kek_id: \"kek-1\"\n";
    let chain = protect_chain(local, "protect_local", &ring.nodes[0]);
    let shotover = Shotover::start(&cassandra_topology(port, &chain), port);
    let args = [port.to_string(), ring.port.to_string(), "protect_local".into(), SHARED_RING_USER.into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = python("cql_protect.py", &args, Some(&shotover));
    expect(&out, &PROTECTED, &shotover);
}

/// moto's KMS server, killed on drop.
struct Moto(std::process::Child, u16);

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = std::process::Command::new(backends_dir().join("venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot run moto_server: run scripts/install-backends");
        wait_for_port(port, Duration::from_secs(30)).expect("moto_server did not start");
        Moto(child, port)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.1)
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn protect_encrypts_columns_with_aws_kms() {
    let ring = shared_ring();
    let mut moto = Moto::start();
    let alias = "alias/shotover-test";
    let endpoint = moto.endpoint();
    let key = python("kms.py", &[&endpoint, alias], None);
    assert!(key.stdout.starts_with("key="), "{}", key.stdout);

    let aws = format!(
        "              AWSKms:\n                endpoint: \"{endpoint}\"\n                region: \"us-east-1\"\n                cmk_id: \"{alias}\"\n                number_of_bytes: 32\n"
    );
    let start = |keyspace: &str| {
        let port = free_port();
        let topology = cassandra_topology(port, &protect_chain(&aws, keyspace, &ring.nodes[0]));
        // The SDK's default credential chain reads these.
        let shotover = Shotover::builder(&topology)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .wait_for(port)
            .start()
            .expect("shotover did not start");
        (shotover, port)
    };
    let (shotover, port) = start("protect_kms");
    let args = [port.to_string(), ring.port.to_string(), "protect_kms".into(), SHARED_RING_USER.into()];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = python("cql_protect.py", &args, Some(&shotover));
    expect(&out, &PROTECTED, &shotover);

    // What is stored can be read without the proxy: KMS unwraps the DEK.
    let outside = [&args[..], &["outside", &endpoint, alias]].concat();
    let outside = python("cql_protect.py", &outside, None);
    expect(&outside, &["outside=1000/1000", &format!("kek_id={alias}")], &shotover);

    // KMS down, and a proxy that has no DEK yet: protected writes and reads get an error
    // naming the key management service; the connection carries on; one WARN per core.
    moto.kill();
    let (down, port) = start("protect_kms");
    let (port, ring_port) = (port.to_string(), ring.port.to_string());
    let out = python("cql_protect.py", &[&port, &ring_port, "protect_kms", SHARED_RING_USER, "outage"], Some(&down));
    expect(&out, &["write=refused", "read=refused", "usable=True", "done"], &down);
    let output = down.output();
    let warnings = output.lines().filter(|l| l.contains("get errors until it answers")).count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings:\n{output}");
}
