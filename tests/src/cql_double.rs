//! A CQL **test double**: a small in-memory server that speaks the CQL native protocol,
//! versions 4 and 5. It is *not* a database and must never be mistaken for one.
//!
//! Why it exists: no Cassandra that speaks protocol v4 or v5 (Cassandra ≥ 4) can be had on
//! the machines these tests run on; the newest real one is 2.1, which stops at v3 (see
//! `/work/shared/BACKENDS.md`). To prove that the proxy handles v4 and v5 framing, v5
//! segments and compression with *real drivers* (the python `cassandra-driver` and the Rust
//! `scylla` driver), something must answer them on the other side. This is that something:
//! it answers the handshake, the system tables drivers read when they connect, and simple
//! schema, writes and reads, through the project's own sans-IO codec
//! (`shotover_protocols::cassandra`).
//!
//! What it does:
//! - Handshake: OPTIONS → SUPPORTED (`CQL_VERSION`, `COMPRESSION` lz4 and snappy,
//!   `PROTOCOL_VERSIONS`). A frame in a version it does not speak (drivers probe with 0x42,
//!   0x41 or 6) gets the protocol error Cassandra gives, `Invalid or unsupported protocol
//!   version (66); supported versions are (4/v4, 5/v5)`, in a version the driver reads, and
//!   the connection is closed. STARTUP honours `COMPRESSION` (lz4 or snappy frame bodies in
//!   v4; in v5, LZ4 segments after READY) and answers READY, or AUTHENTICATE with
//!   `PasswordAuthenticator` when [`DoubleOptions::require_auth`] is set (SASL PLAIN in
//!   AUTH_RESPONSE → AUTH_SUCCESS). REGISTER → READY; no events are ever pushed.
//! - QUERY, PREPARE, EXECUTE and BATCH of: `CREATE KEYSPACE [IF NOT EXISTS]` (replication is
//!   stored, not acted on), `CREATE TABLE [IF NOT EXISTS]` with a single-column primary key,
//!   `DROP KEYSPACE|TABLE [IF EXISTS]`, `USE`, `INSERT INTO ... VALUES` (constants or `?`),
//!   `SELECT *|cols|count(*) FROM t [WHERE col = x|col IN (..)|col IN ? AND ...] [LIMIT n]
//!   [ALLOW FILTERING]`, and `BEGIN [UNLOGGED] BATCH` of INSERTs. DDL answers SCHEMA_CHANGE.
//!   Anything else gets a Syntax (0x2000) or Invalid (0x2200) error. Types: text, varchar,
//!   ascii, int, bigint, smallint, tinyint, varint, uuid, timeuuid, boolean, double, float,
//!   blob, timestamp, date, time, inet and list/set/map/frozen of them (decimal and duration
//!   only as bound values).
//! - System tables, made up from the catalog: `system.local`, `system.peers`,
//!   `system.peers_v2` (from [`DoubleOptions::peers`], empty by default), `system_schema.*`
//!   (keyspaces, tables, columns, types, functions, aggregates, views, indexes, triggers,
//!   dropped_columns) and `system_virtual_schema.*`, with Cassandra 4.0's columns.
//!   `release_version` is 5.0.0 (4.0.0 when it speaks only v4), the partitioner Murmur3,
//!   data center `datacenter1`, rack `rack1`; each node has one token, derived from its
//!   address. [`CqlDouble::start_cluster`] starts several nodes on 127.0.0.x that list each
//!   other as peers and share one catalog.
//!
//! What it does not do: replication, consistency, paging (every result is one page), TTLs,
//! timestamps, lightweight transactions, UPDATE, DELETE, clustering columns, user types,
//! tracing, warnings, events. It serves each connection on a std thread with blocking I/O.
//! Bytes from the network are never unwrapped: a malformed frame closes that connection
//! with a log line (and an entry in [`CqlDouble::errors`]).
//!
//! ```no_run
//! use shotover_integration_tests::cql_double::{CqlDouble, DoubleOptions};
//! let double = CqlDouble::start(); // v4 and v5, no auth, no peers
//! // ... point a driver or the proxy at double.address() (127.0.0.1:{double.port}) ...
//! assert!(double.queries().iter().any(|q| q.starts_with("SELECT * FROM system.local")));
//! assert!(double.handshakes().iter().all(|h| h.version == 5 && h.compression.as_deref() == Some("lz4")));
//! assert!(double.errors().is_empty()); // no malformed bytes reached it
//! let with_auth = CqlDouble::start_with(DoubleOptions {
//!     require_auth: Some(("cassandra".into(), "cassandra".into())),
//!     versions: vec![4],
//!     ..DoubleOptions::default()
//! });
//! let nodes = CqlDouble::start_cluster(3, DoubleOptions::default()); // 127.0.0.1-3, one port
//! ```
//! Set `CQL_DOUBLE_TRACE=1` to print every request the double receives.

mod cql;
mod engine;
mod system;
mod values;

use bytes::{Bytes, BytesMut};
use cql::{CqlError, Parsed, Statement};
use engine::{hash16, Catalog, Marker, MetadataMode, Node};
use shotover_protocols::cassandra::compression::compress_frame;
use shotover_protocols::cassandra::framing::frame_len;
use shotover_protocols::cassandra::header::{FrameHeader, RESPONSE_BIT};
use shotover_protocols::cassandra::request::{query_flags, BatchQuery, Value, Values};
use shotover_protocols::cassandra::response::{error_response, unsupported_version_response_for, ErrorBody};
use shotover_protocols::cassandra::result::{
    ColumnSpec, Prepared, PreparedMetadata, ResultBody, RowsMetadata, TableSpec,
};
use shotover_protocols::cassandra::segment::{encode_segments, SegmentDecoder};
use shotover_protocols::cassandra::{
    CassandraBody, CassandraCodecState, CassandraFrame, Compression, ErrorCode, Opcode, Version,
};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How to start a [`CqlDouble`].
#[derive(Debug, Clone)]
pub struct DoubleOptions {
    /// Require `PasswordAuthenticator` login with this user name and password.
    pub require_auth: Option<(String, String)>,
    /// The protocol versions it speaks, from 3, 4 and 5. Default: 4 and 5.
    pub versions: Vec<u8>,
    /// Other nodes to list in `system.peers` and `system.peers_v2` (address, native port).
    /// `system.peers` has one row per IP, so give peers distinct IPs for v4 drivers.
    pub peers: Vec<(IpAddr, u16)>,
}

