//! Helpers for the integration tests: real servers on free ports and the real binary.
//!
//! - [`free_port`]: a TCP port nobody listens on.
//! - [`ValkeyServer`]: a throwaway `valkey-server`, killed on drop.
//! - [`Shotover`]: the release `shotover-proxy` binary with a topology and config written
//!   to a temp dir; its output is captured for assertions on log lines.
//! - [`http_get`] and [`http_put`]: the observability interface without a client library.
//!
//! The release binary is built once per test run by `scripts/test`; set `SHOTOVER_BIN` to
//! use another.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod backends;
pub mod fault_proxy;
pub mod kafka_cluster;

/// A TCP port that was free a moment ago, from a block of 100 that this test process holds
/// alone ([`port_block`]): test processes that run side by side never pick each other's ports,
/// not even one that another test has just released (a test that checks a closed listener must
/// not find another test's server there). The blocks, 30000-44999, are kept out of the kernel's
/// automatic port choice by `scripts/test` where it may, so that no outgoing connection takes a
/// port between this check and the bind of the server it is meant for.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = port_block();
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        // Cluster nodes use 11000-19999 and their bus ports 21000-29999; backends 61000-64999.
        let port = FREE_PORTS_FROM + block * 100 + (offset % 100) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

const FREE_PORTS_FROM: u16 = 30000;
const PORT_BLOCKS: u32 = 150;

/// This process's block of ports: the first of the 150 whose lock file (under the temp dir) it
/// can lock, starting at the one its pid picks. The lock is held until the process exits (each
/// test is a process of its own under nextest). Were all 150 held, the pid's block is used.
fn port_block() -> u16 {
    static BLOCK: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *BLOCK.get_or_init(|| {
        let first = std::process::id() % PORT_BLOCKS;
        for i in 0..PORT_BLOCKS {
            let block = (first + i) % PORT_BLOCKS;
            let path = std::env::temp_dir().join(format!("shotover-it-port-block-{block}.lock"));
            let Ok(file) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) else {
                continue;
            };
            if let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                // Held, with its descriptor, until the process exits.
                std::mem::forget(lock);
                return block as u16;
            }
        }
        first as u16
    })
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} after {timeout:?}")
}

/// A per-test scratch directory under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shotover-it-{}-{}-{}",
            name,
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway valkey-server.
pub struct ValkeyServer {
    pub port: u16,
    child: Child,
    args: Vec<String>,
    _dir: TempDir,
}

impl ValkeyServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra arguments, e.g. `["--requirepass", "pw"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(free_port(), extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let dir = TempDir::new("valkey");
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["--dir".to_string(), dir.0.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = spawn_valkey(&args);
        wait_for_port(port, Duration::from_secs(10)).expect("valkey-server did not start");
        ValkeyServer { port, child, args, _dir: dir }
    }

    /// Stops (`true`, SIGSTOP) or resumes (SIGCONT) the server: a server that accepts
    /// connections but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        use nix::sys::signal::{kill, Signal};
        let signal = if frozen { Signal::SIGSTOP } else { Signal::SIGCONT };
        kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).expect("signal valkey-server");
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_valkey(&self.args);
        wait_for_port(self.port, Duration::from_secs(10)).expect("valkey-server did not restart");
    }

    pub fn client(&self) -> redis::Connection {
        connect(self.port)
    }
}

fn spawn_valkey(args: &[String]) -> Child {
    Command::new("valkey-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run valkey-server: run scripts/install-deps")
}

impl Drop for ValkeyServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A redis-rs connection to 127.0.0.1:`port`.
pub fn connect(port: u16) -> redis::Connection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("bad url");
    client.get_connection_with_timeout(Duration::from_secs(5)).expect("cannot connect")
}

/// The path of the release binary.
pub fn shotover_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("SHOTOVER_BIN") {
        return bin.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let bin = target.join("release").join("shotover-proxy");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release -p shotover-proxy` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// A running shotover-proxy process.
pub struct Shotover {
    child: Child,
    output: Arc<Mutex<String>>,
    pub observability_port: u16,
    pub dir: TempDir,
}

/// How to start shotover.
pub struct ShotoverBuilder {
    binary: Option<PathBuf>,
    topology: String,
    config: Option<String>,
    /// Lines added to the default config.yaml.
    config_lines: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    wait_at: Option<std::net::SocketAddr>,
}

