//! What ValkeyCache keeps beyond one connection: per core (the tables, learnt column types
//! and prepared statements, the cache's health, the counters) and per process (which
//! tables must be invalidated whole before the cache is used again).

use super::shape::{self, Read, Shape};
use super::store::Health;
use crate::chain::BuildContext;
use bytes::Bytes;
use prometheus::IntCounter;
use shotover_protocols::cassandra::result::{ColumnSpec, ColumnType, RowsMetadata};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// At most this many prepared statements are remembered per core; then the memory starts
/// afresh (their EXECUTEs get UNPREPARED once and are learnt again).
const MAX_PREPARED: usize = 100_000;

/// A cached table, as configured.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// `keyspace.table` or `table`, as written: it names the entry's keys in Valkey.
    pub(super) name: String,
    /// `None`: the table of that name in any keyspace.
    pub(super) keyspace: Option<String>,
    pub(super) table: String,
    pub(super) partition_key: Vec<String>,
    pub(super) range_key: Vec<String>,
}

/// Whether an entry must be invalidated whole before the cache is used again, shared by
/// every core: marked when an invalidation may have been lost (Valkey failed, or the write's
/// answer never came), cleaned up to the mark a successful invalidation started from, so a
/// mark made meanwhile is not lost.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    marked: AtomicU64,
    cleaned: AtomicU64,
}

/// Learnt column types of one keyspace: table → column → type.
type Tables = HashMap<String, HashMap<String, ColumnType>>;

/// Every entry's [`Dirty`], shared by the cores of one topology.
pub(crate) type DirtyTables = Arc<Vec<Dirty>>;

/// A prepared statement, as far as the cache cares.
pub(super) struct Prepared {
    pub(super) shape: Shape,
    /// The bind markers' names and types.
    pub(super) bind: Vec<ColumnSpec>,
}

/// What the connections of one core share.
pub(crate) struct Shared {
    pub(super) entries: Vec<Entry>,
    /// The cached tables' names, lowercased, for a cheap test of each QUERY.
    names: Vec<String>,
    /// Column types of cached tables, keyspace → table → column, learnt from the metadata
    /// that passes: a read's literals are cached only once their column's type is known.
    /// Nested so that a lookup by `&str` allocates nothing.
    types: RefCell<HashMap<String, Tables>>,
    pub(super) prepared: RefCell<HashMap<Bytes, Rc<Prepared>>>,
    pub(super) health: Health,
    dirty: DirtyTables,
    pub(super) hits: IntCounter,
    pub(super) misses: IntCounter,
    pub(super) invalidations: IntCounter,
    pub(super) errors: IntCounter,
}

impl Shared {
    pub(super) fn new(entries: Vec<Entry>, dirty: DirtyTables, ctx: &BuildContext) -> Self {
        let chain = [ctx.chain_name.as_str()];
        let m = &ctx.metrics;
        Shared {
            names: entries.iter().map(|e| e.table.to_ascii_lowercase()).collect(),
            entries,
            types: RefCell::new(HashMap::new()),
            prepared: RefCell::new(HashMap::new()),
            health: Health::default(),
            dirty,
            hits: m.cache_hits.with_label_values(&chain),
            misses: m.cache_misses.with_label_values(&chain),
            invalidations: m.cache_invalidations.with_label_values(&chain),
            errors: m.cache_errors.with_label_values(&chain),
        }
    }

    /// Whether `cql` may name a cached table (or is a USE): made on every QUERY, so it
    /// allocates nothing.
    pub(super) fn may_concern(&self, cql: &str) -> bool {
        let bytes = cql.as_bytes();
        let head = cql.trim_start().as_bytes();
        head.get(..3).is_some_and(|w| w.eq_ignore_ascii_case(b"use"))
            || head.first().is_some_and(|b| matches!(b, b'-' | b'/'))
            || self.names.iter().any(|t| bytes.windows(t.len()).any(|w| w.eq_ignore_ascii_case(t.as_bytes())))
            || self.entries.iter().any(|e| e.keyspace.is_none()) && memchr_keyspace(bytes)
    }

    /// Marks entries to be invalidated whole before the cache is used again.
    pub(super) fn mark_dirty(&self, entries: impl IntoIterator<Item = usize>) {
        for e in entries {
            if let Some(d) = self.dirty.get(e) {
                d.marked.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Every entry: after a failure the cache may have lost invalidations, or come back
    /// from an older snapshot.
    pub(super) fn mark_all_dirty(&self) {
        self.mark_dirty(0..self.entries.len());
    }

    /// The entries to invalidate whole, each with the mark it is cleaned up to once done.
    pub(super) fn dirty(&self) -> Vec<(usize, u64)> {
        let pending = |(i, d): (usize, &Dirty)| {
            let marked = d.marked.load(Ordering::Acquire);
            (marked > d.cleaned.load(Ordering::Acquire)).then_some((i, marked))
        };
        self.dirty.iter().enumerate().filter_map(pending).collect()
    }

    pub(super) fn clean(&self, done: &[(usize, u64)]) {
        for (e, upto) in done {
            if let Some(d) = self.dirty.get(*e) {
                d.cleaned.fetch_max(*upto, Ordering::AcqRel);
            }
        }
    }

    pub(super) fn type_of(&self, keyspace: &str, table: &str, column: &str) -> Option<ColumnType> {
        self.types.borrow().get(keyspace)?.get(table)?.get(column).cloned()
    }

    fn learn(&self, keyspace: &str, table: &str, column: &str, t: &ColumnType) {
        if self.type_of(keyspace, table, column).as_ref() == Some(t) {
            return;
        }
        let mut types = self.types.borrow_mut();
        let tables = types.entry(keyspace.to_string()).or_default();
        tables.entry(table.to_string()).or_default().insert(column.to_string(), t.clone());
    }

    /// Learns the types of a read's result columns that are table columns by name.
    pub(super) fn learn_rows(&self, read: &Read, metadata: &RowsMetadata) {
        for (i, spec) in metadata.columns.iter().enumerate() {
            let table = spec.table_spec.as_ref().or(metadata.global_table_spec.as_ref());
            if table.is_none_or(|t| t.keyspace != read.keyspace || t.table != read.table) {
                continue;
            }
            let column = match &read.columns {
                None => Some(spec.name.as_str()),
                Some(columns) => columns.get(i).and_then(Option::as_deref),
            };
            // A column selected as itself is reported under its own name; anything else
            // (JSON, a function) is not the column.
            if let Some(column) = column.filter(|c| *c == spec.name) {
                self.learn(&read.keyspace, &read.table, column, &spec.col_type);
            }
        }
    }

    /// Learns the types of the key columns a prepared statement binds with `?`.
    pub(super) fn learn_prepared(&self, shape: &Shape, bind: &[ColumnSpec]) {
        let learn = |keyspace: &str, table: &str, parts: &[shape::Part]| {
            for (column, src) in parts {
                if let shape::Src::Marker { index, name: None } = src {
                    if let Some(spec) = bind.get(*index).filter(|s| s.name == *column) {
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

    pub(super) fn remember(&self, id: Bytes, prepared: Prepared) {
        let mut all = self.prepared.borrow_mut();
        if all.len() >= MAX_PREPARED {
            all.clear();
        }
        all.insert(id, Rc::new(prepared));
    }
}

/// Whether `cql` holds the word KEYSPACE (any case): a DROP or ALTER KEYSPACE may concern a
/// table cached in any keyspace.
fn memchr_keyspace(bytes: &[u8]) -> bool {
    bytes.windows(8).any(|w| w.eq_ignore_ascii_case(b"keyspace"))
}
