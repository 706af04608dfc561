//! ValkeyCache: answers CQL reads of one partition from a Valkey cache, and invalidates a
//! partition's cached reads after each write to it.
//!
//! ```yaml
//! - ValkeyCache:
//!     caching_schema:
//!       keyspace1.table1:
//!         partition_key: [id]
//!         range_key: [c]
//!     chain:
//!       - ValkeySinkSingle:
//!           remote_address: "127.0.0.1:6379"
//! ```
//!
//! - **Reads.** A SELECT (QUERY, or EXECUTE of a prepared one) of a cached table that names
//!   its whole partition key and range key with `=` is looked up in Valkey first: a hit is
//!   answered with the stored response; a miss goes to Cassandra, and a complete answer
//!   (rows, no further page) is stored. Paged reads and traced requests pass through.
//! - **Writes.** INSERT, UPDATE, DELETE and BATCH go to Cassandra first; once Cassandra has
//!   answered, the partition's entries are invalidated, and only then is the client
//!   answered. A write whose partition the proxy cannot tell (an `IN`, a TRUNCATE, a
//!   statement it cannot read) invalidates the whole table.
//! - **Races.** Generations in Valkey ([`store`]) make sure a read that raced a write never
//!   stores rows older than the write once the write is answered.
//! - **Prepared statements** are learnt from the PREPARED results that pass, per core; an
//!   EXECUTE of one this core has not seen gets UNPREPARED, so that the driver prepares it
//!   again through this core (otherwise a write could skip its invalidation).
//! - **Roles.** A cached answer is kept per authenticated role (PLAIN SASL), so that one
//!   role never gets rows another role was allowed to read; connections whose role the
//!   proxy cannot tell are not cached.
//! - **Failures.** When Valkey fails or takes more than a second, requests are served by
//!   Cassandra alone, one WARN is logged per outage, and the cache is tried again a second
//!   later. Since Valkey may then have lost invalidations, every table is invalidated whole
//!   (by every core of the process) before the cache is used again.

mod config;
mod exchange;
mod key;
mod shape;
mod shared;
mod store;

pub use config::{TableCacheSchema, ValkeyCacheConfig};

use crate::chain::{Chain, ChainBuilder, ChainResult, ChainState, Transform};
use crate::message::{Frame, Message};
use async_trait::async_trait;
use bytes::Bytes;
use exchange::{Lookup, Post, Target};
use shape::{Read, Shape, Write};
use shared::{Entry, Prepared, Shared};
use shotover_protocols::cassandra::classify::query_text;
use shotover_protocols::cassandra::compression::decompress_frame;
use shotover_protocols::cassandra::header::flags;
use shotover_protocols::cassandra::request::{BatchQuery, QueryParams, Value, Values};
use shotover_protocols::cassandra::response::ErrorBody;
use shotover_protocols::cassandra::result::{ColumnSpec, ResultBody};
use shotover_protocols::cassandra::statement;
use shotover_protocols::cassandra::{CassandraBody, CassandraFrame, ErrorCode, FrameHeader, Opcode};
use std::collections::HashMap;
use std::rc::Rc;
use store::Generations;

/// Answers larger than this are not stored.
const MAX_CACHED_FRAME: usize = 1 << 20;
/// The RESULT metadata flag saying another page follows.
const HAS_MORE_PAGES: i32 = 0x0002;

/// Who the connection is, for keeping cached answers apart by role.
#[derive(Debug, Clone, PartialEq)]
enum Role {
    /// No authentication happened (yet): the server lets anyone in, or will ask first.
    Anonymous,
    /// Logged in as this role.
    Known(String),
    /// Logged in in a way the proxy cannot read: nothing is cached.
    Unknown,
}

/// What a response needs, by the stream id of its request.
enum Waiting {
    Use,
    /// The role an AUTH_RESPONSE logs in as, if the proxy could read it.
    Auth(Option<String>),
    /// The statement's shape, and its bind markers as the parser counts them.
    Prepare(Shape, Option<usize>),
    /// A read that was not looked up: learn its columns' types.
    Learn(Read),
    /// A read that missed: store the answer.
    Fill {
        lookup: Lookup,
        gens: Generations,
    },
    Invalidate(Vec<Target>),
}