impl Default for DoubleOptions {
    fn default() -> Self {
        DoubleOptions { require_auth: None, versions: vec![4, 5], peers: Vec::new() }
    }
}

/// One request the double received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// Protocol version of the frame.
    pub version: u8,
    /// `QUERY`, `PREPARE`, `EXECUTE` or `BATCH` (one entry per statement of a batch).
    pub kind: &'static str,
    /// The statement; for EXECUTE and prepared batch statements, the prepared text.
    pub cql: String,
}

/// One STARTUP the double accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub version: u8,
    /// The `COMPRESSION` option, lowercased.
    pub compression: Option<String>,
    /// All STARTUP options, in wire order.
    pub options: Vec<(String, String)>,
}

/// A running test double; stops (and closes its connections) on drop.
pub struct CqlDouble {
    /// The port it listens on.
    pub port: u16,
    /// The address it listens on: 127.0.0.1, or 127.0.0.x in a [`CqlDouble::start_cluster`].
    pub ip: IpAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct PreparedEntry {
    query: String,
    parsed: Parsed,
    keyspace: Option<String>,
}

struct Shared {
    /// `ip:port`, for log lines.
    address: String,
    node: Node,
    versions: Vec<Version>,
    auth: Option<(String, String)>,
    /// Shared by the nodes of a [`CqlDouble::start_cluster`].
    catalog: Arc<Mutex<Catalog>>,
    prepared: Arc<Mutex<HashMap<Bytes, Arc<PreparedEntry>>>>,
    log: Mutex<Vec<LoggedRequest>>,
    handshakes: Mutex<Vec<Handshake>>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
    connections: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    trace: bool,
}

/// A poisoned lock still holds good data here: a panic elsewhere must not stop the double.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn note_error(&self, line: String) {
        eprintln!("cql double {}: {line}", self.address);
        lock(&self.errors).push(line);
    }
}

impl CqlDouble {
    /// Starts one that speaks v4 and v5, without authentication or peers.
    pub fn start() -> CqlDouble {
        CqlDouble::start_with(DoubleOptions::default())
    }

    pub fn start_with(options: DoubleOptions) -> CqlDouble {
        let (listener, port) = (0..50)
            .find_map(|_| {
                let port = crate::free_port();
                TcpListener::bind(("127.0.0.1", port)).ok().map(|l| (l, port))
            })
            .expect("no free port for the CQL test double");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        CqlDouble::launch(options, ip, listener, port, Arc::default(), Arc::default())
    }

    /// Starts `count` doubles that act as one cluster: node `i` listens on `127.0.0.{i+1}`,
    /// all on the same port (as Cassandra nodes all use 9042); each lists the others in
    /// `system.peers` and `system.peers_v2` (after any [`DoubleOptions::peers`]), and they
    /// share one catalog and one set of prepared statements, so that a write through one node
    /// is read through any other. Tokens differ per node.
    pub fn start_cluster(count: usize, options: DoubleOptions) -> Vec<CqlDouble> {
        assert!((1..=250).contains(&count), "a cluster of 1 to 250 doubles, not {count}");
        let ips: Vec<IpAddr> = (1..=count as u8).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect();
        let (listeners, port) = (0..50)
            .find_map(|_| {
                let port = crate::free_port();
                let listeners: Vec<TcpListener> =
                    ips.iter().map_while(|ip| TcpListener::bind((*ip, port)).ok()).collect();
                (listeners.len() == count).then_some((listeners, port))
            })
            .expect("no port free on every 127.0.0.x for a cluster of CQL test doubles");
        let catalog: Arc<Mutex<Catalog>> = Arc::default();
        let prepared: Arc<Mutex<HashMap<Bytes, Arc<PreparedEntry>>>> = Arc::default();
        listeners
            .into_iter()
            .zip(&ips)
            .map(|(listener, ip)| {
                let mut node_options = options.clone();
                node_options.peers.extend(ips.iter().filter(|other| *other != ip).map(|other| (*other, port)));
                CqlDouble::launch(node_options, *ip, listener, port, catalog.clone(), prepared.clone())
            })
            .collect()
    }

    fn launch(
        options: DoubleOptions,
        ip: IpAddr,
        listener: TcpListener,
        port: u16,
        catalog: Arc<Mutex<Catalog>>,
        prepared: Arc<Mutex<HashMap<Bytes, Arc<PreparedEntry>>>>,
    ) -> CqlDouble {
        let mut versions: Vec<Version> = options
            .versions
            .iter()
            .map(|v| match v {
                3 => Version::V3,
                4 => Version::V4,
                5 => Version::V5,
                other => panic!("the CQL test double speaks protocol versions 3 to 5, not {other}"),
            })
            .collect();
        versions.sort_by_key(|v| u8::from(*v));
        versions.dedup();
        let highest = versions.last().copied().unwrap_or(Version::V4);
        let shared = Arc::new(Shared {
            address: format!("{ip}:{port}"),
            node: Node {
                address: ip,
                port,
                peers: options.peers,
                release_version: if highest >= Version::V5 { "5.0.0" } else { "4.0.0" }.into(),
                native_protocol_version: u8::from(highest).to_string(),
            },
            versions,
            auth: options.require_auth,
            catalog,
            prepared,
            log: Mutex::new(Vec::new()),
            handshakes: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            trace: std::env::var_os("CQL_DOUBLE_TRACE").is_some_and(|v| !v.is_empty() && v != "0"),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("cql-double-{port}"))
            .spawn(move || accept_loop(accept_shared, listener))
            .expect("cannot start the CQL test double's thread");
        CqlDouble { port, ip, shared, accept: Some(accept) }
    }

    /// `ip:port`, e.g. `127.0.0.1:34567`.
    pub fn address(&self) -> String {
        self.shared.address.clone()
    }

    /// Every QUERY, PREPARE, EXECUTE and BATCH statement received so far, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log).clone()
    }

