//! Protect: encrypts the configured columns of CQL writes before Cassandra sees them, and
//! decrypts them in the rows Cassandra returns.
//!
//! ```yaml
//! - Protect:
//!     key_manager:
//!       Local:
//!         kek: Ht8M1nDO/7fay+cft71M2Xy7j30EnLAsA84hSUMCm1k=
//!         kek_id: ""
//!     keyspace_table_columns:
//!       test_protect_keyspace:
//!         test_table:
//!           - col1
//! ```
//!
//! - A protected column is a `blob`. What is written to it (a blob or string literal, or a
//!   bound value) is encrypted and stored in the layout of [`crypto`]; what is read from it
//!   is the original bytes again.
//! - Writes: INSERT and UPDATE in QUERY (literals and bound values, [`write`]), EXECUTE
//!   (bound values, by the prepared statement's metadata) and BATCH (both).
//! - Reads: every ROWS result of a request that names a protected table, or executes a
//!   statement that returns protected columns, has those columns decrypted, page by page.
//! - Prepared statements are learnt from the PREPARED results that pass, shared by the
//!   core's connections. An EXECUTE of a statement this core has not seen prepared gets
//!   UNPREPARED, so the driver prepares it again through this core: otherwise its values
//!   could reach a protected column unencrypted.
//! - A statement naming a protected table that the proxy cannot read gets an Invalid error
//!   when it writes, and passes (its rows decrypted by their metadata) when it reads.

mod config;
pub mod crypto;
mod keyring;
mod kms;
mod prepare;
mod valkey;
mod write;

pub use config::{KeyManagerConfig, ProtectConfig};

use crate::chain::{ChainResult, ChainState, Transform};
use crate::message::{Frame, Message};
use async_trait::async_trait;
use bytes::Bytes;
use keyring::KeyRing;
use shotover_protocols::cassandra::classify::query_text;
use shotover_protocols::cassandra::response::ErrorBody;
use shotover_protocols::cassandra::result::{ColumnType, ResultBody, Rows};
use shotover_protocols::cassandra::{CassandraBody, CassandraFrame, ErrorCode, FrameHeader, Opcode};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// keyspace → table → protected columns, looked up by `&str` without allocating.
pub(crate) type Columns = HashMap<String, HashMap<String, HashSet<String>>>;

/// What a prepared statement binds and returns, as far as Protect cares.
#[derive(Debug, Clone, Default)]
struct PreparedInfo {
    /// Per bind marker: for a protected column, the marker's name (named values use it).
    bind: Vec<Option<String>>,
    /// Per result column: whether to decrypt it.
    result: Vec<bool>,
    /// It names a protected table: its rows (those of a conditional write too) are read.
    touches: bool,
}

/// At most this many prepared statements are remembered per core; then the memory starts
/// afresh (their EXECUTEs get UNPREPARED once and are learnt again).
const MAX_PREPARED: usize = 100_000;

/// What the connections of one core share.
pub(crate) struct Shared {
    columns: Columns,
    tables: HashSet<String>,
    ring: Rc<KeyRing>,
    prepared: RefCell<HashMap<Bytes, Rc<PreparedInfo>>>,
}

impl Shared {
    fn new(columns: Columns, ring: Rc<KeyRing>) -> Self {
        let tables = columns.values().flat_map(HashMap::keys).map(|t| t.to_ascii_lowercase()).collect();
        Shared { columns, tables, ring, prepared: RefCell::new(HashMap::new()) }
    }

    fn protected(&self, keyspace: &str, table: &str, column: &str) -> bool {
        self.table(keyspace, table).is_some_and(|c| c.contains(column))
    }

    fn table(&self, keyspace: &str, table: &str) -> Option<&HashSet<String>> {
        self.columns.get(keyspace)?.get(table)
    }

