//! Real Cassandra backends, and the Python clients that talk to them (Kafka's are in
//! [`crate::kafka_cluster`]).
//!
//! - [`Cassandra`]: a Cassandra 2.1 cluster of one node or three, stopped on drop.
//! - [`python`] and [`run_python`]: the venv with `cassandra-driver`, `cqlsh`,
//!   `confluent-kafka` and `kafka-python`.
//!
//! `scripts/install-backends` installs all of it (`scripts/install-deps` calls it) under
//! `$SHOTOVER_BACKENDS_DIR`, default `/opt/shotover-backends`. The servers are started by
//! `scripts/cassandra`; these helpers only pick ports and directories.

use crate::TempDir;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}

/// Where `scripts/install-backends` put Cassandra, the venv and friends.
pub fn backends_dir() -> PathBuf {
    std::env::var_os("SHOTOVER_BACKENDS_DIR").map(PathBuf::from).unwrap_or_else(|| "/opt/shotover-backends".into())
}

/// A Cassandra 2.1.0 cluster started by `scripts/cassandra`. It speaks CQL native protocol
/// v1 to v3 only: clients must ask for `protocol_version=3`.
pub struct Cassandra {
    /// Node addresses, `ip:port`; the first is the seed.
    pub nodes: Vec<String>,
    /// The CQL port, the same on every node's IP.
    pub port: u16,
    /// The Thrift port (cassandra-stress creates its schema there), the same on every IP.
    pub rpc_port: u16,
    /// The gossip port between nodes.
    pub storage_port: u16,
    /// JMX, on every node's IP, for nodes started by [`Cassandra::join`].
    pub jmx_port: Option<u16>,
    dir: TempDir,
}

impl Cassandra {
    /// One node on 127.0.0.1. About 5-8 s to start.
    pub fn start_single() -> Self {
        Self::start(&["127.0.0.1"])
    }