/// What to do with a request.
enum Action {
    Pass,
    Answer(Box<CassandraFrame>),
    Lookup(Lookup),
    Then(Waiting),
}

pub struct ValkeyCache {
    shared: Rc<Shared>,
    /// The Valkey sub-chain of this connection, and how to make a new one.
    cache: Chain,
    builder: Rc<ChainBuilder>,
    /// The connection's keyspace, as set by USE; `None` also while a USE is unanswered.
    keyspace: Option<String>,
    role: Role,
    waiting: HashMap<i16, Waiting>,
}

/// Looks a bound value up, by position or by name.
fn bound_value(values: Option<&Values>, index: usize, name: Option<&str>) -> Option<Option<Bytes>> {
    let value = match (values?, name) {
        (Values::Positional(v), _) => v.get(index)?,
        (Values::Named(v), Some(name)) => &v.iter().find(|(n, _)| n == name)?.1,
        (Values::Named(_), None) => return None,
    };
    Some(match value {
        Value::Bytes(b) => Some(b.clone()),
        Value::Null | Value::NotSet => None,
    })
}

/// The role a PLAIN SASL token logs in as: `authzid NUL authcid NUL password`.
fn plain_role(token: Option<&Bytes>) -> Option<String> {
    let mut parts = token?.split(|b| *b == 0);
    let (authzid, authcid, _password) = (parts.next()?, parts.next()?, parts.next()?);
    let role = if authzid.is_empty() { authcid } else { authzid };
    String::from_utf8(role.to_vec()).ok()
}

/// The request as a hash field: the role, then the frame, uncompressed, with stream id 0
/// and without the default timestamp (drivers stamp every request; it does not change what
/// a read reads). Two requests with the same field get the same answer.
fn field(role: &str, frame: &CassandraFrame) -> Option<Vec<u8>> {
    let mut frame = frame.clone();
    frame.stream_id = 0;
    match &mut frame.body {
        CassandraBody::Query(q) => q.params.timestamp = None,
        CassandraBody::Execute(e) => e.params.timestamp = None,
        _ => return None,
    }
    let mut field = role.as_bytes().to_vec();
    field.push(0);
    field.extend(frame.encode().ok()?);
    Some(field)
}

/// The answer to store: a complete Rows result, untraced and not too large, as an
/// uncompressed frame.
fn storable(response: &mut Message) -> Option<Bytes> {
    let Ok(Frame::Cassandra(frame)) = response.frame() else { return None };
    let CassandraBody::Result(ResultBody::Rows(rows)) = &frame.body else { return None };
    if frame.tracing_id.is_some() || rows.metadata.flags & HAS_MORE_PAGES != 0 {
        return None;
    }
    let raw = decompress_frame(&response.to_bytes().ok()?, response.cql_compression()).ok()?;
    (raw.len() <= MAX_CACHED_FRAME).then_some(raw)
}

/// UNPREPARED for an EXECUTE (or BATCH) of a statement this core has not seen prepared.
fn unprepared(header: &FrameHeader, id: &Bytes) -> CassandraFrame {
    let mut extra = (id.len() as u16).to_be_bytes().to_vec();
    extra.extend_from_slice(id);
    let body = ErrorBody {
        code: ErrorCode::UNPREPARED,
        message: "shotover: ValkeyCache has not seen this statement prepared on this core".into(),
        extra: Bytes::from(extra),
    };
    CassandraFrame::response(header, CassandraBody::Error(body))
}

impl ValkeyCache {
    fn new(shared: Rc<Shared>, builder: Rc<ChainBuilder>) -> Self {
        let cache = builder.build();
        ValkeyCache { shared, cache, builder, keyspace: None, role: Role::Anonymous, waiting: HashMap::new() }
    }