    /// The CQL text of [`CqlDouble::requests`].
    pub fn queries(&self) -> Vec<String> {
        lock(&self.shared.log).iter().map(|r| r.cql.clone()).collect()
    }

    /// Every STARTUP accepted so far: which version and compression each connection chose.
    pub fn handshakes(&self) -> Vec<Handshake> {
        lock(&self.shared.handshakes).clone()
    }

    /// Connections closed because of bytes it could not read (malformed frames or segments,
    /// wrong versions mid-connection). Empty when every client behaved.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.errors).clone()
    }

    /// Forgets the requests and handshakes logged so far.
    pub fn clear_log(&self) {
        lock(&self.shared.log).clear();
        lock(&self.shared.handshakes).clear();
    }
}

impl Drop for CqlDouble {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect((self.ip, self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, stream) in lock(&self.shared.connections).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let next_id = AtomicU64::new(0);
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cql double {}: accept failed: {e}", shared.address);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.connections).insert(id, clone);
        }
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("cql-double-{}-{id}", shared.address))
            .spawn(move || serve(conn_shared, stream, id));
        match spawned {
            Ok(handle) => {
                let mut threads = lock(&shared.threads);
                threads.retain(|t| !t.is_finished());
                threads.push(handle);
            }
            Err(e) => {
                eprintln!("cql double {}: cannot start a connection thread: {e}", shared.address);
                lock(&shared.connections).remove(&id);
            }
        }
    }
}

/// Serves one connection until the client leaves, the double stops, or bad bytes arrive.
fn serve(shared: Arc<Shared>, mut stream: TcpStream, id: u64) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "an unknown peer".into());
    let mut conn = Connection::new(shared.clone());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let step = conn.on_bytes(buf.get(..n).unwrap_or_default());
        if !step.out.is_empty() && stream.write_all(&step.out).is_err() {
            break;
        }
        if let Some(close) = step.close {
            match close {
                Close::Negotiation(reason) if shared.trace => {
                    eprintln!("cql double {}: closed the connection from {peer}: {reason}", shared.address)
                }
                Close::Negotiation(_) => {}
                Close::Error(reason) => shared.note_error(format!("closed the connection from {peer}: {reason}")),
            }
            // Let the reply reach the client before the socket goes: no reset on unread bytes.
            let _ = stream.shutdown(Shutdown::Write);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            break;
        }
    }
    lock(&shared.connections).remove(&id);
}

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Close {
    /// A version the double does not speak: normal during version negotiation.
    Negotiation(String),
    /// Bytes it could not read.
    Error(String),
}

/// What to send after some bytes arrived, and whether to close afterwards.
#[derive(Debug, Default)]
struct Step {
    out: Vec<u8>,
    close: Option<Close>,
}

/// The replies to one frame.
struct Handled {
    reply: Option<Vec<u8>>,
    close: Option<Close>,
}

/// One connection's protocol state: sans-IO, fed bytes by [`serve`].
struct Connection {
    shared: Arc<Shared>,
    state: CassandraCodecState,
    segments: SegmentDecoder,
    buf: BytesMut,
    authenticated: bool,
    keyspace: Option<String>,
}

fn protocol_error(message: impl Into<String>) -> CqlError {
    CqlError { code: ErrorCode::PROTOCOL_ERROR, message: message.into(), extra: Vec::new() }
}

fn opcode_name(opcode: Opcode) -> &'static str {
    match opcode {
        Opcode::Startup => "STARTUP",
        Opcode::Options => "OPTIONS",
        Opcode::Query => "QUERY",
        Opcode::Prepare => "PREPARE",
        Opcode::Execute => "EXECUTE",
        Opcode::Register => "REGISTER",
        Opcode::Batch => "BATCH",
        Opcode::AuthResponse => "AUTH_RESPONSE",
        _ => "a response",
    }
}