    /// Three nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3, each on the same ports of its own
    /// IP as in a real cluster. Returns once every node lists the others in system.peers.
    /// About 15-25 s to start.
    pub fn start_three_nodes() -> Self {
        Self::start(&["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    }

    /// Nodes on `ips`, started one after another (the first is the seed).
    pub fn start(ips: &[&str]) -> Self {
        Self::start_with(ips, &[])
    }

    /// [`Cassandra::start`] with more options of `scripts/cassandra start`, such as
    /// `--tls-keystore`.
    pub fn start_with(ips: &[&str], options: &[&str]) -> Self {
        let port = reserve_ports(ips, 3);
        let (rpc_port, storage_port) = (port + 1, port + 2);
        let dir = TempDir::new("cassandra");
        let out = start_nodes(&dir.0, ips, [port, rpc_port, storage_port], options);
        let nodes = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        // Built before the check, so that a failed start still stops the nodes it started.
        let cassandra = Cassandra { nodes, port, rpc_port, storage_port, jmx_port: None, dir };
        if !out.status.success() {
            panic!(
                "Cassandra did not start (run scripts/install-backends if it is missing):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cassandra
    }

    /// Starts a node on `ip` that joins this cluster (at once, streaming no data), with JMX
    /// open for [`Cassandra::nodetool`]. Dropping the result stops that node alone.
    pub fn join(&self, ip: &str) -> Cassandra {
        let jmx_port = reserve_ports(&[ip], 3);
        let dir = TempDir::new("cassandra-joined");
        let seed = self.nodes[0].rsplit_once(':').map(|(ip, _)| ip).unwrap_or("127.0.0.1");
        let ports = [self.port, self.rpc_port, self.storage_port];
        let out = start_nodes(&dir.0, &[ip], ports, &["--seed", seed, "--jmx-port", &jmx_port.to_string()]);
        let nodes = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        let joined = Cassandra { nodes, jmx_port: Some(jmx_port), dir, ..*self };
        assert!(out.status.success(), "the node did not join:\n{}", String::from_utf8_lossy(&out.stderr));
        joined
    }

    /// Runs Cassandra's nodetool against node `n` (1-based; over JMX, so only on nodes from
    /// [`Cassandra::join`]) and returns its exit status and output.
    pub fn nodetool(&self, n: usize, args: &[&str]) -> (std::process::ExitStatus, String) {
        let jmx = self.jmx_port.expect("nodetool needs a node started with JMX (Cassandra::join)");
        let ip = self.nodes[n - 1].rsplit_once(':').map(|(ip, _)| ip.to_string()).unwrap_or_default();
        let out = Command::new(script("cassandra"))
            .args(["nodetool", &ip, &jmx.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run scripts/cassandra nodetool");
        (out.status, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    /// Kills every node (SIGKILL, as a crash would); the data directory stays.
    pub fn kill(&self) {
        let _ = Command::new(script("cassandra")).arg("stop").arg(&self.dir.0).status();
    }

    /// Kills node `n` (1-based) alone (SIGKILL, as a crash would), and waits until it is gone.
    pub fn kill_node(&self, n: usize) {
        let pidfile = self.dir.0.join(format!("node-{n}/cassandra.pid"));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap_or_default().trim().parse().unwrap_or(0);
        assert!(pid > 0, "no pid in {}", pidfile.display());
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let gone = || {
            nix::sys::signal::kill(pid, None).is_err() || {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&pidfile);
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) every node: connections stay open and nothing is
    /// answered, as with a node stuck in a long GC pause.
    pub fn freeze(&self, frozen: bool) {
        for n in 1..=self.nodes.len() {
            self.freeze_node(n, frozen);
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) node `n` (1-based) alone.
    pub fn freeze_node(&self, n: usize, frozen: bool) {
        let signal = if frozen { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        let pidfile = self.dir.0.join(format!("node-{n}/cassandra.pid"));
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap_or_default().trim().parse().unwrap_or(0);
        assert!(pid > 0, "no pid in {}", pidfile.display());
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
        // kill() returns once the signal is queued: wait until every thread of the node has
        // stopped (or runs again), so that nothing is answered after this returns.
        let want_stopped = frozen;
        let settled = crate::wait_until(Duration::from_secs(10), || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.flatten().collect::<Vec<_>>());
            tasks.is_ok_and(|tasks| {
                tasks.iter().all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
                    matches!(state, Some('T') | Some('t') | Some('Z')) == want_stopped
                })
            })
        });
        assert!(settled, "node {n} did not {} in time", if frozen { "stop" } else { "resume" });
    }

    /// Starts the nodes again on the same IPs and ports (after [`Cassandra::kill`]).
    pub fn start_again(&self) {
        let ips: Vec<&str> = self.nodes.iter().filter_map(|n| n.rsplit_once(':').map(|(ip, _)| ip)).collect();
        let out = start_nodes(&self.dir.0, &ips, [self.port, self.rpc_port, self.storage_port], &[]);
        assert!(out.status.success(), "Cassandra did not start again:\n{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The first node's address, `127.0.0.1:port`.
    pub fn address(&self) -> &str {
        &self.nodes[0]
    }

    /// The log of node `n` (1-based), for assertions and failure messages.
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("node-{n}/cassandra.log"))).unwrap_or_default()
    }
}

/// `scripts/cassandra start DIR IPS...` on `[CQL, Thrift, gossip]` ports, with `extra` options.
fn start_nodes(dir: &Path, ips: &[&str], ports: [u16; 3], extra: &[&str]) -> std::process::Output {
    let [port, rpc_port, storage_port] = ports.map(|p| p.to_string());
    cassandra_script()
        .arg("start")
        .arg(dir)
        .args(ips)
        .args(["--port", &port, "--rpc-port", &rpc_port, "--storage-port", &storage_port])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/cassandra")
}

/// `scripts/cassandra`, with the JVM tuned for a quick start unless `CASSANDRA_JVM_OPTS` says
/// otherwise: JIT with C1 only, so a node starts about 2 s sooner, and tests send it little.
fn cassandra_script() -> Command {
    let mut command = Command::new(script("cassandra"));
    if std::env::var_os("CASSANDRA_JVM_OPTS").is_none() {
        command.env("CASSANDRA_JVM_OPTS", "-XX:TieredStopAtLevel=1");
    }
    command
}

impl Drop for Cassandra {
    fn drop(&mut self) {
        let _ = Command::new(script("cassandra")).arg("stop").arg(&self.dir.0).status();
    }
}

/// Where rings shared by the tests of a run live; `scripts/test` stops them when the run ends.
pub fn shared_backends_dir() -> PathBuf {
    workspace_root().join("target/shared-backends")
}

/// A Cassandra 5.0 ring of two data centres, shared by every test of a run that needs one
/// (each test uses keyspaces of its own and leaves the nodes alone):
///
/// | node | data centre | rack |
/// |---|---|---|
/// | 127.0.0.1 | dc1 | rack1 |
/// | 127.0.0.2 | dc1 | rack2 |
/// | 127.0.0.3 | dc2 | rack1 |
///
/// Clients log in (PasswordAuthenticator): as [`SHARED_RING_USER`], or as users a test creates.
/// The first test to ask starts it (about 40 s) under a file lock; the others wait for that
/// and reuse it. `scripts/test` stops it when the run ends; a ring left over from an earlier
/// run is reused while every node still answers.
pub struct SharedRing {
    /// `ip:port` of each node, in the order above.
    pub nodes: Vec<String>,
    pub port: u16,
}

pub const SHARED_RING_IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
pub const SHARED_RING_PLACES: [&str; 3] = ["dc1:rack1", "dc1:rack2", "dc2:rack1"];
/// The shared ring's superuser, `user:password`.
pub const SHARED_RING_USER: &str = "cassandra:cassandra";

pub fn shared_ring() -> SharedRing {
    let dir = shared_backends_dir().join("cassandra-5.0-ring-auth");
    std::fs::create_dir_all(&dir).expect("shared backends dir");
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock")).expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("flock");
    let state = dir.join("port");
    let answers = |port: u16| {
        SHARED_RING_IPS.iter().all(|ip| {
            let addr = std::net::SocketAddr::new(ip.parse().expect("ip"), port);
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        })
    };
    if let Some(port) = std::fs::read_to_string(&state).ok().and_then(|s| s.trim().parse::<u16>().ok()) {
        if answers(port) {
            let nodes = SHARED_RING_IPS.iter().map(|ip| format!("{ip}:{port}")).collect();
            return SharedRing { nodes, port };
        }
    }
    let _ = std::fs::remove_file(&state);
    let _ = Command::new(script("cassandra")).arg("stop").arg(dir.join("nodes")).status();
    let port = reserve_ports(&SHARED_RING_IPS, 3);
    let mut command = cassandra_script();
    command.arg("start").arg(dir.join("nodes")).args(SHARED_RING_IPS).args(["--version", "5.0", "--auth"]);
    for place in SHARED_RING_PLACES {
        command.args(["--dc-rack", place]);
    }
    let out = command
        .args(["--port", &port.to_string()])
        .args(["--rpc-port", &(port + 1).to_string()])
        .args(["--storage-port", &(port + 2).to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/cassandra");
    if !out.status.success() {
        let _ = Command::new(script("cassandra")).arg("stop").arg(dir.join("nodes")).status();
        panic!("the shared Cassandra 5.0 ring did not start:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::write(&state, port.to_string()).expect("ring state");
    SharedRing { nodes: String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect(), port }
}

/// The venv's python, with `cassandra-driver`, `cqlsh`, `confluent-kafka` and `kafka-python`.
pub fn python() -> PathBuf {
    let python = backends_dir().join("venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/install-backends", python.display());
    python
}

/// What a Python snippet printed, and how it exited.
#[derive(Debug)]
pub struct PythonOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PythonOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The stdout, after asserting that the snippet exited with 0.
    pub fn expect_success(self) -> String {
        assert!(self.success(), "python exited with {}:\n{}\n{}", self.status, self.stdout, self.stderr);
        self.stdout
    }

    /// As [`PythonOutput::expect_success`], with the proxy's log in the failure message (what
    /// the proxy said of a connection that the client saw close).
    pub fn expect_success_with_log(self, shotover: &crate::Shotover) -> String {
        let ok = self.success();
        assert!(
            ok,
            "python exited with {}:\n{}\n{}\nproxy log:\n{}",
            self.status,
            self.stdout,
            self.stderr,
            shotover.output()
        );
        self.stdout
    }
}

/// Runs `snippet` with the venv's python as `python -c snippet args...` (so `sys.argv[1:]`
/// is `args`), killing it after 120 s.
pub fn run_python(snippet: &str, args: &[&str]) -> PythonOutput {
    run_python_with_timeout(snippet, args, Duration::from_secs(120))
}

pub fn run_python_with_timeout(snippet: &str, args: &[&str], timeout: Duration) -> PythonOutput {
    let mut child = Command::new(python())
        .arg("-c")
        .arg(snippet)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run python");
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python") {
            break status;
        }
        if Instant::now() > deadline {
            killed = true;
            let _ = child.kill();
            break child.wait().expect("wait for python");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = stderr.join().unwrap_or_default();
    if killed {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    PythonOutput { status, stdout: stdout.join().unwrap_or_default(), stderr }
}

/// A port P in 61000-64999 such that P..P+count are free on every one of `ips`. Ports are
/// taken under a file lock shared by all test processes and stay reserved by a marker file
/// for a while, because a Cassandra node binds its ports only seconds after it was given them.
/// The range lies above the kernel's ephemeral ports (32768-60999) and apart from
/// [`crate::free_port`] and the Valkey cluster ports.
fn reserve_ports(ips: &[&str], count: u16) -> u16 {
    const FIRST: u16 = 61000;
    const LAST: u16 = 64999;
    let lock_path = std::env::temp_dir().join("shotover-it-backend-ports.lock");
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("flock");
    let free = |p: u16| ips.iter().all(|ip| TcpListener::bind((*ip, p)).is_ok());
    let slots = (LAST - FIRST + 1) / count;
    let mut slot = (std::process::id() % slots as u32) as u16;
    for _ in 0..slots {
        let port = FIRST + slot * count;
        let marker = std::env::temp_dir().join(format!("shotover-it-backend-port-{port}"));
        let recently_taken = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(300));
        if !recently_taken && (0..count).all(|i| free(port + i)) {
            let _ = std::fs::write(&marker, b"");
            return port;
        }
        slot = (slot + 1) % slots;
    }
    panic!("no {count} free ports in {FIRST}-{LAST} on {ips:?}");
}