    /// Whether `cql` may name a protected table: a cheap test before parsing it, made on
    /// every QUERY, so it allocates nothing (table names are stored lowercased).
    fn may_name_protected(&self, cql: &str) -> bool {
        let cql = cql.as_bytes();
        self.tables.iter().any(|t| cql.windows(t.len()).any(|w| w.eq_ignore_ascii_case(t.as_bytes())))
    }
}

/// What a response needs, by the stream id of its request.
#[derive(Debug, Clone)]
enum Waiting {
    /// Learn the prepared statement.
    Prepare(prepare::PrepareCheck),
    /// Decrypt protected columns, found by the rows' metadata or, without it, by the
    /// prepared statement's (whose id is given).
    Rows(Option<(Bytes, Rc<PreparedInfo>)>),
    /// Note the keyspace a USE sets.
    Use,
}

pub struct Protect {
    shared: Rc<Shared>,
    /// The connection's keyspace, as set by USE; `None` while a USE is unanswered.
    keyspace: Option<String>,
    waiting: HashMap<i16, Waiting>,
}

impl Protect {
    fn new(shared: Rc<Shared>) -> Self {
        Protect { shared, keyspace: None, waiting: HashMap::new() }
    }

    /// Encrypts what a request writes to protected columns; `Err` is the answer to send
    /// instead of passing it on.
    fn request(&mut self, request: &mut Message) -> Result<(), (FrameHeader, Refusal)> {
        let Some(header) = request.cql_header() else { return Ok(()) };
        // A stream id is free again once its request is sent anew.
        self.waiting.remove(&header.stream_id);
        if !matches!(header.opcode, Opcode::Query | Opcode::Prepare | Opcode::Execute | Opcode::Batch) {
            return Ok(());
        }
        self.plan(request, &header).map_err(|refusal| (header, refusal))
    }

    fn plan(&mut self, request: &mut Message, header: &FrameHeader) -> Result<(), Refusal> {
        // The common cases, without decoding or re-encoding the request: a QUERY that names
        // no protected table, and an EXECUTE that binds no protected column.
        if header.opcode == Opcode::Query {
            let text = request.raw().and_then(|raw| query_text(raw));
            if text.is_some_and(|t| !write::is_use(t) && !self.shared.may_name_protected(t)) {
                return Ok(());
            }
        }
        let keyspace = self.keyspace.clone();
        let (shared, stream) = (self.shared.clone(), header.stream_id);
        let body = match request.frame() {
            Ok(Frame::Cassandra(frame)) => &frame.body,
            _ => return Err(Refusal::Invalid("the proxy cannot read this request".into())),
        };
        match body {
            CassandraBody::Prepare(p) => {
                let ks = p.keyspace.as_deref().or(keyspace.as_deref());
                let check = prepare::check(&shared, ks, &p.query)?;
                self.waiting.insert(stream, Waiting::Prepare(check));
                return Ok(());
            }
            CassandraBody::Execute(e) => {
                let info = write::prepared(&shared, &e.id)?;
                if info.bind.iter().all(Option::is_none) {
                    if info.touches {
                        self.waiting.insert(stream, Waiting::Rows(Some((e.id.clone(), info))));
                    }
                    return Ok(());
                }
            }
            _ => {}
        }
        let Ok(Frame::Cassandra(frame)) = request.frame_mut() else { return Ok(()) };
        match write::protect_request(&shared, keyspace.as_deref(), &mut frame.body)? {
            write::Outcome::Rows(info) => {
                self.waiting.insert(stream, Waiting::Rows(info));
            }
            write::Outcome::Use => {
                // Unqualified protected tables are refused until the answer names it.
                self.keyspace = None;
                self.waiting.insert(stream, Waiting::Use);
            }
            write::Outcome::Nothing => {}
        }
        Ok(())
    }

