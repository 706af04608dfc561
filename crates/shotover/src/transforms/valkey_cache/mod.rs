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
//! - **Failures.** When Valkey fails, requests are served by Cassandra alone, one WARN is
//!   logged per outage, and the cache is tried again a second later. Tables whose
//!   invalidation failed are invalidated whole before the cache is used again.

mod config;
mod key;
mod shape;
mod store;

pub use config::{TableCacheSchema, ValkeyCacheConfig};

use crate::chain::{BuildContext, Chain, ChainResult, ChainState, Transform};
use crate::message::{Frame, Message};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use shape::{Read, Shape, Write};
use shotover_protocols::cassandra::classify::query_text;
use shotover_protocols::cassandra::compression::decompress_frame;
use shotover_protocols::cassandra::header::{flags, HEADER_LEN};
use shotover_protocols::cassandra::request::{BatchQuery, QueryParams, Value, Values};
use shotover_protocols::cassandra::response::ErrorBody;
use shotover_protocols::cassandra::result::{ColumnSpec, ColumnType, ResultBody, RowsMetadata};
use shotover_protocols::cassandra::{CassandraBody, CassandraFrame, Compression, ErrorCode, FrameHeader, Opcode};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;
use store::{Found, Generations};

/// A cached table, as configured.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// `keyspace.table` or `table`, as written: it names the entry's keys in Valkey.
    name: String,
    /// `None`: the table of that name in any keyspace.
    keyspace: Option<String>,
    table: String,
    partition_key: Vec<String>,
    range_key: Vec<String>,
}

/// At most this many prepared statements are remembered per core; then the memory starts
/// afresh (their EXECUTEs get UNPREPARED once and are learnt again).
const MAX_PREPARED: usize = 100_000;
/// Answers larger than this are not stored.
const MAX_CACHED_FRAME: usize = 1 << 20;
/// RESULT kind Rows, and its metadata flag saying another page follows.
const ROWS: i32 = 2;
const HAS_MORE_PAGES: i32 = 0x0002;

/// A prepared statement, as far as the cache cares.
struct Prepared {
    shape: Shape,
    /// The bind markers' names and types.
    bind: Vec<ColumnSpec>,
}

/// What the connections of one core share.
pub(crate) struct Shared {
    entries: Vec<Entry>,
    /// The cached tables' names, lowercased, for a cheap test of each QUERY.
    names: Vec<String>,
    /// Column types of cached tables, by keyspace and table, learnt from the metadata that
    /// passes: a read's literals are cached only once their column's type is known.
    types: RefCell<HashMap<(String, String), HashMap<String, ColumnType>>>,
    prepared: RefCell<HashMap<Bytes, Rc<Prepared>>>,
    health: store::Health,
    hits: IntCounter,
    misses: IntCounter,
    invalidations: IntCounter,
    errors: IntCounter,
}

impl Shared {
    fn new(entries: Vec<Entry>, ctx: &BuildContext) -> Self {
        let chain = [ctx.chain_name.as_str()];
        let m = &ctx.metrics;
        Shared {
            names: entries.iter().map(|e| e.table.to_ascii_lowercase()).collect(),
            entries,
            types: RefCell::new(HashMap::new()),
            prepared: RefCell::new(HashMap::new()),
            health: store::Health::default(),
            hits: m.cache_hits.with_label_values(&chain),
            misses: m.cache_misses.with_label_values(&chain),
            invalidations: m.cache_invalidations.with_label_values(&chain),
            errors: m.cache_errors.with_label_values(&chain),
        }
    }

    /// Whether `cql` may name a cached table (or is a USE): made on every QUERY, so it
    /// allocates nothing.
    fn may_concern(&self, cql: &str) -> bool {
        let bytes = cql.as_bytes();
        let head = cql.trim_start().as_bytes();
        head.get(..3).is_some_and(|w| w.eq_ignore_ascii_case(b"use"))
            || head.first().is_some_and(|b| matches!(b, b'-' | b'/'))
            || self.names.iter().any(|t| bytes.windows(t.len()).any(|w| w.eq_ignore_ascii_case(t.as_bytes())))
    }

    fn type_of(&self, keyspace: &str, table: &str, column: &str) -> Option<ColumnType> {
        self.types.borrow().get(&(keyspace.to_string(), table.to_string()))?.get(column).cloned()
    }

