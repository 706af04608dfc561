//! The control connection: one per worker core, to one node of the cluster.
//!
//! - It opens once a client has completed its handshake, replaying that client's STARTUP
//!   and credentials, so that it works with authentication on.
//! - It reads `system.local`, `system.peers_v2` (else `system.peers`) and the keyspaces'
//!   replication, builds the [`Ring`], and registers for topology, status and schema events.
//! - Events, a node that stops answering and a prepared statement whose partition key the
//!   PREPARED answer did not give (protocol v3) make it read again.
//! - When it fails it reconnects to another known node, or a first contact point.

use super::topology::{Node, Replication, Ring};
use super::Shared;
use crate::rt::local_channel::Receiver;
use crate::sinks::cassandra::CassandraConnection;
use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use shotover_protocols::cassandra::cells;
use shotover_protocols::cassandra::frame::{CassandraBody, CassandraFrame};
use shotover_protocols::cassandra::header;
use shotover_protocols::cassandra::request::{Query, QueryParams, Register};
use shotover_protocols::cassandra::response::Event;
use shotover_protocols::cassandra::result::{ResultBody, Rows};
use shotover_protocols::cassandra::{Consistency, Opcode, Version};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Weak;
use std::time::{Duration, Instant};

/// What the transforms ask of the control connection.
pub enum ControlRequest {
    /// A client's handshake is complete: the session to open the control connection with.
    Session { startup: Bytes, auth: Vec<Bytes> },
    /// Read the topology again (a node stopped answering).
    Refresh,
    /// Find the partition key columns of a table (for protocol v3 prepared statements).
    PartitionKey { keyspace: String, table: String },
    /// Wait until every node that is up reports the same schema version: `version`, the
    /// one the node that ran the change reported, when known. `ticket` is the number
    /// [`Shared::agreed`] is asked about.
    SchemaAgreement { ticket: u64, version: Option<Vec<u8>> },
}

/// How often schema versions are read while they differ, and for how long at most.
const AGREEMENT_POLL: Duration = Duration::from_millis(100);
const AGREEMENT_LIMIT: Duration = Duration::from_secs(5);

/// Pause between attempts when no node can be reached.
const RETRY: Duration = Duration::from_secs(1);

/// How long the control connection may be quiet before it asks the node for OPTIONS, and
/// how long the node has to answer one of its requests when the sink has no
/// `read_timeout`: a control connection gone half-open (the node's host vanished, a
/// firewall dropped it) is found and replaced, instead of leaving the ring unwatched.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(10);
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The stream id of the control connection's own requests; events come on -1.
const STREAM: i16 = 1;
/// How many times, a [`RETRY`] apart, a ring with a node still joining is read again before
/// the proxy waits for the next event instead.
const INCOMPLETE_READS: u32 = 30;

struct Control {
    conn: CassandraConnection,
    address: SocketAddr,
    /// When it was opened: one lost after serving a while does not mark its node down.
    opened_at: Instant,
    /// How long an answer may take (the sink's `read_timeout`, else [`ANSWER_WITHIN`]).
    answer_within: Duration,
    version: Version,
    frames: Vec<Bytes>,
    /// Events read while waiting for an answer.
    events: Vec<Event>,
}

impl Control {
    async fn open(shared: &Shared, address: SocketAddr, startup: &Bytes, auth: &[Bytes]) -> Result<Self> {
        let tls = shared.tls_for(address);
        let conn = CassandraConnection::connect(address, shared.connect_timeout, tls.as_ref()).await?;
        let version = header::version(startup)?;
        let answer_within = shared.read_timeout.unwrap_or(ANSWER_WITHIN);
        let opened_at = Instant::now();
        let mut control =
            Control { conn, address, opened_at, answer_within, version, frames: Vec::new(), events: Vec::new() };
        for frame in std::iter::once(startup).chain(auth) {
            let answer = control.request_raw(frame).await?;
            if header::opcode(&answer)? == Opcode::Error {
                bail!("the node refused the session: {}", control.error_text(&answer));
            }
        }
        Ok(control)
    }