impl Shotover {
    /// Shotover with `topology` (YAML text) and a default config with observability on a
    /// free port. Waits until `listen_port` accepts connections.
    pub fn builder(topology: &str) -> ShotoverBuilder {
        ShotoverBuilder {
            binary: None,
            topology: topology.to_string(),
            config: None,
            config_lines: String::new(),
            args: Vec::new(),
            envs: Vec::new(),
            wait_at: None,
        }
    }

    pub fn start(topology: &str, listen_port: u16) -> Shotover {
        Shotover::builder(topology).wait_for(listen_port).start().expect("shotover did not start")
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until its output contains `needle`; returns whether it appeared.
    #[must_use]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The text of `GET /metrics`; fails the test if the observability interface does not
    /// answer with it.
    pub fn metrics(&self) -> String {
        http_get(self.observability_port, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics failed: {e:#}\nshotover output:\n{}", self.output()))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        wait_exit(&mut self.child, timeout)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)?;
        Ok(())
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }
}

impl ShotoverBuilder {
    /// Replaces the default config.yaml.
    pub fn config(mut self, config: &str) -> Self {
        self.config = Some(config.to_string());
        self
    }

    /// Adds `line` (with its newline) to the default config.yaml, which keeps the
    /// observability interface that [`Shotover::metrics`] reads.
    pub fn config_line(mut self, line: &str) -> Self {
        self.config_lines.push_str(line);
        self
    }

    /// Runs another build of the proxy (a custom build with extra transforms).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    pub fn wait_for(self, port: u16) -> Self {
        self.wait_for_address(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// As [`wait_for`](Self::wait_for), for a source on another address (127.0.0.2, ...).
    pub fn wait_for_address(mut self, address: std::net::SocketAddr) -> Self {
        self.wait_at = Some(address);
        self
    }

    /// Starts the process; with `wait_for`, returns once that port accepts connections.
    pub fn start(self) -> Result<Shotover> {
        let dir = TempDir::new("shotover");
        let observability_port = free_port();
        let default_config = self.config.is_none();
        let config = self.config.unwrap_or_else(|| {
            format!(
                "main_log_level: \"info\"\nobservability_interface: \"127.0.0.1:{observability_port}\"\n{}",
                self.config_lines
            )
        });
        std::fs::write(dir.path("topology.yaml"), &self.topology)?;
        std::fs::write(dir.path("config.yaml"), &config)?;
        let mut child = Command::new(self.binary.clone().unwrap_or_else(shotover_bin))
            .arg("--topology-file")
            .arg(dir.path("topology.yaml"))
            .arg("--config-file")
            .arg(dir.path("config.yaml"))
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run shotover-proxy")?;
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut out) = output.lock() {
                        out.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut shotover = Shotover { child, output, observability_port, dir };
        if let Some(address) = self.wait_at {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if TcpStream::connect(address).is_ok() {
                    break;
                }
                if let Ok(Some(status)) = shotover.child.try_wait() {
                    bail!("shotover exited with {status} before listening:\n{}", shotover.output());
                }
                if Instant::now() > deadline {
                    bail!("shotover did not listen on {address}:\n{}", shotover.output());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The observability interface of the default config may come up after the
            // source: wait for it too, so that `metrics()` answers from the start.
            if default_config
                && !wait_until(Duration::from_secs(5), || TcpStream::connect(("127.0.0.1", observability_port)).is_ok())
            {
                bail!("the observability interface did not listen on {observability_port}:\n{}", shotover.output());
            }
        }
        Ok(shotover)
    }

    /// Runs the process to completion (for startup errors): exit status and output.
    pub fn run_to_exit(self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let mut shotover = self.start()?;
        let status = wait_exit(&mut shotover.child, timeout)?;
        std::thread::sleep(Duration::from_millis(50));
        Ok((status, shotover.output()))
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Shotover {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 request; returns the body of a 2xx response.
fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

pub fn http_get(port: u16, path: &str) -> Result<String> {
    let (status, body) = http(port, "GET", path, "")?;
    if !(200..300).contains(&status) {
        bail!("GET {path}: status {status}: {body}");
    }
    Ok(body)
}

pub fn http_put(port: u16, path: &str, body: &str) -> Result<(u16, String)> {
    http(port, "PUT", path, body)
}

/// The value of one Prometheus series (`name{labels}` exactly as rendered), or None when the
/// metrics text has no such series. Panics if the series is there but its value is not a
/// number.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    let value = metrics.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("series {series} has no numeric value {value:?}:\n{metrics}")))
}

/// The value of one Prometheus series (`name{labels}` exactly as rendered). A missing series
/// fails the test: a metric that is not exported is not a metric that is 0.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metric(metrics, series).unwrap_or_else(|| panic!("no series {series} in the metrics:\n{metrics}"))
}

/// The sum of every series of metric `name` whose labels include `label` (`key="value"`),
/// such as `connections_opened` of one source over all worker cores. Fails the test when
/// there is no such series.
pub fn metric_sum(metrics: &str, name: &str, label: &str) -> f64 {
    let values: Vec<f64> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|rest| rest.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|l| l == label))
        .map(|(_, v)| v.trim().parse().unwrap_or_else(|_| panic!("{name}{{{label}}}: bad value {v:?}:\n{metrics}")))
        .collect();
    assert!(!values.is_empty(), "no series {name}{{..{label}..}} in the metrics:\n{metrics}");
    values.iter().sum()
}

/// What one read on a connection saw.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Some bytes (lossily as text).
    Data(String),
    /// End of stream (a read of 0 bytes) or a reset: the peer closed the connection.
    Closed,
    /// Nothing arrived within the timeout: the connection is still open.
    TimedOut,
}

/// One read on `stream` with `timeout`. Any error other than a reset or a timeout fails
/// the test.
pub fn read_once(stream: &mut TcpStream, timeout: Duration) -> ReadOutcome {
    use std::io::ErrorKind;
    stream.set_read_timeout(Some(timeout)).expect("set_read_timeout");
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => ReadOutcome::Closed,
        Ok(n) => ReadOutcome::Data(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => ReadOutcome::Closed,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => ReadOutcome::TimedOut,
        Err(e) => panic!("read failed: {e}"),
    }
}

/// Asserts that the peer closes `stream` (end of stream or a reset) within `within`, without
/// sending anything first. A connection still open after `within` fails the test.
#[track_caller]
pub fn assert_closed_by_peer(stream: &mut TcpStream, within: Duration, what: &str) {
    let outcome = read_once(stream, within);
    assert_eq!(outcome, ReadOutcome::Closed, "{what}: expected the connection to be closed within {within:?}");
}

/// Runs a command line tool and returns (exit status, stdout + stderr).
pub fn run_tool(program: &str, args: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

/// A topology with one Valkey source on `listen_port` and `chain` (YAML list items,
/// indented by 8 spaces).
pub fn valkey_topology(listen_port: u16, chain: &str) -> String {
    format!(
        "---\nsources:\n  - Valkey:\n      name: \"valkey\"\n      listen_addr: \"127.0.0.1:{listen_port}\"\n      chain:\n{chain}"
    )
}

/// A proxy on worker cores 0 and 1 whose source runs `chain`, with `connection_placement`
/// set to `placement`; returns it and its port.
pub fn two_core_valkey_proxy(chain: &str, placement: &str) -> (Shotover, u16) {
    let port = free_port();
    let shotover = Shotover::builder(&valkey_topology(port, chain))
        .config_line(&format!("connection_placement: {placement}\n"))
        .arg("--worker-cores")
        .arg("0-1")
        .wait_for(port)
        .start()
        .expect("shotover on two cores");
    (shotover, port)
}

/// Whether this machine has the 2 CPUs a test of two worker cores needs (it says so when not).
pub fn has_two_cpus() -> bool {
    let two = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2;
    if !two {
        eprintln!("skipped: needs 2 CPUs");
    }
    two
}

/// The chain item of a ValkeySinkSingle to `port`.
pub fn sink_single(port: u16) -> String {
    format!("        - ValkeySinkSingle:\n            remote_address: \"127.0.0.1:{port}\"\n            connect_timeout_ms: 1000\n")
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
#[must_use]
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A test CA with server and client certificates, made with openssl at test time.
pub struct Certs {
    pub dir: TempDir,
}

impl Certs {
    /// Creates `ca.crt`, `server.crt` (for 127.0.0.1 and localhost), `client.crt`, and
    /// `other-host.crt` (valid only for other.example), each with its `.key`.
    pub fn generate() -> Certs {
        let dir = TempDir::new("certs");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir.0).output().expect("cannot run openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=shotover-test-ca"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        run(&ca);
        for (name, san) in
            [("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:client"), ("other-host", "DNS:other.example")]
        {
            let mut req = vec!["req"];
            req.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let crt = format!("{name}.crt");
            let ext = format!("{name}.ext");
            let subj = format!("/CN={name}");
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run(&req);
            std::fs::write(
                dir.path(&ext),
                format!("basicConstraints=CA:FALSE\nsubjectAltName={san}\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n"),
            )
            .unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Certs { dir }
    }

    /// The absolute path of one of the files.
    pub fn path(&self, file: &str) -> String {
        self.dir.path(file).display().to_string()
    }
}

impl ValkeyServer {
    /// A valkey-server that speaks only TLS, with certificate `<cert>.crt`; clients need no
    /// certificate of their own.
    pub fn start_tls(certs: &Certs, cert: &str) -> Self {
        let port = free_port();
        let crt = certs.path(&format!("{cert}.crt"));
        let key = certs.path(&format!("{cert}.key"));
        let ca = certs.path("ca.crt");
        let dir = TempDir::new("valkey");
        let mut args: Vec<String> =
            ["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend([
            "--dir".into(),
            dir.0.display().to_string(),
            "--tls-cert-file".into(),
            crt,
            "--tls-key-file".into(),
            key,
        ]);
        args.extend(["--tls-ca-cert-file".into(), ca, "--tls-auth-clients".into(), "no".into()]);
        let child = spawn_valkey(&args);
        wait_for_port(port, Duration::from_secs(10)).expect("valkey-server (TLS) did not start");
        ValkeyServer { port, child, args, _dir: dir }
    }
}

/// A 6-node Valkey cluster (3 masters, 3 replicas) started by `scripts/valkey-cluster`.
pub struct ValkeyCluster {
    /// Node addresses, `ip:port`.
    pub nodes: Vec<String>,
    dir: TempDir,
}

impl ValkeyCluster {
    /// Every node on `port` of its own IP, 127.0.0.1 to 127.0.0.6.
    pub fn start_on_six_ips(port: u16) -> Self {
        let ips: Vec<String> = (1..=6).map(|i| format!("127.0.0.{i}")).collect();
        Self::start(port, &ips)
    }

    /// As [`ValkeyCluster::start_on_six_ips`], with node 127.0.0.N telling clients it is at
    /// `net`.N (where a test puts a fault proxy in front of it).
    pub fn start_on_six_ips_announcing(port: u16, net: &str) -> Self {
        let ips: Vec<String> = (1..=6).map(|i| format!("127.0.0.{i}")).collect();
        Self::start_full(port, &ips, None, "", Some(net))
    }

    /// Every node on 127.0.0.1, speaking only TLS with `certs`' server certificate.
    pub fn start_tls_on_one_ip(port: u16, certs: &Certs) -> Self {
        Self::start_with(port, &["127.0.0.1".to_string()], Some(certs))
    }

    fn start(port: u16, ips: &[String]) -> Self {
        Self::start_with(port, ips, None)
    }

    /// Every node on 127.0.0.1, ports `port` to `port + 5`, with extra valkey-server
    /// arguments (`--enable-debug-command yes`).
    pub fn start_on_one_ip_with(port: u16, extra: &str) -> Self {
        Self::start_full(port, &["127.0.0.1".to_string()], None, extra, None)
    }

    fn start_with(port: u16, ips: &[String], tls: Option<&Certs>) -> Self {
        Self::start_full(port, ips, tls, "", None)
    }

    fn start_full(port: u16, ips: &[String], tls: Option<&Certs>, extra: &str, announce: Option<&str>) -> Self {
        let dir = TempDir::new("cluster");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let mut script = Command::new(root.join("scripts/valkey-cluster"));
        if let Some(certs) = tls {
            script.env("VALKEY_TLS_DIR", &certs.dir.0);
        }
        if !extra.is_empty() {
            script.env("VALKEY_EXTRA_ARGS", extra);
        }
        if let Some(net) = announce {
            script.env("VALKEY_ANNOUNCE_CLIENT_NET", net);
        }
        let out = script
            .arg(&dir.0)
            .arg(port.to_string())
            .args(ips)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run scripts/valkey-cluster");
        let nodes = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
        // Built before the check, so that a failed start still stops the nodes it started.
        let cluster = ValkeyCluster { nodes, dir };
        if !out.status.success() {
            let log = std::fs::read_to_string(cluster.dir.path("create.log")).unwrap_or_default();
            panic!("cluster did not start: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        }
        cluster
    }
}

/// A port P for a cluster node such that P and its cluster bus port P + 10000 are free.
pub fn free_cluster_port() -> u16 {
    free_cluster_ports(1)
}

/// A port P in 11000-19999 such that P..P+count and their bus ports (+10000) are free.
/// Ports are taken under a file lock shared by all test processes and stay reserved (by a
/// marker file) so that clusters started in parallel never overlap.
fn free_cluster_ports(count: u16) -> u16 {
    let lock_path = std::env::temp_dir().join("shotover-it-cluster-ports.lock");
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).expect("lock file");
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).expect("flock");
    let free =
        |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok();
    let start = 11000 + ((std::process::id() * 61) % 8900) as u16;
    let mut port = start;
    loop {
        let marker = std::env::temp_dir().join(format!("shotover-it-cluster-port-{port}"));
        let recently_taken = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(120));
        if !recently_taken && (0..count).all(|i| free(port + i)) {
            let _ = std::fs::write(&marker, b"");
            return port;
        }
        port = if port + count >= 19990 { 11000 } else { port + count };
    }
}

impl Drop for ValkeyCluster {
    fn drop(&mut self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let _ = Command::new(root.join("scripts/valkey-cluster-stop")).arg(&self.dir.0).status();
    }
}

impl ValkeyCluster {
    /// Every node on 127.0.0.1, ports `port` to `port + 5`.
    pub fn start_on_one_ip(port: u16) -> Self {
        Self::start(port, &["127.0.0.1".to_string()])
    }
}

/// A port P such that P..P+5 and their cluster bus ports are free (a one-IP cluster).
pub fn free_cluster_port_range() -> u16 {
    free_cluster_ports(6)
}

/// A CQL frame from a client: protocol `version` (3, 4 or 5 before segments), header and body.
pub fn cql_request(version: u8, stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![version, 0];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.push(opcode);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A CQL v4 QUERY body: `cql` at consistency ONE, no values.
pub fn cql_query_body(cql: &str) -> Vec<u8> {
    let mut body = (cql.len() as i32).to_be_bytes().to_vec();
    body.extend_from_slice(cql.as_bytes());
    body.extend_from_slice(&[0, 1, 0]);
    body
}

/// A raw CQL v4 connection to `127.0.0.1:port`, past STARTUP and, for a server with
/// PasswordAuthenticator, the login as `credentials` (`user:password`, SASL PLAIN).
pub fn cql_v4_session(port: u16, credentials: Option<&str>) -> std::net::TcpStream {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut startup = vec![0, 1, 0, 11];
    startup.extend_from_slice(b"CQL_VERSION");
    startup.extend_from_slice(&[0, 5]);
    startup.extend_from_slice(b"3.0.0");
    c.write_all(&cql_request(4, 0, 0x01, &startup)).unwrap();
    let Some(credentials) = credentials else {
        assert_eq!(read_cql_frame(&mut c)[4], 0x02, "READY");
        return c;
    };
    assert_eq!(read_cql_frame(&mut c)[4], 0x03, "AUTHENTICATE");
    let token = format!("\0{}", credentials.replace(':', "\0"));
    let mut auth = (token.len() as i32).to_be_bytes().to_vec();
    auth.extend_from_slice(token.as_bytes());
    c.write_all(&cql_request(4, 0, 0x0F, &auth)).unwrap();
    assert_eq!(read_cql_frame(&mut c)[4], 0x10, "AUTH_SUCCESS");
    c
}

/// Reads one CQL frame (v3/v4 header) from `stream`: header and body.
pub fn read_cql_frame(stream: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).unwrap();
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    [header.to_vec(), body].concat()
}

/// The resident set size of process `pid`, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// A KiB figure of `/proc/<pid>/status`: `VmRSS`, `RssAnon` (heap and stacks), `RssFile`
/// (mapped files: the binary's code).
pub fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
