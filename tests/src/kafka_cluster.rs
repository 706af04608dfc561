//! Real Apache Kafka 4 clusters (KRaft), started by `scripts/kafka`: one per test that
//! kills brokers, and one shared by the other tests of a run (each with topics and groups
//! of its own).
//!
//! Every broker has four listeners (see `scripts/kafka`): PLAINTEXT (a super user), SASL
//! (SCRAM-SHA-256/512 and PLAIN; users `admin`/`admin-secret`, a super user, and
//! `user1`/`user1-secret`, with no ACLs), SSL with client certificates (the certificate in
//! `tls/mtls.crt` is the super user `User:CN=shotover-mtls`), and one between brokers.

use crate::backends::shared_backends_dir;
use crate::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka")
}

#[derive(Debug, Clone)]
pub struct KafkaBroker {
    pub id: i32,
    pub plaintext: u16,
    pub sasl: u16,
    pub ssl: u16,
    pub rack: String,
    /// The address all its listeners are on: 127.0.0.1, or 127.0.0.ID in a cluster started
    /// with `--ips` (the shared one).
    pub host: String,
    /// The FAULTY listener's port (PLAINTEXT, on `host`), which the broker advertises on
    /// [`KafkaBroker::faulty_address`], where a test puts a fault proxy.
    pub faulty: u16,
}

impl KafkaBroker {
    /// `host:port` of one of its listeners.
    pub fn address(&self, port: u16) -> String {
        format!("{}:{port}", self.host)
    }

    /// Where the broker says its FAULTY listener is (127.0.1.ID, same port): nothing listens
    /// there until a test starts a fault proxy on it in front of `address(faulty)`.
    pub fn faulty_address(&self) -> String {
        format!("127.0.1.{}:{}", self.id, self.faulty)
    }
}

pub struct KafkaCluster {
    /// Where `scripts/kafka` keeps the cluster's files (`tls/`, `ports`, logs).
    pub dir: PathBuf,
    pub brokers: Vec<KafkaBroker>,
    /// Set for a cluster of this test's own, stopped on drop.
    owned: Option<TempDir>,
}

impl KafkaCluster {
    /// A cluster of `brokers` brokers (racks rack1..rackN) for this test alone.
    pub fn start(brokers: usize) -> Self {
        let dir = TempDir::new("kafka");
        start_in(&dir.0, brokers, false);
        let mut cluster = Self::read(dir.0.clone());
        cluster.owned = Some(dir);
        cluster
    }

    fn read(dir: PathBuf) -> Self {
        let ports = std::fs::read_to_string(dir.join("ports")).expect("scripts/kafka wrote no ports file");
        let brokers = ports.lines().filter_map(parse_broker).collect();
        KafkaCluster { dir, brokers, owned: None }
    }

    /// `host:port` of every broker's PLAINTEXT listener, comma separated.
    pub fn bootstrap(&self) -> String {
        self.brokers.iter().map(|b| b.address(b.plaintext)).collect::<Vec<_>>().join(",")
    }

    pub fn sasl_bootstrap(&self) -> String {
        self.brokers.iter().map(|b| b.address(b.sasl)).collect::<Vec<_>>().join(",")
    }

    pub fn broker(&self, id: i32) -> &KafkaBroker {
        self.brokers.iter().find(|b| b.id == id).expect("no such broker")
    }

    /// Kills one broker at once (its partitions move within about 6 s).
    pub fn stop_broker(&self, id: i32) {
        let status = Command::new(script()).arg("stop-broker").arg(&self.dir).arg(id.to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "scripts/kafka stop-broker {id} failed");
    }

    /// Starts a stopped broker again; returns once every broker is listed again.
    pub fn start_broker(&self, id: i32) {
        let out = Command::new(script()).arg("start-broker").arg(&self.dir).arg(id.to_string()).output();
        let out = out.expect("cannot run scripts/kafka");
        assert!(
            out.status.success(),
            "scripts/kafka start-broker {id} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a Java class of Kafka's jars (a tool such as
    /// `org.apache.kafka.tools.ProducerPerformance`), killing it after 180 s.
    pub fn tool(&self, class: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-s", "KILL", "180"])
            .arg(script())
            .arg("tool")
            .arg(&self.dir)
            .arg(class)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run scripts/kafka tool")
    }

    /// A file of the cluster's, such as `tls/ca.crt`.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Everything broker `id` logged.
    pub fn log(&self, id: i32) -> String {
        std::fs::read_to_string(self.dir.join(format!("broker-{id}/server.log"))).unwrap_or_default()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        if let Some(dir) = &self.owned {
            let _ = Command::new(script()).arg("stop").arg(&dir.0).status();
        }
    }
}

/// `broker ID plaintext PORT sasl PORT ssl PORT internal PORT rack RACK host HOST faulty PORT`
fn parse_broker(line: &str) -> Option<KafkaBroker> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| words.iter().position(|w| *w == name).and_then(|i| words.get(i + 1)).copied();
    if words.first() != Some(&"broker") {
        return None;
    }
    Some(KafkaBroker {
        id: words.get(1)?.parse().ok()?,
        plaintext: field("plaintext")?.parse().ok()?,
        sasl: field("sasl")?.parse().ok()?,
        ssl: field("ssl")?.parse().ok()?,
        rack: field("rack")?.to_owned(),
        host: field("host").unwrap_or("127.0.0.1").to_owned(),
        faulty: field("faulty")?.parse().ok()?,
    })
}

/// With `ips`, broker ID listens on 127.0.0.ID, every broker on the same ports.
fn start_in(dir: &Path, brokers: usize, ips: bool) {
    let out = Command::new(script())
        .arg("start")
        .arg(dir)
        .args(["--brokers", &brokers.to_string()])
        .args(ips.then_some("--ips"))
        // Starts in about 9 s instead of 14 on 2 cores; the tests are not benchmarks.
        .env("KAFKA_JVM_OPTS", "-XX:TieredStopAtLevel=1")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/kafka");
    if !out.status.success() {
        let _ = Command::new(script()).arg("stop").arg(dir).status();
        panic!(
            "Kafka did not start (run scripts/install-backends if it is missing):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The 3-broker cluster shared by the tests of a run that leave its brokers alone, started
/// with `--ips` (broker ID on 127.0.0.ID, all on the same ports, as KafkaSinkSingle wants). The
/// first test to ask starts it under a file lock; the others reuse it. `scripts/test`
/// stops it when the run ends; one left over from an earlier run is reused while every
/// broker still answers.
pub fn shared_kafka() -> KafkaCluster {
    let dir = shared_backends_dir().join("kafka-3");
    std::fs::create_dir_all(&dir).expect("shared backends dir");
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("flock");
    let nodes = dir.join("cluster");
    if nodes.join("ports").exists() {
        let cluster = KafkaCluster::read(nodes.clone());
        let answers = |b: &KafkaBroker| std::net::TcpStream::connect(b.address(b.plaintext)).is_ok();
        let spread = cluster.brokers.iter().all(|b| b.host == format!("127.0.0.{}", b.id));
        if cluster.brokers.len() == 3 && spread && cluster.brokers.iter().all(answers) {
            return cluster;
        }
    }
    start_in(&nodes, 3, true);
    KafkaCluster::read(nodes)
}