fn short_bytes(b: &[u8]) -> Vec<u8> {
    let b = b.get(..usize::from(u16::MAX)).unwrap_or(b);
    let mut out = (b.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(b);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Connection {
    fn new(shared: Arc<Shared>) -> Self {
        let authenticated = shared.auth.is_none();
        Connection {
            shared,
            state: CassandraCodecState::new(),
            segments: SegmentDecoder::new(),
            buf: BytesMut::new(),
            authenticated,
            keyspace: None,
        }
    }

    fn speaks(&self, version: u8) -> bool {
        self.shared.versions.iter().any(|v| u8::from(*v) == version)
    }

    fn on_bytes(&mut self, data: &[u8]) -> Step {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if let Some(compression) = self.state.segment_compression() {
                return self.on_segments(compression, out);
            }
            let Some(&first) = self.buf.first() else {
                break;
            };
            if first & RESPONSE_BIT != 0 {
                let close = Close::Error(format!("the client sent a frame with the response bit set ({first:#04x})"));
                return Step { out, close: Some(close) };
            }
            let version = first & !RESPONSE_BIT;
            if !self.speaks(version) {
                let Some(reply) = unsupported_version_response_for(&self.buf, &self.shared.versions) else {
                    break; // fewer than 4 bytes so far
                };
                out.extend_from_slice(&reply);
                let close = Close::Negotiation(format!("protocol version {version:#04x} is not spoken here"));
                return Step { out, close: Some(close) };
            }
            match frame_len(&self.buf) {
                Ok(None) => break,
                Ok(Some(len)) => {
                    let frame = self.buf.split_to(len).freeze();
                    let handled = self.handle(frame);
                    out.extend(handled.reply.unwrap_or_default());
                    if handled.close.is_some() {
                        return Step { out, close: handled.close };
                    }
                }
                Err(e) => {
                    if let (Some(&[_, _, s0, s1]), Ok(v)) = (self.buf.first_chunk::<4>(), version_of(version)) {
                        let header = FrameHeader {
                            version: v,
                            response: false,
                            flags: 0,
                            stream_id: i16::from_be_bytes([s0, s1]),
                            opcode: Opcode::Options,
                            body_len: 0,
                        };
                        out.extend(error_response(&header, ErrorCode::PROTOCOL_ERROR, &e.to_string()));
                    }
                    return Step { out, close: Some(Close::Error(format!("malformed frame: {e}"))) };
                }
            }
        }
        Step { out, close: None }
    }

    /// v5 after the handshake: every whole segment in the buffer, answered in segments.
    fn on_segments(&mut self, compression: Compression, mut out: Vec<u8>) -> Step {
        let mut frames = Vec::new();
        let decoded = self.segments.decode(&mut self.buf, compression, &mut frames);
        let mut replies = Vec::new();
        let mut close = None;
        for frame in frames {
            let handled = self.handle(frame);
            replies.extend(handled.reply);
            if handled.close.is_some() {
                close = handled.close;
                break;
            }
        }
        if let Err(e) = encode_segments(replies.iter().map(Vec::as_slice), compression, &mut out) {
            close = close.or(Some(Close::Error(format!("cannot encode segments: {e}"))));
        }
        if let (None, Err(e)) = (&close, decoded) {
            close = Some(Close::Error(format!("malformed segment: {e}")));
        }
        Step { out, close }
    }

    /// Answers one whole frame.
    fn handle(&mut self, frame: Bytes) -> Handled {
        let header = match FrameHeader::parse(&frame) {
            Ok(h) => h,
            Err(e) => {
                return Handled { reply: None, close: Some(Close::Error(format!("malformed frame header: {e}"))) }
            }
        };
        let fail = |message: String| Handled {
            reply: Some(error_response(&header, ErrorCode::PROTOCOL_ERROR, &message)),
            close: Some(Close::Error(message)),
        };
        if header.response {
            return fail("the client sent a response frame".into());
        }
        if !self.speaks(u8::from(header.version)) {
            return fail(format!("a frame in protocol version {} inside v5 segments", u8::from(header.version)));
        }
        if let Some(v) = self.state.version.filter(|v| *v != header.version) {
            return fail(format!(
                "Invalid message version. Got v{} but previous messages on this connection had version v{}",
                u8::from(header.version),
                u8::from(v)
            ));
        }
        let parsed = match CassandraFrame::parse(&frame, self.state.frame_compression()) {
            Ok(f) => f,
            Err(e) => return fail(format!("cannot read the {}: {e}", opcode_name(header.opcode))),
        };
        let body = self.dispatch(&header, &frame, parsed.body).unwrap_or_else(|e| {
            CassandraBody::Error(ErrorBody { code: e.code, message: e.message, extra: Bytes::from(e.extra) })
        });
        let opcode = body.opcode();
        let reply = match CassandraFrame::response(&header, body).encode() {
            Ok(bytes) => bytes,
            Err(e) => error_response(&header, ErrorCode::SERVER_ERROR, &format!("the test double cannot encode: {e}")),
        };
        let handshake = matches!(opcode, Opcode::Ready | Opcode::Authenticate) && header.opcode == Opcode::Startup;
        let compression = self.state.frame_compression();
        let reply = if handshake || self.state.segments || compression == Compression::None {
            reply
        } else {
            compress_frame(&reply, compression).unwrap_or(reply)
        };
        if handshake {
            // In v5, everything after this reply travels in segments.
            self.state.on_ready();
        }
        Handled { reply: Some(reply), close: None }
    }

    fn dispatch(
        &mut self,
        header: &FrameHeader,
        frame: &Bytes,
        body: CassandraBody,
    ) -> Result<CassandraBody, CqlError> {
        let version = header.version;
        let started = self.state.version.is_some();
        let ready = || -> Result<(), CqlError> {
            if !started {
                return Err(protocol_error(format!(
                    "Unexpected message {}, expecting STARTUP or OPTIONS",
                    opcode_name(header.opcode)
                )));
            }
            Ok(())
        };
        let logged_in = |authenticated: bool| -> Result<(), CqlError> {
            ready()?;
            if !authenticated {
                return Err(protocol_error(format!(
                    "Unexpected message {}, expecting SASL_RESPONSE",
                    opcode_name(header.opcode)
                )));
            }
            Ok(())
        };
        match body {
            CassandraBody::Options => {
                let versions = self.shared.versions.iter().map(|v| format!("{0}/v{0}", u8::from(*v))).collect();
                Ok(CassandraBody::Supported(vec![
                    ("CQL_VERSION".into(), vec![system::CQL_VERSION.into()]),
                    ("COMPRESSION".into(), vec!["lz4".into(), "snappy".into()]),
                    ("PROTOCOL_VERSIONS".into(), versions),
                ]))
            }
            CassandraBody::Startup(startup) => {
                if started {
                    return Err(protocol_error("Unexpected message STARTUP, the connection is already initialized"));
                }
                self.state.on_startup(frame).map_err(|e| protocol_error(e.to_string()))?;
                lock(&self.shared.handshakes).push(Handshake {
                    version: u8::from(version),
                    compression: startup.get("COMPRESSION").map(str::to_lowercase),
                    options: startup.options.clone(),
                });
                if self.shared.auth.is_some() {
                    Ok(CassandraBody::Authenticate("org.apache.cassandra.auth.PasswordAuthenticator".into()))
                } else {
                    Ok(CassandraBody::Ready)
                }
            }
            CassandraBody::AuthResponse(token) => {
                ready()?;
                let Some((user, password)) = &self.shared.auth else {
                    return Err(protocol_error("Unexpected message AUTH_RESPONSE: no authentication is required"));
                };
                let token = token.unwrap_or_default();
                let mut parts = token.splitn(3, |b| *b == 0);
                let (_authzid, given_user, given_password) = (parts.next(), parts.next(), parts.next());
                if given_user == Some(user.as_bytes()) && given_password == Some(password.as_bytes()) {
                    self.authenticated = true;
                    Ok(CassandraBody::AuthSuccess(None))
                } else {
                    let shown = given_user.map(String::from_utf8_lossy).unwrap_or_default();
                    Err(CqlError {
                        code: ErrorCode::AUTHENTICATION_ERROR,
                        message: format!("Provided username {shown} and/or password are incorrect"),
                        extra: Vec::new(),
                    })
                }
            }
            CassandraBody::Register(_) => {
                logged_in(self.authenticated)?;
                Ok(CassandraBody::Ready)
            }
            CassandraBody::Query(query) => {
                logged_in(self.authenticated)?;
                self.log(version, "QUERY", &query.query);
                let parsed = cql::parse(&query.query)?;
                let session = query.params.keyspace.clone().or_else(|| self.keyspace.clone());
                let skip = query.params.flags & query_flags::SKIP_METADATA != 0;
                let mode = if skip { MetadataMode::Skip } else { MetadataMode::Full };
                let result = {
                    let mut catalog = lock(&self.shared.catalog);
                    let markers = catalog.markers(&parsed, session.as_deref(), &self.shared.node)?;
                    let values = positional(query.params.values, &markers)?;
                    catalog.execute(&parsed, session.as_deref(), &values, &self.shared.node, mode)?
                };
                if let ResultBody::SetKeyspace(ks) = &result {
                    self.keyspace = Some(ks.clone());
                }
                Ok(CassandraBody::Result(result))
            }
            CassandraBody::Prepare(prepare) => {
                logged_in(self.authenticated)?;
                self.log(version, "PREPARE", &prepare.query);
                let parsed = cql::parse(&prepare.query)?;
                if matches!(parsed.statement, Statement::Use(_)) {
                    return Err(CqlError::invalid("USE statements cannot be prepared"));
                }
                let keyspace = prepare.keyspace.clone().or_else(|| self.keyspace.clone());
                let (markers, result_columns) = {
                    let catalog = lock(&self.shared.catalog);
                    let markers = catalog.markers(&parsed, keyspace.as_deref(), &self.shared.node)?;
                    (markers, catalog.result_columns(&parsed, keyspace.as_deref(), &self.shared.node)?)
                };
                let id = Bytes::copy_from_slice(&hash16(&[
                    keyspace.as_deref().unwrap_or_default().as_bytes(),
                    prepare.query.as_bytes(),
                ]));
                let result_metadata = match &result_columns {
                    Some((ks, table, columns)) => RowsMetadata::for_table(ks, table, columns.clone()),
                    None => RowsMetadata::without_columns(0),
                };
                let prepared = Prepared {
                    id: id.clone(),
                    result_metadata_id: (version >= Version::V5).then(|| result_metadata_id(&result_metadata)),
                    metadata: prepared_metadata(&markers),
                    result_metadata,
                };
                let entry = PreparedEntry { query: prepare.query, parsed, keyspace };
                lock(&self.shared.prepared).insert(id, Arc::new(entry));
                Ok(CassandraBody::Result(ResultBody::Prepared(prepared)))
            }
            CassandraBody::Execute(execute) => {
                logged_in(self.authenticated)?;
                let entry = self.prepared(&execute.id)?;
                self.log(version, "EXECUTE", &entry.query);
                let keyspace = entry.keyspace.as_deref();
                let mut catalog = lock(&self.shared.catalog);
                let node = &self.shared.node;
                let markers = catalog.markers(&entry.parsed, keyspace, node)?;
                let values = positional(execute.params.values, &markers)?;
                let current = catalog
                    .result_columns(&entry.parsed, keyspace, node)?
                    .map(|(ks, table, columns)| result_metadata_id(&RowsMetadata::for_table(ks, table, columns)));
                let mode = match (&execute.result_metadata_id, current) {
                    (Some(theirs), Some(ours)) if version >= Version::V5 && *theirs != ours => {
                        MetadataMode::Changed(ours)
                    }
                    _ if execute.params.flags & query_flags::SKIP_METADATA != 0 => MetadataMode::Skip,
                    _ => MetadataMode::Full,
                };
                Ok(CassandraBody::Result(catalog.execute(&entry.parsed, keyspace, &values, node, mode)?))
            }
            CassandraBody::Batch(batch) => {
                logged_in(self.authenticated)?;
                if batch.kind == 2 {
                    return Err(CqlError::unsupported("counter batches"));
                }
                let session = batch.keyspace.clone().or_else(|| self.keyspace.clone());
                let mut statements = Vec::new();
                for statement in batch.statements {
                    let (text, parsed, keyspace) = match statement.query {
                        BatchQuery::Query(text) => {
                            let parsed = cql::parse(&text);
                            (text, parsed, session.clone())
                        }
                        BatchQuery::Prepared(id) => {
                            let entry = self.prepared(&id)?;
                            (entry.query.clone(), Ok(entry.parsed.clone()), entry.keyspace.clone())
                        }
                    };
                    self.log(version, "BATCH", &text);
                    statements.push((parsed?, keyspace, statement.values));
                }
                let mut catalog = lock(&self.shared.catalog);
                let node = &self.shared.node;
                let mut checked = Vec::new();
                for (parsed, keyspace, values) in statements {
                    let Statement::Insert(insert) = &parsed.statement else {
                        return Err(CqlError::invalid(
                            "Invalid statement in batch: only UPDATE, INSERT and DELETE statements are allowed.",
                        ));
                    };
                    let markers = catalog.markers(&parsed, keyspace.as_deref(), node)?;
                    let values = positional(Some(values), &markers)?;
                    catalog.check_values(&parsed, &markers, &values)?;
                    checked.push((insert.clone(), keyspace, values));
                }
                catalog.apply_batch(checked.iter().map(|(i, ks, v)| (i, ks.as_deref(), v.as_slice())))?;
                Ok(CassandraBody::Result(ResultBody::Void))
            }
            other => Err(protocol_error(format!("a client sent a {:?} frame", other.opcode()))),
        }
    }

    fn prepared(&self, id: &Bytes) -> Result<Arc<PreparedEntry>, CqlError> {
        lock(&self.shared.prepared).get(id).cloned().ok_or_else(|| CqlError {
            code: ErrorCode::UNPREPARED,
            message: format!("Prepared query with ID {} not found", hex(id)),
            extra: short_bytes(id),
        })
    }

    fn log(&self, version: Version, kind: &'static str, cql: &str) {
        if self.shared.trace {
            eprintln!("cql double {} v{} {kind} {cql}", self.shared.address, u8::from(version));
        }
        lock(&self.shared.log).push(LoggedRequest { version: u8::from(version), kind, cql: cql.to_string() });
    }
}

fn version_of(byte: u8) -> Result<Version, ()> {
    match byte {
        3 => Ok(Version::V3),
        4 => Ok(Version::V4),
        5 => Ok(Version::V5),
        _ => Err(()),
    }
}

/// Bound values by position: named values are matched to the markers' names.
fn positional(values: Option<Values>, markers: &[Marker]) -> Result<Vec<Value>, CqlError> {
    match values {
        None => Ok(Vec::new()),
        Some(Values::Positional(v)) => Ok(v),
        Some(Values::Named(named)) => markers
            .iter()
            .map(|m| {
                named
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(&m.name))
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| CqlError::invalid(format!("No value for bind marker {}", m.name)))
            })
            .collect(),
    }
}