    fn response(&mut self, response: &mut Message) {
        let Some(header) = response.cql_header() else { return };
        let Some(waiting) = self.waiting.remove(&header.stream_id) else { return };
        let frame = match response.frame_mut() {
            Ok(Frame::Cassandra(frame)) => frame,
            _ => {
                if matches!(waiting, Waiting::Rows(_)) {
                    // Rows that may hold protected columns and cannot be read: not passed on.
                    let text = "shotover: Protect: cannot read the response";
                    let mut error = Message::from_frame(Frame::Cassandra(Box::new(CassandraFrame::error(
                        &header,
                        ErrorCode::SERVER_ERROR,
                        text,
                    ))));
                    if let Some(id) = response.request_id() {
                        error.set_request_id(id);
                    }
                    *response = error;
                }
                return;
            }
        };
        let shared = &self.shared;
        match (waiting, &mut frame.body) {
            (Waiting::Use, CassandraBody::Result(ResultBody::SetKeyspace(ks))) => self.keyspace = Some(ks.clone()),
            (Waiting::Prepare(check), CassandraBody::Result(ResultBody::Prepared(p))) => {
                match prepare::learn(shared, &check, p) {
                    Ok(info) => {
                        let mut prepared = shared.prepared.borrow_mut();
                        if prepared.len() >= MAX_PREPARED {
                            prepared.clear();
                        }
                        prepared.insert(p.id.clone(), Rc::new(info));
                    }
                    Err(e) => **frame = e.into_frame(&header),
                }
            }
            (Waiting::Rows(info), CassandraBody::Result(ResultBody::Rows(rows))) => {
                if let (Some((id, info)), false) = (&info, rows.metadata.columns.is_empty()) {
                    // The statement's result changed (v5 METADATA_CHANGED, a schema change):
                    // later rows without metadata follow the new columns.
                    let result = prepare::result_columns(shared, &rows.metadata);
                    if result != info.result {
                        let updated = PreparedInfo { result, ..PreparedInfo::clone(info) };
                        shared.prepared.borrow_mut().insert(id.clone(), Rc::new(updated));
                    }
                }
                if let Err(text) = self.decrypt(rows, info.as_ref().map(|(_, i)| &**i)) {
                    tracing::warn!("Protect: {text}");
                    **frame =
                        CassandraFrame::error(&header, ErrorCode::SERVER_ERROR, format!("shotover: Protect: {text}"));
                }
            }
            _ => {}
        }
    }

    /// The protected columns of `rows`, named by their metadata or by `info`, with their
    /// names for errors.
    fn protected_columns(&self, rows: &Rows, info: Option<&PreparedInfo>) -> Vec<(usize, String)> {
        if rows.metadata.columns.is_empty() {
            let Some(info) = info else { return Vec::new() };
            return info
                .result
                .iter()
                .enumerate()
                .filter(|(_, p)| **p)
                .map(|(i, _)| (i, format!("column {i}")))
                .collect();
        }
        (0..rows.metadata.columns.len())
            .filter_map(|i| {
                let spec = rows.column(i)?;
                let table = rows.metadata.table_of(i)?;
                self.shared
                    .protected(&table.keyspace, &table.table, &spec.name)
                    .then(|| (i, format!("{}.{}.{}", table.keyspace, table.table, spec.name)))
            })
            .collect()
    }