    fn error_text(&self, frame: &Bytes) -> String {
        match CassandraFrame::parse(frame, self.conn.compression()).map(|f| f.body) {
            Ok(CassandraBody::Error(e)) => e.message,
            _ => "an unreadable error".into(),
        }
    }

    /// Sends one frame on [`STREAM`] and waits for its answer, keeping events for later;
    /// an error when none comes within `answer_within`.
    async fn request_raw(&mut self, frame: &[u8]) -> Result<Bytes> {
        let limit = self.answer_within;
        let answer = async { Some(self.request_unbounded(frame).await) };
        let late = async {
            crate::rt::sleep(limit).await;
            None
        };
        match futures_lite::future::or(answer, late).await {
            Some(answer) => answer,
            None => bail!("no answer within {limit:?}"),
        }
    }

    async fn request_unbounded(&mut self, frame: &[u8]) -> Result<Bytes> {
        let mut copy = frame.to_vec();
        header::set_stream_id(&mut copy, STREAM)?;
        self.conn.send(&[Bytes::from(copy)]).await?;
        loop {
            let mut answer = None;
            for frame in std::mem::take(&mut self.frames) {
                if answer.is_none() && header::stream_id(&frame)? == STREAM {
                    answer = Some(frame);
                } else {
                    self.keep_event(&frame);
                }
            }
            if let Some(answer) = answer {
                return Ok(answer);
            }
            self.conn.next_frames(&mut self.frames).await?;
        }
    }

    fn keep_event(&mut self, frame: &Bytes) {
        if let Ok(CassandraBody::Event(event)) = CassandraFrame::parse(frame, self.conn.compression()).map(|f| f.body) {
            self.events.push(event);
        }
    }

    fn frame(&self, body: CassandraBody) -> Result<Vec<u8>> {
        let frame = CassandraFrame {
            version: self.version,
            response: false,
            flags: 0,
            stream_id: STREAM,
            tracing_id: None,
            warnings: Vec::new(),
            custom_payload: None,
            body,
        };
        Ok(frame.encode()?)
    }

    /// Runs a query and returns its rows.
    async fn query(&mut self, cql: &str) -> Result<Rows> {
        let frame = self.frame(CassandraBody::Query(Query {
            query: cql.to_string(),
            params: QueryParams::new(Consistency::One),
        }))?;
        let answer = self.request_raw(&frame).await?;
        match CassandraFrame::parse(&answer, self.conn.compression())?.body {
            CassandraBody::Result(ResultBody::Rows(rows)) => Ok(rows),
            CassandraBody::Error(e) => bail!("{cql}: {}", e.message),
            other => bail!("{cql}: unexpected answer {:?}", other.opcode()),
        }
    }

    async fn register(&mut self) -> Result<()> {
        let events = ["TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE"].map(String::from).to_vec();
        let frame = self.frame(CassandraBody::Register(Register { events }))?;
        let answer = self.request_raw(&frame).await?;
        match header::opcode(&answer)? {
            Opcode::Ready => Ok(()),
            _ => bail!("REGISTER refused: {}", self.error_text(&answer)),
        }
    }

    /// Reads the nodes and the keyspaces' replication.
    async fn read_ring(&mut self, local_dc: &str) -> Result<Ring> {
        let local = self.query("SELECT * FROM system.local").await?;
        let mut nodes = vec![node_from_row(&local, 0, Some(self.address), self.address.port())
            .ok_or_else(|| anyhow!("system.local has no usable row"))?];
        let peers = match self.query("SELECT * FROM system.peers_v2").await {
            Ok(rows) => rows,
            Err(_) => self.query("SELECT * FROM system.peers").await?,
        };
        nodes.extend((0..peers.rows.len()).filter_map(|r| node_from_row(&peers, r, None, self.address.port())));
        let keyspaces = self.read_keyspaces().await?;
        Ok(Ring::new(nodes, &keyspaces, local_dc))
    }