fn prepared_metadata(markers: &[Marker]) -> PreparedMetadata {
    let first = markers.first().map(|m| (m.keyspace.clone(), m.table.clone()));
    let global = first.filter(|(ks, t)| markers.iter().all(|m| &m.keyspace == ks && &m.table == t));
    let columns = markers
        .iter()
        .map(|m| ColumnSpec {
            table_spec: match global {
                Some(_) => None,
                None => Some(TableSpec { keyspace: m.keyspace.clone(), table: m.table.clone() }),
            },
            name: m.name.clone(),
            col_type: m.ty.clone(),
        })
        .collect();
    PreparedMetadata {
        flags: 0,
        pk_indexes: markers.iter().enumerate().filter(|(_, m)| m.pk).map(|(i, _)| i as u16).collect(),
        global_table_spec: global.map(|(keyspace, table)| TableSpec { keyspace, table }),
        columns,
    }
}

/// The v5 result metadata id: a digest of the result's columns.
fn result_metadata_id(metadata: &RowsMetadata) -> Bytes {
    let parts: Vec<String> = metadata.columns.iter().map(|c| format!("{}:{:?}", c.name, c.col_type)).collect();
    let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    Bytes::copy_from_slice(&hash16(&refs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shotover_protocols::cassandra::request::{Query, QueryParams, Startup};
    use shotover_protocols::cassandra::Consistency;

    fn test_shared(options: DoubleOptions) -> Arc<Shared> {
        // A double whose connections are driven by hand, without sockets.
        let double = CqlDouble::start_with(options);
        double.shared.clone()
    }

    fn request(version: Version, stream: i16, body: CassandraBody) -> Vec<u8> {
        let header =
            FrameHeader { version, response: false, flags: 0, stream_id: stream, opcode: body.opcode(), body_len: 0 };
        let mut f = CassandraFrame::response(&header, body);
        f.response = false;
        f.encode().unwrap()
    }

    fn replies(bytes: &[u8]) -> Vec<CassandraFrame> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Ok(Some(len)) = frame_len(rest) {
            out.push(CassandraFrame::parse(&Bytes::copy_from_slice(&rest[..len]), Compression::None).unwrap());
            rest = &rest[len..];
        }
        assert!(rest.is_empty(), "left over: {rest:?}");
        out
    }

    fn query(cql: &str) -> CassandraBody {
        CassandraBody::Query(Query { query: cql.into(), params: QueryParams::new(Consistency::One) })
    }

    fn startup(compression: Option<&str>) -> CassandraBody {
        let mut options = vec![("CQL_VERSION".to_string(), "3.0.0".to_string())];
        options.extend(compression.map(|c| ("COMPRESSION".to_string(), c.to_string())));
        CassandraBody::Startup(Startup { options })
    }

    #[test]
    fn handshake_and_statements_v4() {
        let mut conn = Connection::new(test_shared(DoubleOptions::default()));
        let step = conn.on_bytes(&request(Version::V4, 0, CassandraBody::Options));
        assert!(matches!(replies(&step.out)[0].body, CassandraBody::Supported(_)));
        let step = conn.on_bytes(&request(Version::V4, 1, startup(None)));
        assert_eq!(replies(&step.out)[0].body, CassandraBody::Ready);
        let mut all = Vec::new();
        for cql in [
            "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            "CREATE TABLE ks.t (k text PRIMARY KEY, v int, b blob, u uuid, ts timestamp, ok boolean, d double, n bigint)",
            "INSERT INTO ks.t (k, v, b, u, ts, ok, d, n) VALUES ('a', 1, 0x01, 123e4567-e89b-12d3-a456-426614174000, '2024-01-01', true, 1.5, 7)",
            "INSERT INTO ks.t (k, v) VALUES ('b', 2)",
            "INSERT INTO ks.t (k, v) VALUES ('a', 3)",
            "USE ks",
            "SELECT k, v FROM t WHERE k = 'a'",
            "SELECT count(*) FROM t",
            "SELECT * FROM t WHERE v = 2",
            "UPDATE t SET v = 1 WHERE k = 'a'",
            "CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        ] {
            all.extend(conn.on_bytes(&request(Version::V4, 2, query(cql))).out);
        }
        let r = replies(&all);
        let change = |f: &CassandraFrame| matches!(&f.body, CassandraBody::Result(ResultBody::SchemaChange(c)) if c.change_type == "CREATED");
        assert!(change(&r[0]) && change(&r[1]), "{r:?}");
        assert_eq!(r[2].body, CassandraBody::Result(ResultBody::Void));
        assert_eq!(r[5].body, CassandraBody::Result(ResultBody::SetKeyspace("ks".into())));
        let CassandraBody::Result(ResultBody::Rows(rows)) = &r[6].body else { panic!("{r:?}") };
        assert_eq!(rows.rows, vec![vec![values::text("a"), values::int(3)]]);
        let CassandraBody::Result(ResultBody::Rows(rows)) = &r[7].body else { panic!("{r:?}") };
        assert_eq!(rows.rows, vec![vec![values::bigint(2)]]);
        let CassandraBody::Error(e) = &r[8].body else { panic!("{r:?}") };
        assert_eq!(e.code, ErrorCode::INVALID, "filtering on a regular column needs ALLOW FILTERING");
        let CassandraBody::Error(e) = &r[9].body else { panic!("{r:?}") };
        assert_eq!(e.code, ErrorCode::INVALID);
        let CassandraBody::Error(e) = &r[10].body else { panic!("{r:?}") };
        assert_eq!(e.code, ErrorCode::ALREADY_EXISTS);
        assert_eq!(&e.extra[..], &[0, 2, b'k', b's', 0, 0]);
    }

    #[test]
    fn version_negotiation() {
        let shared = test_shared(DoubleOptions::default());
        for probe in [0x42u8, 0x41, 0x06, 0x03] {
            let mut conn = Connection::new(shared.clone());
            let step = conn.on_bytes(&[probe, 0, 0, 0, 0x05, 0, 0, 0, 0]);
            assert!(matches!(step.close, Some(Close::Negotiation(_))), "{probe:#x}");
            let h = FrameHeader::parse(&step.out).unwrap();
            assert_eq!(h.opcode, Opcode::Error);
            let text = String::from_utf8_lossy(&step.out[15..]).into_owned();
            assert!(text.ends_with("supported versions are (4/v4, 5/v5)"), "{text}");
        }
        // A version byte alone waits for more.
        let mut conn = Connection::new(shared.clone());
        let step = conn.on_bytes(&[0x42]);
        assert!(step.out.is_empty() && step.close.is_none());
    }

    #[test]
    fn v5_segments_and_auth() {
        let shared = test_shared(DoubleOptions {
            require_auth: Some(("user".into(), "pass".into())),
            ..DoubleOptions::default()
        });
        let mut conn = Connection::new(shared);
        let step = conn.on_bytes(&request(Version::V5, 1, startup(Some("lz4"))));
        assert!(matches!(replies(&step.out)[0].body, CassandraBody::Authenticate(_)));
        assert_eq!(conn.state.segment_compression(), Some(Compression::Lz4));
        // Before logging in, queries are refused.
        let mut wire = Vec::new();
        let q = request(Version::V5, 2, query("SELECT * FROM system.local"));
        let bad = request(Version::V5, 3, CassandraBody::AuthResponse(Some(Bytes::from_static(b"\0user\0nope"))));
        let good = request(Version::V5, 4, CassandraBody::AuthResponse(Some(Bytes::from_static(b"\0user\0pass"))));
        encode_segments([&q[..], &bad[..], &good[..], &q[..]], Compression::Lz4, &mut wire).unwrap();
        // Fed a byte at a time, as a slow network would.
        let mut out = Vec::new();
        for b in &wire {
            let step = conn.on_bytes(std::slice::from_ref(b));
            assert!(step.close.is_none());
            out.extend(step.out);
        }
        let mut frames = Vec::new();
        SegmentDecoder::new().decode(&mut BytesMut::from(&out[..]), Compression::Lz4, &mut frames).unwrap();
        let bodies: Vec<CassandraBody> =
            frames.iter().map(|f| CassandraFrame::parse(f, Compression::None).unwrap().body).collect();
        assert!(matches!(&bodies[0], CassandraBody::Error(e) if e.code == ErrorCode::PROTOCOL_ERROR));
        assert!(matches!(&bodies[1], CassandraBody::Error(e) if e.code == ErrorCode::AUTHENTICATION_ERROR));
        assert_eq!(bodies[2], CassandraBody::AuthSuccess(None));
        assert!(matches!(&bodies[3], CassandraBody::Result(ResultBody::Rows(r)) if r.rows.len() == 1));
    }

    #[test]
    fn garbage_closes_without_panicking() {
        let shared = test_shared(DoubleOptions::default());
        // A deterministic spread of garbage after a valid handshake, in v4 and v5.
        let mut seed = 0x9e37_79b9_u32;
        for round in 0..400 {
            let mut conn = Connection::new(shared.clone());
            let version = if round % 2 == 0 { Version::V4 } else { Version::V5 };
            let compression = ["lz4", "snappy"][round % 2];
            let compression = if version == Version::V5 { "lz4" } else { compression };
            conn.on_bytes(&request(version, 1, startup(Some(compression))));
            let mut frame = request(version, 2, query("SELECT * FROM system.local WHERE key = 'local'"));
            if version == Version::V4 {
                frame = compress_frame(&frame, Compression::from_startup_option(Some(compression)).unwrap()).unwrap();
            } else {
                let mut wire = Vec::new();
                encode_segments([&frame[..]], Compression::Lz4, &mut wire).unwrap();
                frame = wire;
            }
            for _ in 0..1 + round % 4 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let at = seed as usize % frame.len();
                frame[at] ^= (seed >> 8) as u8 | 1;
            }
            let cut = if round % 5 == 0 { seed as usize % frame.len() } else { frame.len() };
            let _ = conn.on_bytes(&frame[..cut]);
            let _ = conn.on_bytes(&frame);
        }
    }

    #[test]
    fn prepared_and_batch_v5() {
        let mut conn = Connection::new(test_shared(DoubleOptions::default()));
        conn.on_bytes(&request(Version::V5, 1, startup(None)));
        assert!(conn.state.segments);
        let mut send = |body: CassandraBody| -> CassandraBody {
            let mut wire = Vec::new();
            encode_segments([&request(Version::V5, 9, body)[..]], Compression::None, &mut wire).unwrap();
            let step = conn.on_bytes(&wire);
            let mut frames = Vec::new();
            SegmentDecoder::new().decode(&mut BytesMut::from(&step.out[..]), Compression::None, &mut frames).unwrap();
            CassandraFrame::parse(&frames[0], Compression::None).unwrap().body
        };
        send(query("CREATE KEYSPACE ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"));
        send(query("CREATE TABLE ks.t (k int PRIMARY KEY, v text)"));
        let CassandraBody::Result(ResultBody::Prepared(insert)) =
            send(CassandraBody::Prepare(shotover_protocols::cassandra::request::Prepare {
                query: "INSERT INTO ks.t (v, k) VALUES (?, ?)".into(),
                keyspace: None,
            }))
        else {
            panic!()
        };
        assert_eq!(insert.metadata.pk_indexes, vec![1]);
        assert_eq!(insert.metadata.columns[0].name, "v");
        let batch = shotover_protocols::cassandra::request::Batch {
            kind: 1,
            statements: vec![
                shotover_protocols::cassandra::request::BatchStatement {
                    query: BatchQuery::Prepared(insert.id.clone()),
                    values: Values::Positional(vec![
                        Value::Bytes(Bytes::from_static(b"one")),
                        Value::Bytes(Bytes::from_static(&[0, 0, 0, 1])),
                    ]),
                },
                shotover_protocols::cassandra::request::BatchStatement {
                    query: BatchQuery::Query("INSERT INTO ks.t (k, v) VALUES (2, 'two')".into()),
                    values: Values::Positional(vec![]),
                },
            ],
            consistency: Consistency::One,
            flags: 0,
            serial_consistency: None,
            timestamp: None,
            keyspace: None,
            now_in_seconds: None,
        };
        assert_eq!(send(CassandraBody::Batch(batch)), CassandraBody::Result(ResultBody::Void));
        let CassandraBody::Result(ResultBody::Prepared(select)) =
            send(CassandraBody::Prepare(shotover_protocols::cassandra::request::Prepare {
                query: "SELECT v FROM t WHERE k IN ?".into(),
                keyspace: Some("ks".into()),
            }))
        else {
            panic!()
        };
        let list = values::collection(&[values::int(1), values::int(2), values::int(3)]).unwrap();
        let mut params = QueryParams::new(Consistency::One);
        params.values = Some(Values::Positional(vec![Value::Bytes(list)]));
        params.flags = query_flags::SKIP_METADATA;
        let execute = |id: &Prepared, params: QueryParams, metadata_id: Option<Bytes>| {
            CassandraBody::Execute(shotover_protocols::cassandra::request::Execute {
                id: id.id.clone(),
                result_metadata_id: metadata_id,
                params,
            })
        };
        let CassandraBody::Result(ResultBody::Rows(rows)) =
            send(execute(&select, params.clone(), select.result_metadata_id.clone()))
        else {
            panic!()
        };
        assert_eq!(rows.rows, vec![vec![values::text("one")], vec![values::text("two")]]);
        assert!(rows.metadata.columns.is_empty(), "SKIP_METADATA honoured");
        // An out-of-date result metadata id gets the new one and full metadata.
        let CassandraBody::Result(ResultBody::Rows(rows)) =
            send(execute(&select, params, Some(Bytes::from_static(b"old"))))
        else {
            panic!()
        };
        assert_eq!(rows.metadata.new_metadata_id, select.result_metadata_id);
        assert_eq!(rows.metadata.columns.len(), 1);
        // An unknown id is UNPREPARED, with the id.
        let unknown = Prepared { id: Bytes::from_static(b"nope"), ..select };
        let CassandraBody::Error(e) = send(execute(&unknown, QueryParams::new(Consistency::One), None)) else {
            panic!()
        };
        assert_eq!((e.code, &e.extra[..]), (ErrorCode::UNPREPARED, &[0, 4, b'n', b'o', b'p', b'e'][..]));
    }
}