    fn learn(&self, keyspace: &str, table: &str, column: &str, t: &ColumnType) {
        let mut types = self.types.borrow_mut();
        let columns = types.entry((keyspace.to_string(), table.to_string())).or_default();
        if columns.get(column) != Some(t) {
            columns.insert(column.to_string(), t.clone());
        }
    }

    /// Learns the types of a read's result columns.
    fn learn_rows(&self, read: &Read, metadata: &RowsMetadata) {
        for (i, spec) in metadata.columns.iter().enumerate() {
            let table = spec.table_spec.as_ref().or(metadata.global_table_spec.as_ref());
            if table.is_none_or(|t| t.keyspace != read.keyspace || t.table != read.table) {
                continue;
            }
            let column = match &read.columns {
                None => Some(spec.name.as_str()),
                Some(columns) => columns.get(i).and_then(Option::as_deref),
            };
            if let Some(column) = column {
                self.learn(&read.keyspace, &read.table, column, &spec.col_type);
            }
        }
    }

    /// Learns the types of the key columns a prepared statement binds with `?`.
    fn learn_prepared(&self, shape: &Shape, bind: &[ColumnSpec]) {
        let learn = |keyspace: &str, table: &str, parts: &[shape::Part]| {
            for (column, src) in parts {
                if let shape::Src::Marker { index, name: None } = src {
                    if let Some(spec) = bind.get(*index) {
                        self.learn(keyspace, table, column, &spec.col_type);
                    }
                }
            }
        };
        match shape {
            Shape::Read(r) => learn(&r.keyspace, &r.table, &r.parts),
            Shape::Writes(writes) => {
                for w in writes {
                    if let (Some(parts), Some(e)) = (&w.parts, self.entries.get(w.entry)) {
                        if !w.keyspace.is_empty() {
                            learn(&w.keyspace, &e.table, parts);
                        }
                    }
                }
            }
            Shape::Pass | Shape::Use(_) => {}
        }
    }
}

/// What to invalidate after a write.
#[derive(Debug, Clone)]
enum Target {
    Partition { entry: usize, key: Vec<u8> },
    Table(usize),
}

/// What a response needs, by the stream id of its request.
enum Waiting {
    Use,
    Prepare(Shape),
    /// A read that was not looked up: learn its columns' types.
    Learn(Read),
    /// A read that missed: store the answer.
    Fill {
        lookup: Lookup,
        gens: Generations,
    },
    Invalidate(Vec<Target>),
}

/// A read to look up.
struct Lookup {
    entry: usize,
    partition: Vec<u8>,
    field: Vec<u8>,
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
    /// The Valkey sub-chain of this connection.
    cache: Chain,
    /// The connection's keyspace, as set by USE.
    keyspace: Option<String>,
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

/// The request as a hash field: the frame, uncompressed, with stream id 0 and without the
/// default timestamp (drivers stamp every request; it does not change what a read reads).
/// Two requests with the same field get the same answer.
fn field(frame: &CassandraFrame) -> Option<Vec<u8>> {
    let mut frame = frame.clone();
    frame.stream_id = 0;
    match &mut frame.body {
        CassandraBody::Query(q) => q.params.timestamp = None,
        CassandraBody::Execute(e) => e.params.timestamp = None,
        _ => return None,
    }
    frame.encode().ok()
}

/// The answer to store: a complete Rows result, untraced and not too large.
fn storable(response: &Message) -> Option<Bytes> {
    let raw = decompress_frame(&response.to_bytes().ok()?, response.cql_compression()).ok()?;
    let int = |at: usize| Some(i32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?));
    let header = raw.get(..HEADER_LEN)?;
    let rows = header[4] == u8::from(Opcode::Result) && header[1] & flags::TRACING == 0 && int(HEADER_LEN)? == ROWS;
    (rows && int(HEADER_LEN + 4)? & HAS_MORE_PAGES == 0 && raw.len() <= MAX_CACHED_FRAME).then_some(raw)
}