    /// The partition a read is of, if its values can be had.
    fn read_key(&self, read: &Read, params: Option<&QueryParams>, bind: Option<&[ColumnSpec]>) -> Option<Vec<u8>> {
        let shared = &self.shared;
        let literal_type = |column: &str| shared.type_of(&read.keyspace, &read.table, column);
        let values = params.and_then(|p| p.values.as_ref());
        let marker = |column: &str, index: usize, name: Option<&str>| match bind {
            Some(bind) => {
                let spec = bind.get(index)?;
                Some((spec.col_type.clone(), bound_value(values, index, Some(&spec.name))?))
            }
            None => Some((shared.type_of(&read.keyspace, &read.table, column)?, bound_value(values, index, name)?)),
        };
        let parts = shape::resolve(&read.parts, true, &literal_type, &marker)?;
        let entry = shared.entries.get(read.entry)?;
        Some(key::partition(&entry.name, &read.keyspace, &parts))
    }

    /// What writes invalidate: their partitions, or their whole tables.
    fn targets(&self, writes: &[Write], values: Option<&Values>, bind: Option<&[ColumnSpec]>, out: &mut Vec<Target>) {
        let shared = &self.shared;
        for w in writes {
            let Some(entry) = shared.entries.get(w.entry) else { continue };
            let marker = |column: &str, index: usize, name: Option<&str>| match bind {
                Some(bind) => {
                    let spec = bind.get(index)?;
                    Some((spec.col_type.clone(), bound_value(values, index, Some(&spec.name))?))
                }
                None => Some((shared.type_of(&w.keyspace, &entry.table, column)?, bound_value(values, index, name)?)),
            };
            let parts = w.parts.as_ref().and_then(|parts| shape::resolve(parts, false, &|_| None, &marker));
            out.push(match parts {
                Some(parts) => {
                    Target::Partition { entry: w.entry, key: key::partition(&entry.name, &w.keyspace, &parts) }
                }
                None => Target::Table(w.entry),
            });
        }
    }

    /// Every table, invalidated whole: for a write the proxy cannot read.
    fn all_tables(&self) -> Action {
        Action::Then(Waiting::Invalidate((0..self.shared.entries.len()).map(Target::Table).collect()))
    }

    /// A read: looked up when its key can be had and its answer can be stored.
    fn read(&self, frame: &CassandraFrame, read: Read, params: &QueryParams, bind: Option<&[ColumnSpec]>) -> Action {
        let role = match &self.role {
            Role::Anonymous => Some(""),
            Role::Known(role) => Some(role.as_str()),
            Role::Unknown => None,
        };
        let cacheable = frame.flags & flags::TRACING == 0 && params.paging_state.is_none();
        let key = role.filter(|_| cacheable).and_then(|_| self.read_key(&read, Some(params), bind));
        let field = key.as_ref().and(role).and_then(|role| field(role, frame));
        match (key, field) {
            (Some(partition), Some(field)) => Action::Lookup(Lookup { entry: read.entry, partition, field }),
            _ => Action::Then(Waiting::Learn(read)),
        }
    }

    /// Whether a request is a USE (as a QUERY, or an EXECUTE of a prepared one).
    fn is_use(&self, request: &Message) -> bool {
        let Some(raw) = request.raw() else { return false };
        match request.cql_header().map(|h| h.opcode) {
            Some(Opcode::Query) => query_text(raw).is_some_and(|q| {
                q.trim_start().get(..3).is_some_and(|w| w.eq_ignore_ascii_case("use"))
                    && matches!(statement::parse(q), Some(statement::Statement::Use { .. }))
            }),
            Some(Opcode::Execute) => {
                // The id is the body's first field, a [short bytes].
                let id = raw.get(9..11).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
                let id = id.and_then(|len| raw.get(11..11 + len));
                id.and_then(|id| self.shared.prepared.borrow().get(id).cloned())
                    .is_some_and(|p| matches!(p.shape, Shape::Use(_)))
            }
            _ => false,
        }
    }