    async fn read_keyspaces(&mut self) -> Result<HashMap<String, Replication>> {
        let mut out = HashMap::new();
        if let Ok(rows) = self.query("SELECT keyspace_name, replication FROM system_schema.keyspaces").await {
            for r in 0..rows.rows.len() {
                let (Some(name), Some(options)) = (text_cell(&rows, r, "keyspace_name"), cell(&rows, r, "replication"))
                else {
                    continue;
                };
                let options = cells::text_map(options).unwrap_or_default();
                let class = options.iter().find(|(k, _)| k == "class").map(|(_, v)| v.clone()).unwrap_or_default();
                out.insert(name, Replication::from_options(&class, &options));
            }
            return Ok(out);
        }
        // Cassandra 2.x keeps replication as a class and a JSON object of options.
        let rows =
            self.query("SELECT keyspace_name, strategy_class, strategy_options FROM system.schema_keyspaces").await?;
        for r in 0..rows.rows.len() {
            let (Some(name), Some(class)) =
                (text_cell(&rows, r, "keyspace_name"), text_cell(&rows, r, "strategy_class"))
            else {
                continue;
            };
            let options: HashMap<String, String> = text_cell(&rows, r, "strategy_options")
                .and_then(|json| serde_yaml_ng::from_str(&json).ok())
                .unwrap_or_default();
            out.insert(name, Replication::from_options(&class, &options.into_iter().collect::<Vec<_>>()));
        }
        Ok(out)
    }

    /// Waits until the nodes that are up agree on the schema version (at most
    /// [`AGREEMENT_LIMIT`]), as drivers do after a schema change. With `want`, the version
    /// the node that made the change had right after it, agreement counts when it is on
    /// `want`, or on a version this node moved to since the first look: right after the
    /// change every node can still agree on the old version, and other clients' changes can
    /// move all of them past `want` before they are seen agreeing on it.
    async fn await_agreement(&mut self, shared: &Weak<Shared>, want: Option<&[u8]>) -> Result<()> {
        let start = std::time::Instant::now();
        let mut first: Option<Option<Vec<u8>>> = None;
        loop {
            let local = self.query("SELECT schema_version FROM system.local").await?;
            let peers = self.query("SELECT peer, rpc_address, schema_version FROM system.peers").await?;
            let mine = cell(&local, 0, "schema_version").map(<[u8]>::to_vec);
            let up = |r: usize| {
                let ip = cell(&peers, r, "rpc_address").and_then(cells::inet).filter(|ip| !ip.is_unspecified());
                let ip = ip.or_else(|| cell(&peers, r, "peer").and_then(cells::inet));
                let strong = shared.upgrade();
                ip.is_some_and(|ip| strong.is_some_and(|s| s.is_up(SocketAddr::new(ip, self.address.port()))))
            };
            let first = first.get_or_insert_with(|| mine.clone());
            let agreed = want.is_none_or(|want| mine.as_deref() == Some(want) || mine != *first)
                && (0..peers.rows.len())
                    .filter(|&r| up(r))
                    .all(|r| cell(&peers, r, "schema_version").map(<[u8]>::to_vec) == mine);
            if agreed {
                return Ok(());
            }
            if start.elapsed() >= AGREEMENT_LIMIT {
                tracing::warn!(
                    "CassandraSinkCluster: the nodes did not agree on the schema within {AGREEMENT_LIMIT:?}"
                );
                return Ok(());
            }
            crate::rt::sleep(AGREEMENT_POLL).await;
        }
    }

    /// The partition key columns of a table, in key order.
    async fn partition_key(&mut self, keyspace: &str, table: &str) -> Result<Vec<String>> {
        let (ks, t) = (keyspace.replace('\'', "''"), table.replace('\'', "''"));
        let modern = format!(
            "SELECT column_name, kind, position FROM system_schema.columns WHERE keyspace_name = '{ks}' AND table_name = '{t}'"
        );
        let mut key: Vec<(i32, String)> = Vec::new();
        if let Ok(rows) = self.query(&modern).await {
            for r in 0..rows.rows.len() {
                if text_cell(&rows, r, "kind").as_deref() == Some("partition_key") {
                    let position = cell(&rows, r, "position").and_then(cells::int).unwrap_or(0);
                    key.extend(text_cell(&rows, r, "column_name").map(|c| (position, c)));
                }
            }
        } else {
            let old = format!(
                "SELECT column_name, type, component_index FROM system.schema_columns WHERE keyspace_name = '{ks}' AND columnfamily_name = '{t}'"
            );
            let rows = self.query(&old).await?;
            for r in 0..rows.rows.len() {
                if text_cell(&rows, r, "type").as_deref() == Some("partition_key") {
                    let position = cell(&rows, r, "component_index").and_then(cells::int).unwrap_or(0);
                    key.extend(text_cell(&rows, r, "column_name").map(|c| (position, c)));
                }
            }
        }
        key.sort();
        Ok(key.into_iter().map(|(_, c)| c).collect())
    }
}