impl ValkeyCache {
    fn new(shared: Rc<Shared>, cache: Chain) -> Self {
        ValkeyCache { shared, cache, keyspace: None, waiting: HashMap::new() }
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

    /// A read: looked up when its key can be had and its answer can be stored.
    fn read(&self, frame: &CassandraFrame, read: Read, params: &QueryParams, bind: Option<&[ColumnSpec]>) -> Action {
        let key = (frame.flags & flags::TRACING == 0 && params.paging_state.is_none())
            .then(|| self.read_key(&read, Some(params), bind))
            .flatten();
        let field = key.as_ref().and_then(|_| field(frame));
        match (key, field) {
            (Some(partition), Some(field)) => Action::Lookup(Lookup { entry: read.entry, partition, field }),
            _ => Action::Then(Waiting::Learn(read)),
        }
    }

    fn plan(&mut self, request: &mut Message) -> Action {
        let Some(header) = request.cql_header() else { return Action::Pass };
        // A stream id is free again once its request is sent anew.
        self.waiting.remove(&header.stream_id);
        if header.opcode == Opcode::Query {
            let text = request.raw().and_then(|raw| query_text(raw));
            if text.is_some_and(|t| !self.shared.may_concern(t)) {
                return Action::Pass;
            }
        } else if !matches!(header.opcode, Opcode::Prepare | Opcode::Execute | Opcode::Batch) {
            return Action::Pass;
        }
        let Ok(Frame::Cassandra(frame)) = request.frame() else { return Action::Pass };
        let frame = CassandraFrame::clone(frame);
        let shared = self.shared.clone();
        match &frame.body {
            CassandraBody::Query(q) => {
                let keyspace = q.params.keyspace.clone().or_else(|| self.keyspace.clone());
                match shape::of(&shared.entries, keyspace.as_deref(), &q.query) {
                    Shape::Pass => Action::Pass,
                    Shape::Use(keyspace) => {
                        self.keyspace = Some(keyspace);
                        Action::Then(Waiting::Use)
                    }
                    Shape::Read(read) => self.read(&frame, read, &q.params, None),
                    Shape::Writes(writes) => {
                        let mut targets = Vec::new();
                        self.targets(&writes, q.params.values.as_ref(), None, &mut targets);
                        Action::Then(Waiting::Invalidate(targets))
                    }
                }
            }
            CassandraBody::Prepare(p) => {
                let keyspace = p.keyspace.clone().or_else(|| self.keyspace.clone());
                Action::Then(Waiting::Prepare(shape::of(&shared.entries, keyspace.as_deref(), &p.query)))
            }
            CassandraBody::Execute(e) => {
                let Some(prepared) = shared.prepared.borrow().get(&e.id).cloned() else {
                    return Action::Answer(Box::new(unprepared(&header, &e.id)));
                };
                match &prepared.shape {
                    Shape::Read(read) => self.read(&frame, read.clone(), &e.params, Some(&prepared.bind)),
                    Shape::Writes(writes) => {
                        let mut targets = Vec::new();
                        self.targets(writes, e.params.values.as_ref(), Some(&prepared.bind), &mut targets);
                        Action::Then(Waiting::Invalidate(targets))
                    }
                    Shape::Pass | Shape::Use(_) => Action::Pass,
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

    /// Learns from a response; returns what it asks of Valkey.
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
                let CassandraBody::Result(result) = &frame.body else { return };
                match (waiting, result) {
                    (Waiting::Use, ResultBody::SetKeyspace(ks)) => self.keyspace = Some(ks.clone()),
                    (Waiting::Learn(read), ResultBody::Rows(rows)) => shared.learn_rows(&read, &rows.metadata),
                    (Waiting::Prepare(shape), ResultBody::Prepared(p)) => {
                        shared.learn_prepared(&shape, &p.metadata.columns);
                        if let Shape::Read(read) = &shape {
                            shared.learn_rows(read, &p.result_metadata);
                        }
                        let mut prepared = shared.prepared.borrow_mut();
                        if prepared.len() >= MAX_PREPARED {
                            prepared.clear();
                        }
                        prepared.insert(p.id.clone(), Rc::new(Prepared { shape, bind: p.metadata.columns.clone() }));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// What is asked of Valkey once Cassandra has answered.
enum Post {
    Fill { lookup: Lookup, gens: Generations, frame: Bytes },
    Invalidate(Target),
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

/// A stored answer, as the answer to `request`.
fn hit(request: &Message, stream_id: i16, frame: &Bytes) -> Message {
    let mut bytes = BytesMut::from(&frame[..]);
    if let Some(id) = bytes.get_mut(2..4) {
        id.copy_from_slice(&stream_id.to_be_bytes());
    }
    let mut answer = Message::from_cql(bytes.freeze(), Compression::None, Instant::now());
    answer.set_request_id(request.id());
    answer
}

impl ValkeyCache {
    /// Runs `commands` on the cache, after the table invalidations that failed before, and
    /// returns their replies; `None` when the cache cannot be used: it is down, or failed
    /// now (an error reply to any command counts: the batch is treated as one).
    async fn ask(&mut self, mut commands: Vec<Message>) -> Option<Vec<Message>> {
        let shared = self.shared.clone();
        if !shared.health.usable() {
            return None;
        }
        let dirty = shared.health.dirty();
        let mut all: Vec<Message> = dirty
            .iter()
            .filter_map(|e| shared.entries.get(*e))
            .map(|e| store::invalidate_table(&key::table(&e.name)))
            .collect();
        let skip = all.len();
        all.append(&mut commands);
        let count = all.len();
        let mut replies = match self.cache.process_complete(all).await {
            Ok(replies) => replies,
            Err(e) => {
                shared.health.failed(&e.to_string());
                return None;
            }
        };
        replies.retain(|r| !r.is_pushed());
        if replies.len() != count {
            shared.health.failed("the cache chain answered a different number of commands");
            return None;
        }
        for reply in &mut replies {
            if let Err(e) = store::succeeded(reply) {
                shared.health.failed(&e);
                return None;
            }
        }
        shared.health.worked();
        shared.health.clean(&dirty);
        shared.invalidations.inc_by(skip as u64);
        Some(replies.split_off(skip))
    }

    /// Looks reads up: hits are answered, misses (and all when the cache fails) go on.
    async fn look_up(
        &mut self,
        lookups: Vec<(Message, Lookup)>,
        state: &mut ChainState<'_>,
        answers: &mut Vec<Message>,
    ) {
        let commands = lookups.iter().map(|(_, l)| {
            let table = self.shared.entries.get(l.entry).map(|e| key::table(&e.name)).unwrap_or_default();
            store::lookup(&l.partition, &table, &l.field)
        });
        let commands: Vec<Message> = commands.collect();
        let count = commands.len() as u64;
        let Some(mut replies) = self.ask(commands).await else {
            self.shared.errors.inc_by(count);
            state.requests.extend(lookups.into_iter().map(|(r, _)| r));
            return;
        };
        for ((request, lookup), reply) in lookups.into_iter().zip(replies.iter_mut()) {
            let Some(header) = request.cql_header() else { continue };
            match store::found(reply) {
                Ok(Found::Hit(frame)) => {
                    self.shared.hits.inc();
                    answers.push(hit(&request, header.stream_id, &frame));
                }
                Ok(Found::Miss(gens)) => {
                    self.shared.misses.inc();
                    self.waiting.insert(header.stream_id, Waiting::Fill { lookup, gens });
                    state.requests.push(request);
                }
                Err(e) => {
                    self.shared.errors.inc();
                    self.shared.health.failed(&e);
                    state.requests.push(request);
                }
            }
        }
    }

    /// Stores answers and invalidates what writes changed, before their answers go back.
    async fn post(&mut self, posts: Vec<Post>) {
        let shared = self.shared.clone();
        let table_key = |entry: usize| shared.entries.get(entry).map(|e| key::table(&e.name)).unwrap_or_default();
        let commands: Vec<Message> = posts
            .iter()
            .map(|p| match p {
                Post::Fill { lookup, gens, frame } => {
                    store::fill(&lookup.partition, &table_key(lookup.entry), &lookup.field, gens, frame)
                }
                Post::Invalidate(Target::Partition { key, .. }) => store::invalidate(key),
                Post::Invalidate(Target::Table(entry)) => store::invalidate_table(&table_key(*entry)),
            })
            .collect();
        let count = commands.len() as u64;
        if self.ask(commands).await.is_some() {
            let invalidations = posts.iter().filter(|p| matches!(p, Post::Invalidate(_))).count();
            shared.invalidations.inc_by(invalidations as u64);
            return;
        }
        shared.errors.inc_by(count);
        for post in &posts {
            if let Post::Invalidate(Target::Partition { entry, .. } | Target::Table(entry)) = post {
                // Its rows in the cache may be stale now: the whole table is invalidated
                // before the cache is used again.
                shared.health.mark_dirty(*entry);
            }
        }
    }
}

#[async_trait(?Send)]
impl Transform for ValkeyCache {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
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
        let mut responses = state.call_next_transform().await?;
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