    fn plan(&mut self, request: &mut Message) -> Action {
        let Some(header) = request.cql_header() else { return Action::Pass };
        // A stream id is free again once its request is sent anew.
        self.waiting.remove(&header.stream_id);
        match header.opcode {
            Opcode::Query => {
                let text = request.raw().and_then(|raw| query_text(raw));
                if text.is_some_and(|t| !self.shared.may_concern(t)) {
                    return Action::Pass;
                }
            }
            Opcode::Prepare | Opcode::Execute | Opcode::Batch | Opcode::AuthResponse => {}
            _ => return Action::Pass,
        }
        let Ok(Frame::Cassandra(frame)) = request.frame() else {
            // A request that may write, which the proxy cannot read.
            return if header.opcode == Opcode::AuthResponse { Action::Pass } else { self.all_tables() };
        };
        // Borrowed: the request is not changed here, and only a cacheable read copies it (its field).
        let shared = self.shared.clone();
        match &frame.body {
            CassandraBody::AuthResponse(token) => Action::Then(Waiting::Auth(plain_role(token.as_ref()))),
            CassandraBody::Query(q) => {
                let keyspace = q.params.keyspace.clone().or_else(|| self.keyspace.clone());
                match shape::of(&shared.entries, keyspace.as_deref(), &q.query) {
                    Shape::Pass => Action::Pass,
                    Shape::Use(_) => {
                        // Unknown until Cassandra answers which keyspace is set.
                        self.keyspace = None;
                        Action::Then(Waiting::Use)
                    }
                    Shape::Read(read) => self.read(frame, read, &q.params, None),
                    Shape::Writes(writes) => {
                        let mut targets = Vec::new();
                        self.targets(&writes, q.params.values.as_ref(), None, &mut targets);
                        Action::Then(Waiting::Invalidate(targets))
                    }
                }
            }
            CassandraBody::Prepare(p) => {
                let keyspace = p.keyspace.clone().or_else(|| self.keyspace.clone());
                let shape = shape::of(&shared.entries, keyspace.as_deref(), &p.query);
                Action::Then(Waiting::Prepare(shape, statement::marker_count(&p.query)))
            }
            CassandraBody::Execute(e) => {
                let Some(prepared) = shared.prepared.borrow().get(&e.id).cloned() else {
                    return Action::Answer(Box::new(unprepared(&header, &e.id)));
                };
                match &prepared.shape {
                    Shape::Read(read) => self.read(frame, read.clone(), &e.params, Some(&prepared.bind)),
                    Shape::Writes(writes) => {
                        let mut targets = Vec::new();
                        self.targets(writes, e.params.values.as_ref(), Some(&prepared.bind), &mut targets);
                        Action::Then(Waiting::Invalidate(targets))
                    }
                    Shape::Use(_) => {
                        self.keyspace = None;
                        Action::Then(Waiting::Use)
                    }
                    Shape::Pass => Action::Pass,
                }
            }
            CassandraBody::Batch(b) => {
                let keyspace = b.keyspace.clone().or_else(|| self.keyspace.clone());
                let mut targets = Vec::new();
                for s in &b.statements {
                    match &s.query {
                        BatchQuery::Query(cql) => {
                            if !shared.may_concern(cql) {
                                continue;
                            }
                            if let Shape::Writes(w) = shape::of(&shared.entries, keyspace.as_deref(), cql) {
                                self.targets(&w, Some(&s.values), None, &mut targets);
                            }
                        }
                        BatchQuery::Prepared(id) => {
                            let Some(prepared) = shared.prepared.borrow().get(id).cloned() else {
                                return Action::Answer(Box::new(unprepared(&header, id)));
                            };
                            if let Shape::Writes(w) = &prepared.shape {
                                self.targets(w, Some(&s.values), Some(&prepared.bind), &mut targets);
                            }
                        }
                    }
                }
                if targets.is_empty() {
                    Action::Pass
                } else {
                    Action::Then(Waiting::Invalidate(targets))
                }
            }
            _ => Action::Pass,
        }
    }