fn cell<'a>(rows: &'a Rows, row: usize, column: &str) -> Option<&'a [u8]> {
    rows.cell(row, rows.column_index(column)?)?.map(|b| &b[..])
}

fn text_cell(rows: &Rows, row: usize, column: &str) -> Option<String> {
    cells::text(cell(rows, row, column)?).map(str::to_string)
}

/// A node from a `system.local` or `system.peers(_v2)` row. `connected` is the address the
/// control connection used (the local row's node); peers listen on `native_port` (v2) or
/// on the same port as the node connected to.
fn node_from_row(rows: &Rows, r: usize, connected: Option<SocketAddr>, port: u16) -> Option<Node> {
    let ip = |column: &str| cell(rows, r, column).and_then(cells::inet).filter(|ip: &IpAddr| !ip.is_unspecified());
    let address = match connected {
        Some(address) => address,
        None => {
            let ip = ip("native_address").or_else(|| ip("rpc_address")).or_else(|| ip("peer"))?;
            let native_port = cell(rows, r, "native_port").and_then(cells::int).and_then(|p| u16::try_from(p).ok());
            SocketAddr::new(ip, native_port.unwrap_or(port))
        }
    };
    let tokens = cell(rows, r, "tokens")
        .and_then(cells::text_set)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    Some(Node {
        address,
        data_center: text_cell(rows, r, "data_center").unwrap_or_default(),
        rack: text_cell(rows, r, "rack").unwrap_or_default(),
        tokens,
    })
}

/// The control connection's task; ends when the transforms of its chain are gone.
pub async fn run(shared: Weak<Shared>, requests: Receiver<ControlRequest>) {
    let mut session: Option<(Bytes, Vec<Bytes>)> = None;
    let mut wanted_keys: Vec<(String, String)> = Vec::new();
    let mut agreement = Vec::new();
    loop {
        // Wait for a session to open with.
        while session.is_none() {
            match requests.recv().await {
                Some(ControlRequest::Session { startup, auth }) => session = Some((startup, auth)),
                Some(ControlRequest::PartitionKey { keyspace, table }) => wanted_keys.push((keyspace, table)),
                Some(ControlRequest::Refresh) => {}
                // Checked once the connection is open.
                Some(ControlRequest::SchemaAgreement { ticket, version }) => agreement.push((ticket, version)),
                None => return,
            }
        }
        let Some((startup, auth)) = session.clone() else { continue };
        let Some(strong) = shared.upgrade() else { return };
        let mut control = None;
        for address in strong.control_candidates() {
            match Control::open(&strong, address, &startup, &auth).await {
                Ok(c) => {
                    control = Some(c);
                    break;
                }
                Err(e) => {
                    tracing::warn!("CassandraSinkCluster: control connection to {address} failed: {e:#}");
                    strong.mark_down(address);
                }
            }
        }
        drop(strong);
        let Some(mut control) = control else {
            crate::rt::sleep(RETRY).await;
            continue;
        };
        if let Err(e) = serve(&shared, &requests, &mut control, &mut wanted_keys, std::mem::take(&mut agreement)).await
        {
            tracing::warn!("CassandraSinkCluster: control connection to {} lost: {e:#}", control.address);
            // As for the data connections: one that served a while is replaced at once
            // (the node is tried first again), one that failed soon marks its node down.
            if control.opened_at.elapsed() < super::shared::DOWN_FOR {
                if let Some(strong) = shared.upgrade() {
                    strong.mark_down(control.address);
                }
            }
            crate::rt::sleep(RETRY / 10).await;
        }
        if shared.upgrade().is_none() {
            return;
        }
    }
}