    /// Decrypts the protected columns of `rows`, named by their metadata or by `info`.
    fn decrypt(&self, rows: &mut Rows, info: Option<&PreparedInfo>) -> Result<(), String> {
        let columns = self.protected_columns(rows, info);
        if let Some(spec) = columns.iter().filter_map(|(i, _)| rows.column(*i)).find(|s| s.col_type != ColumnType::Blob)
        {
            return Err(format!("{} is protected, so it must be a blob column, not {:?}", spec.name, spec.col_type));
        }
        let mut keys = self.shared.ring.keys.borrow_mut();
        for (column, name) in columns {
            for row in 0..rows.rows.len() {
                let Some(Some(stored)) = rows.cell(row, column).map(|c| c.cloned()) else { continue };
                let plain = keys.unprotect(&stored).map_err(|e| format!("cannot decrypt {name}: {e}"))?;
                rows.set_cell(row, column, Some(Bytes::from(plain))).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// The wrapped DEKs that rows about to be decrypted need from KMS.
    fn missing_deks(&self, responses: &mut [Message]) -> Vec<Vec<u8>> {
        let mut missing = Vec::new();
        for response in responses {
            let Some(header) = response.cql_header() else { continue };
            let Some(Waiting::Rows(info)) = self.waiting.get(&header.stream_id) else { continue };
            let Ok(Frame::Cassandra(frame)) = response.frame() else { continue };
            let CassandraBody::Result(ResultBody::Rows(rows)) = &frame.body else { continue };
            let keys = self.shared.ring.keys.borrow();
            for (column, _) in self.protected_columns(rows, info.as_ref().map(|(_, i)| &**i)) {
                for row in 0..rows.rows.len() {
                    if let Some(Some(stored)) = rows.cell(row, column) {
                        missing.extend(keys.missing(stored).filter(|m| !missing.contains(m)));
                    }
                }
            }
        }
        missing
    }
}

/// Why a request is answered by Protect itself.
#[derive(Debug)]
pub(crate) enum Refusal {
    Invalid(String),
    /// The key management service could not be reached.
    Unavailable(String),
    /// An EXECUTE (or a BATCH statement) of a statement this core has not seen prepared.
    Unprepared(Bytes),
}

impl Refusal {
    /// The answer this refusal makes to the request of `header`.
    fn answer(self, header: &FrameHeader, request: &Message) -> Message {
        let mut answer = Message::from_frame(Frame::Cassandra(Box::new(self.into_frame(header))));
        answer.set_request_id(request.id());
        answer
    }

    /// A value that could not be encrypted.
    fn encrypting(e: crypto::ProtectError) -> Self {
        match e {
            crypto::ProtectError::Unavailable => Refusal::Unavailable(e.to_string()),
            other => Refusal::Invalid(other.to_string()),
        }
    }

    fn into_frame(self, header: &FrameHeader) -> CassandraFrame {
        match self {
            Refusal::Invalid(text) => {
                CassandraFrame::error(header, ErrorCode::INVALID, format!("shotover: Protect: {text}"))
            }
            Refusal::Unavailable(text) => {
                CassandraFrame::error(header, ErrorCode::SERVER_ERROR, format!("shotover: Protect: {text}"))
            }
            Refusal::Unprepared(id) => {
                let mut extra = (id.len() as u16).to_be_bytes().to_vec();
                extra.extend_from_slice(&id);
                let body = ErrorBody {
                    code: ErrorCode::UNPREPARED,
                    message: "shotover: Protect has not seen this statement prepared on this core".into(),
                    extra: Bytes::from(extra),
                };
                CassandraFrame::response(header, CassandraBody::Error(body))
            }
        }
    }
}

#[async_trait(?Send)]
impl Transform for Protect {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        let ring = self.shared.ring.clone();
        ring.renew_if_due();
        let mut answered = Vec::new();
        // Requests refused for want of a DEK, tried again once one is had.
        let mut again = Vec::new();
        for mut request in std::mem::take(&mut state.requests) {
            match self.request(&mut request) {
                Ok(()) => state.requests.push(request),
                Err((_, Refusal::Unavailable(_))) if ring.is_remote() && !ring.keys.borrow().has_dek() => {
                    again.push(request)
                }
                Err((header, refusal)) => answered.push(refusal.answer(&header, &request)),
            }
        }
        if !again.is_empty() {
            ring.ensure_dek().await;
            for mut request in again {
                match self.request(&mut request) {
                    Ok(()) => state.requests.push(request),
                    Err((header, refusal)) => answered.push(refusal.answer(&header, &request)),
                }
            }
        }
        let mut responses = state.call_next_transform().await?;
        if ring.is_remote() && !self.waiting.is_empty() {
            let missing = self.missing_deks(&mut responses);
            if !missing.is_empty() {
                ring.unwrap(missing).await;
            }
        }
        if !self.waiting.is_empty() {
            for response in &mut responses {
                self.response(response);
            }
        }
        responses.extend(answered);
        Ok(responses)
    }
}