    /// Learns from a response; adds what it asks of Valkey to `post`.
    fn response(&mut self, response: &mut Message, post: &mut Vec<Post>) {
        let Some(header) = response.cql_header() else { return };
        let Some(waiting) = self.waiting.remove(&header.stream_id) else { return };
        let shared = self.shared.clone();
        match waiting {
            Waiting::Invalidate(targets) => post.extend(targets.into_iter().map(Post::Invalidate)),
            Waiting::Fill { lookup, gens } => {
                if let Some(frame) = storable(response) {
                    post.push(Post::Fill { lookup, gens, frame });
                }
            }
            waiting => {
                let Ok(Frame::Cassandra(frame)) = response.frame() else { return };
                match (waiting, &frame.body) {
                    (Waiting::Auth(role), CassandraBody::AuthSuccess(_)) => {
                        self.role = role.map_or(Role::Unknown, Role::Known);
                    }
                    (Waiting::Auth(_), CassandraBody::AuthChallenge(_)) => self.role = Role::Unknown,
                    (Waiting::Use, CassandraBody::Result(ResultBody::SetKeyspace(ks))) => {
                        self.keyspace = Some(ks.clone());
                    }
                    (Waiting::Learn(read), CassandraBody::Result(ResultBody::Rows(rows))) => {
                        shared.learn_rows(&read, &rows.metadata);
                    }
                    (Waiting::Prepare(shape, markers), CassandraBody::Result(ResultBody::Prepared(p))) => {
                        let bind = p.metadata.columns.clone();
                        // Markers Cassandra counts otherwise than the parser: the proxy cannot
                        // tell which value is which, so reads pass and writes void the table.
                        let shape = match shape {
                            Shape::Read(_) if markers != Some(bind.len()) => Shape::Pass,
                            Shape::Writes(w) if markers != Some(bind.len()) => {
                                Shape::Writes(w.into_iter().map(|w| Write { parts: None, ..w }).collect())
                            }
                            shape => shape,
                        };
                        shared.learn_prepared(&shape, &bind);
                        if let Shape::Read(read) = &shape {
                            shared.learn_rows(read, &p.result_metadata);
                        }
                        shared.remember(p.id.clone(), Prepared { shape, bind });
                    }
                    _ => {}
                }
            }
        }
    }
}

#[async_trait(?Send)]
impl Transform for ValkeyCache {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        // A USE in the batch may run before or after the batch's other requests: their
        // keyspace is unknown.
        if state.requests.iter().any(|r| self.is_use(r)) {
            self.keyspace = None;
        }
        let mut answers = Vec::new();
        let mut lookups = Vec::new();
        for mut request in std::mem::take(&mut state.requests) {
            match self.plan(&mut request) {
                Action::Pass => state.requests.push(request),
                Action::Answer(frame) => {
                    let mut answer = Message::from_frame(Frame::Cassandra(frame));
                    answer.set_request_id(request.id());
                    answers.push(answer);
                }
                Action::Lookup(lookup) => lookups.push((request, lookup)),
                Action::Then(waiting) => {
                    if let Some(header) = request.cql_header() {
                        self.waiting.insert(header.stream_id, waiting);
                    }
                    state.requests.push(request);
                }
            }
        }
        if !lookups.is_empty() {
            self.look_up(lookups, state, &mut answers).await;
        }
        let mut responses = match state.call_next_transform().await {
            Ok(responses) => responses,
            Err(e) => {
                // Writes whose answers will never come may have been applied.
                let pending = self.waiting.drain().filter_map(|(_, w)| match w {
                    Waiting::Invalidate(targets) => Some(targets),
                    _ => None,
                });
                let entries: Vec<usize> = pending.flatten().map(|t| t.entry()).collect();
                self.shared.mark_dirty(entries);
                return Err(e);
            }
        };
        if !self.waiting.is_empty() {
            let mut posts = Vec::new();
            for response in &mut responses {
                self.response(response, &mut posts);
            }
            if !posts.is_empty() {
                self.post(posts).await;
            }
        }
        responses.extend(answers);
        Ok(responses)
    }
}