/// Keeps the ring current over one control connection until it fails.
async fn serve(
    shared: &Weak<Shared>,
    requests: &Receiver<ControlRequest>,
    control: &mut Control,
    wanted_keys: &mut Vec<(String, String)>,
    mut agreement: Vec<(u64, Option<Vec<u8>>)>,
) -> Result<()> {
    let local_dc = shared.upgrade().map(|s| s.local.data_center.clone()).ok_or_else(|| anyhow!("shut down"))?;
    control.register().await.context("registering for events")?;
    let mut refresh = true;
    // Reads in a row that found a node without its tokens or place.
    let mut incomplete_reads = 0;
    loop {
        // Waiting for the newest change's version covers the changes asked about before
        // it, which their nodes had applied first.
        if let Some((ticket, version)) = std::mem::take(&mut agreement).into_iter().max_by_key(|(t, _)| *t) {
            control.await_agreement(shared, version.as_deref()).await?;
            let Some(strong) = shared.upgrade() else { return Ok(()) };
            strong.set_agreed(ticket);
        }
        if refresh {
            let ring = control.read_ring(&local_dc).await.context("reading the topology")?;
            // A joining node shows in system.peers a moment before its tokens and place do:
            // read again shortly, or its ranges would wait for the next event.
            let incomplete = ring.nodes.iter().any(|n| n.tokens.is_empty() || n.data_center.is_empty());
            incomplete_reads = if incomplete { incomplete_reads + 1 } else { 0 };
            let Some(strong) = shared.upgrade() else { return Ok(()) };
            strong.set_ring(ring);
            refresh = false;
        }
        for (keyspace, table) in std::mem::take(wanted_keys) {
            let key = control.partition_key(&keyspace, &table).await.unwrap_or_default();
            let Some(strong) = shared.upgrade() else { return Ok(()) };
            strong.set_partition_key(keyspace, table, key);
        }
        // Events read while waiting for answers.
        for event in std::mem::take(&mut control.events) {
            refresh |= on_event(shared, event);
        }
        if refresh {
            continue;
        }
        let frames = async { Woke::Frames(control.conn.next_frames(&mut control.frames).await) };
        let request = async { Woke::Request(requests.recv().await) };
        let retry = async {
            if incomplete_reads > 0 && incomplete_reads <= INCOMPLETE_READS {
                crate::rt::sleep(RETRY).await;
                Woke::Retry
            } else {
                crate::rt::sleep(HEARTBEAT).await;
                Woke::Heartbeat
            }
        };
        let next = futures_lite::future::or(frames, futures_lite::future::or(request, retry)).await;
        match next {
            Woke::Frames(read) => read?,
            Woke::Heartbeat => {
                let options = control.frame(CassandraBody::Options)?;
                control.request_raw(&options).await.context("heartbeat")?;
            }
            Woke::Request(Some(request)) => match request {
                ControlRequest::Refresh | ControlRequest::Session { .. } => refresh = true,
                ControlRequest::PartitionKey { keyspace, table } => wanted_keys.push((keyspace, table)),
                ControlRequest::SchemaAgreement { ticket, version } => agreement.push((ticket, version)),
            },
            Woke::Request(None) => bail!("shut down"),
            Woke::Retry => refresh = true,
        }
        for frame in std::mem::take(&mut control.frames) {
            control.keep_event(&frame);
        }
        if shared.upgrade().is_none() {
            return Ok(());
        }
    }
}

/// What woke the control connection's task.
enum Woke {
    Frames(std::io::Result<()>),
    Request(Option<ControlRequest>),
    Retry,
    /// Quiet for [`HEARTBEAT`]: check the node still answers.
    Heartbeat,
}

/// Applies an event; true when the topology must be read again.
fn on_event(shared: &Weak<Shared>, event: Event) -> bool {
    let Some(shared) = shared.upgrade() else { return false };
    match event {
        Event::StatusChange { change, address } => {
            tracing::info!("CassandraSinkCluster: the node {address} was reported {change}");
            if change == "DOWN" {
                shared.mark_reported_down(address);
                false
            } else {
                shared.mark_up(address);
                true
            }
        }
        Event::TopologyChange { .. } => true,
        Event::SchemaChange(change) => {
            shared.forget_partition_keys(&change);
            true
        }
        Event::Other { .. } => false,
    }
}
