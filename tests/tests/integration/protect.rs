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
const PROTECTED: [&str; 14] = [
    "paged=True",
    "read_back=10008/10008",
    "plaintext_stored=0 encrypted=10007/10007",
    "lwt_existing=True",
    "ddl=passed",
    "null_kept=True",
    "tampered=True",
    "after_tamper=True",
    "json=refused",
    "number=refused",
    "json_row_stored=False",
    "bad_prepare=True",
    "bad_read=True",
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
        "        - Protect:\n            key_manager:\n{key_manager}            keyspace_table_columns:\n              {keyspace}:\n                t:\n                  - col1\n                bad:\n                  - col1\n{}",
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

    // cqlsh shows the value as written (a blob, in hex: "I am gonna get encrypted!!").
    let cqlsh = backends_dir().join("venv/bin/cqlsh").display().to_string();
    let (user, password) = SHARED_RING_USER.split_once(':').unwrap();
    let select = "SELECT col1 FROM protect_local.t WHERE pk = 'lit' AND ck = 1";
    let (status, out) = run_tool(&cqlsh, &["127.0.0.1", &port.to_string(), "-u", user, "-p", password, "-e", select]);
    assert!(status.success() && out.contains("0x4920616d20676f6e6e61206765742065"), "{out}");
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
    expect(&outside, &["outside=10000/10000", &format!("kek_id={alias}")], &shotover);

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

/// At least `len` bytes from `raw`, as text.
fn read_text(raw: &mut std::net::TcpStream, len: usize) -> String {
    let mut got = String::new();
    while got.len() < len {
        match read_once(raw, Duration::from_secs(5)) {
            ReadOutcome::Data(d) => got.push_str(&d),
            other => panic!("{other:?} after {got:?}"),
        }
    }
    got
}

/// The Valkey form: values of keys matching the patterns are stored encrypted and read
/// back as written, through redis-rs, valkey-cli and raw RESP2/RESP3.
#[test]
fn protect_encrypts_valkey_values_of_matching_keys() {
    use redis::Commands;
    let valkey = ValkeyServer::start();
    let port = free_port();
    let chain = format!(
        "        - Protect:\n            key_manager:\n              Local:\n                kek: Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=\n                kek_id: \"kek-v\"\n            valkey_key_patterns: [\"secret:*\", \"card:?\"]\n{}",
        sink_single(valkey.port)
    );
    let shotover = Shotover::start(&valkey_topology(port, &chain), port);
    let mut c = connect(port);
    let mut direct = valkey.client();

    let _: () = c.set("secret:a", "hello").unwrap();
    let _: () = c.set("public:a", "plain").unwrap();
    let _: () = c.mset(&[("secret:b", "b1"), ("public:b", "p1"), ("card:1", "4111")]).unwrap();
    let got: Vec<String> = c.mget(&["secret:b", "public:b", "secret:a", "card:1"]).unwrap();
    assert_eq!(got, ["b1", "p1", "hello", "4111"]);
    let _: () = c.set_ex("secret:c", "c1", 100).unwrap();
    let old: String = c.getset("secret:c", "c2").unwrap();
    assert_eq!((old.as_str(), c.get::<_, String>("secret:c").unwrap().as_str()), ("c1", "c2"));
    let _: () = c.hset_multiple("secret:h", &[("f1", "v1"), ("f2", "v2")]).unwrap();
    assert_eq!(c.hget::<_, _, String>("secret:h", "f1").unwrap(), "v1");
    let all: std::collections::HashMap<String, String> = c.hgetall("secret:h").unwrap();
    assert_eq!((all["f1"].as_str(), all["f2"].as_str()), ("v1", "v2"));
    let values: Vec<String> = redis::cmd("HMGET").arg("secret:h").arg("f2").arg("f1").query(&mut c).unwrap();
    assert_eq!(values, ["v2", "v1"]);
    let old: String = redis::cmd("SET").arg("secret:a").arg("again").arg("GET").query(&mut c).unwrap();
    assert_eq!(old, "hello");
    let deleted: String = redis::cmd("GETDEL").arg("secret:c").query(&mut c).unwrap();
    assert_eq!(deleted, "c2");
    let (a, h): (String, Vec<String>) =
        redis::pipe().atomic().cmd("GET").arg("secret:a").cmd("HVALS").arg("secret:h").query(&mut c).unwrap();
    assert_eq!((a.as_str(), h.len()), ("again", 2));
    assert!(h.contains(&"v1".to_string()) && h.contains(&"v2".to_string()), "{h:?}");

    // Stored encrypted, in the documented layout with the KEK id at its end; other keys as
    // they were written.
    for key in ["secret:a", "secret:b", "card:1"] {
        let stored: Vec<u8> = direct.get(key).unwrap();
        assert!(stored.len() > 8 + 16 + 12 + 8 + 8 && stored.ends_with(b"kek-v"), "{key}: {stored:?}");
        assert!(!stored.windows(3).any(|w| w == b"b1" || w == b"hel" || w == b"411"), "{key}: {stored:?}");
    }
    let stored: Vec<u8> = direct.hget("secret:h", "f1").unwrap();
    assert!(stored.ends_with(b"kek-v"), "{stored:?}");
    assert_eq!(direct.get::<_, String>("public:a").unwrap(), "plain");

    // Commands that would store plaintext under a protected key are refused, in their place
    // among the replies; scripts naming one too.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut raw,
        b"SET secret:p a\r\nAPPEND secret:p b\r\nGET secret:p\r\nEVAL \"return 1\" 1 secret:p\r\nPING\r\n",
    )
    .unwrap();
    let expected = "+OK\r\n-ERR shotover: Protect: APPEND on a protected key is refused: its value would not be encrypted\r\n$1\r\na\r\n-ERR shotover: Protect: EVAL on a protected key is refused: the script could read or write its value unencrypted\r\n+PONG\r\n";
    assert_eq!(read_text(&mut raw, expected.len()), expected);

    // A command refused inside MULTI aborts the transaction; a destination key counts too;
    // a huge key count in EVAL is Valkey's to refuse.
    let sent = b"MULTI\r\nSET secret:m x\r\nAPPEND secret:m y\r\nEXEC\r\nGET secret:m\r\nCOPY public:a secret:z\r\nEVAL \"\" 99999999999999999\r\n";
    std::io::Write::write_all(&mut raw, sent).unwrap();
    let expected = "+OK\r\n+QUEUED\r\n-ERR shotover: Protect: APPEND on a protected key is refused: its value would not be encrypted\r\n-EXECABORT Transaction discarded because of previous errors.\r\n$-1\r\n-ERR shotover: Protect: COPY on a protected key is refused: its value would not be encrypted\r\n-ERR Number of keys can't be greater than number of args\r\n";
    assert_eq!(read_text(&mut raw, expected.len()), expected);

    // RESP3: HGETALL's map, decrypted.
    std::io::Write::write_all(&mut raw, b"HELLO 3\r\n").unwrap();
    let hello = read_once(&mut raw, Duration::from_secs(5));
    assert!(matches!(&hello, ReadOutcome::Data(d) if d.starts_with('%')), "{hello:?}");
    std::io::Write::write_all(&mut raw, b"HGETALL secret:h\r\n").unwrap();
    let map = read_once(&mut raw, Duration::from_secs(5));
    let ReadOutcome::Data(map) = map else { panic!("{map:?}") };
    assert!(map.starts_with("%2\r\n") && map.contains("$2\r\nv1\r\n") && map.contains("$2\r\nv2\r\n"), "{map:?}");

    // A value tampered with: an error for that reply, and the connection carries on.
    let _: () = direct.set("secret:t", "not encrypted").unwrap();
    let err = c.get::<_, String>("secret:t").unwrap_err();
    assert!(err.to_string().contains("cannot decrypt"), "{err}");
    assert_eq!(c.get::<_, String>("secret:a").unwrap(), "again");

    // valkey-cli, the shell users reach for first.
    let (status, out) = run_tool("valkey-cli", &["-p", &port.to_string(), "GET", "secret:a"]);
    assert!(status.success() && out.trim() == "again", "{out}\n{}", shotover.output());
}
