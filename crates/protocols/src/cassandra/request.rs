//! Request bodies: STARTUP, QUERY, PREPARE, EXECUTE, BATCH and REGISTER (OPTIONS has no
//! body; AUTH_RESPONSE is one `[bytes]` token, kept in [`super::CassandraBody`]).
//!
//! ```text
//! STARTUP   [string map] of options: CQL_VERSION, COMPRESSION, DRIVER_NAME, ...
//! QUERY     [long string] query, then the query parameters:
//!           <consistency><flags>[<n>[name_1]<value_1>...][<page_size>][<paging_state>]
//!           [<serial_consistency>][<timestamp>][<keyspace> v5][<now_in_seconds> v5]
//!           (flags are a [byte] in v3/v4 and an [int] in v5)
//! PREPARE   [long string] query; v5 adds [int] flags and an optional [string] keyspace
//! EXECUTE   [short bytes] id; v5 adds [short bytes] result metadata id; query parameters
//! BATCH     <type><n><query_1>...<query_n><consistency><flags>[<serial_consistency>]
//!           [<timestamp>][<keyspace> v5][<now_in_seconds> v5], each query being
//!           <kind 0: [long string] | kind 1: [short bytes] id><n>[name_1]<value_1>...
//! REGISTER  [string list] of event types
//! ```

use super::wire::{self, Reader};
use super::{CassandraCodecError, Consistency, Result, Version};
use bytes::Bytes;

pub use super::wire::Value;

/// Query parameter flag bits (QUERY and EXECUTE; BATCH uses the ones from 0x10 up).
pub mod query_flags {
    pub const VALUES: u32 = 0x01;
    pub const SKIP_METADATA: u32 = 0x02;
    pub const PAGE_SIZE: u32 = 0x04;
    pub const WITH_PAGING_STATE: u32 = 0x08;
    pub const WITH_SERIAL_CONSISTENCY: u32 = 0x10;
    pub const WITH_DEFAULT_TIMESTAMP: u32 = 0x20;
    pub const WITH_NAMES_FOR_VALUES: u32 = 0x40;
    /// v5 only.
    pub const WITH_KEYSPACE: u32 = 0x80;
    /// v5 only.
    pub const WITH_NOW_IN_SECONDS: u32 = 0x100;
}
use query_flags::*;

/// STARTUP: the connection's options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Startup {
    /// In wire order.
    pub options: Vec<(String, String)>,
}

impl Startup {
    /// The value of an option, by exact name (`CQL_VERSION`, `COMPRESSION`, ...).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub(crate) fn parse(r: &mut Reader) -> Result<Self> {
        Ok(Startup { options: r.string_map("startup options")? })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        wire::put_string_map(out, &self.options, "startup options")
    }
}

/// Bound values: by position, or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    Positional(Vec<Value>),
    Named(Vec<(String, Value)>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Positional(v) => v.len(),
            Values::Named(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn parse(r: &mut Reader, named: bool) -> Result<Self> {
        let n = r.u16("number of values")?;
        if named {
            Ok(Values::Named((0..n).map(|_| Ok((r.string("value name")?, r.value("value")?))).collect::<Result<_>>()?))
        } else {
            Ok(Values::Positional((0..n).map(|_| r.value("value")).collect::<Result<_>>()?))
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        wire::put_short_count(out, self.len(), "number of values")?;
        match self {
            Values::Positional(values) => values.iter().try_for_each(|v| wire::put_value(out, v, "value")),
            Values::Named(values) => values.iter().try_for_each(|(name, v)| {
                wire::put_string(out, name, "value name")?;
                wire::put_value(out, v, "value")
            }),
        }
    }
}

/// The parameters shared by QUERY and EXECUTE.
///
/// On encoding, the flags that say which optional fields are present are recomputed from
/// the fields; other bits (such as [`query_flags::SKIP_METADATA`]) are written as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryParams {
    pub consistency: Consistency,
    /// The flags as received.
    pub flags: u32,
    pub values: Option<Values>,
    pub page_size: Option<i32>,
    /// A null paging state reads as `None`.
    pub paging_state: Option<Bytes>,
    pub serial_consistency: Option<Consistency>,
    /// Default timestamp, microseconds.
    pub timestamp: Option<i64>,
    /// v5 only.
    pub keyspace: Option<String>,
    /// v5 only.
    pub now_in_seconds: Option<i32>,
}

impl QueryParams {
    /// Parameters with only a consistency.
    pub fn new(consistency: Consistency) -> Self {
        QueryParams {
            consistency,
            flags: 0,
            values: None,
            page_size: None,
            paging_state: None,
            serial_consistency: None,
            timestamp: None,
            keyspace: None,
            now_in_seconds: None,
        }
    }

    pub(crate) fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        let consistency = r.consistency("consistency")?;
        let flags = read_flags(r, version, "query flags")?;
        let has = |bit: u32| flags & bit != 0;
        let v5 = version >= Version::V5;
        Ok(QueryParams {
            consistency,
            flags,
            values: if has(VALUES) { Some(Values::parse(r, has(WITH_NAMES_FOR_VALUES))?) } else { None },
            page_size: if has(PAGE_SIZE) { Some(r.i32("page size")?) } else { None },
            paging_state: if has(WITH_PAGING_STATE) { r.bytes("paging state")? } else { None },
            serial_consistency: if has(WITH_SERIAL_CONSISTENCY) {
                Some(r.consistency("serial consistency")?)
            } else {
                None
            },
            timestamp: if has(WITH_DEFAULT_TIMESTAMP) { Some(r.i64("timestamp")?) } else { None },
            keyspace: if v5 && has(WITH_KEYSPACE) { Some(r.string("keyspace")?) } else { None },
            now_in_seconds: if v5 && has(WITH_NOW_IN_SECONDS) { Some(r.i32("now in seconds")?) } else { None },
        })
    }

    /// The flags that match the fields.
    pub fn effective_flags(&self) -> u32 {
        let presence = VALUES
            | PAGE_SIZE
            | WITH_PAGING_STATE
            | WITH_SERIAL_CONSISTENCY
            | WITH_DEFAULT_TIMESTAMP
            | WITH_NAMES_FOR_VALUES
            | WITH_KEYSPACE
            | WITH_NOW_IN_SECONDS;
        let mut flags = self.flags & !presence;
        let mut set = |bit: u32, on: bool| {
            if on {
                flags |= bit
            }
        };
        set(VALUES, self.values.is_some());
        set(WITH_NAMES_FOR_VALUES, matches!(self.values, Some(Values::Named(_))));
        set(PAGE_SIZE, self.page_size.is_some());
        set(WITH_PAGING_STATE, self.paging_state.is_some());
        set(WITH_SERIAL_CONSISTENCY, self.serial_consistency.is_some());
        set(WITH_DEFAULT_TIMESTAMP, self.timestamp.is_some());
        set(WITH_KEYSPACE, self.keyspace.is_some());
        set(WITH_NOW_IN_SECONDS, self.now_in_seconds.is_some());
        flags
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        wire::put_consistency(out, self.consistency);
        write_flags(out, self.effective_flags(), version)?;
        if let Some(values) = &self.values {
            values.encode(out)?;
        }
        if let Some(n) = self.page_size {
            wire::put_i32(out, n);
        }
        if let Some(state) = &self.paging_state {
            wire::put_bytes(out, Some(state), "paging state")?;
        }
        if let Some(c) = self.serial_consistency {
            wire::put_consistency(out, c);
        }
        if let Some(t) = self.timestamp {
            wire::put_i64(out, t);
        }
        encode_v5_tail(out, version, self.keyspace.as_deref(), self.now_in_seconds)
    }
}

/// Query flags: a [byte] before v5, an [int] from v5.
fn read_flags(r: &mut Reader, version: Version, what: &'static str) -> Result<u32> {
    if version >= Version::V5 {
        Ok(r.i32(what)? as u32)
    } else {
        Ok(u32::from(r.u8(what)?))
    }
}

fn write_flags(out: &mut Vec<u8>, flags: u32, version: Version) -> Result<()> {
    if version >= Version::V5 {
        wire::put_i32(out, flags as i32);
    } else {
        let byte = u8::try_from(flags).map_err(|_| CassandraCodecError::InvalidValue {
            what: "query flags before v5",
            value: i64::from(flags),
        })?;
        out.push(byte);
    }
    Ok(())
}

fn encode_v5_tail(out: &mut Vec<u8>, version: Version, keyspace: Option<&str>, now: Option<i32>) -> Result<()> {
    if version < Version::V5 && (keyspace.is_some() || now.is_some()) {
        return Err(CassandraCodecError::InvalidValue { what: "keyspace or now_in_seconds before v5", value: 0 });
    }
    if let Some(ks) = keyspace {
        wire::put_string(out, ks, "keyspace")?;
    }
    if let Some(now) = now {
        wire::put_i32(out, now);
    }
    Ok(())
}

/// QUERY: a CQL statement and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub query: String,
    pub params: QueryParams,
}

impl Query {
    pub(crate) fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        Ok(Query { query: r.long_string("query")?, params: QueryParams::parse(r, version)? })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        wire::put_long_string(out, &self.query, "query")?;
        self.params.encode(out, version)
    }
}

/// PREPARE: a statement to prepare, and (v5) the keyspace to prepare it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepare {
    pub query: String,
    /// v5 only.
    pub keyspace: Option<String>,
}

impl Prepare {
    pub(crate) fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        let query = r.long_string("query")?;
        let mut keyspace = None;
        if version >= Version::V5 && r.i32("prepare flags")? & 0x01 != 0 {
            keyspace = Some(r.string("keyspace")?);
        }
        Ok(Prepare { query, keyspace })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        wire::put_long_string(out, &self.query, "query")?;
        if version >= Version::V5 {
            wire::put_i32(out, i32::from(self.keyspace.is_some()));
        }
        encode_v5_tail(out, version, self.keyspace.as_deref(), None)
    }
}

/// EXECUTE: a prepared statement's id and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub id: Bytes,
    /// v5 only (and always there in v5).
    pub result_metadata_id: Option<Bytes>,
    pub params: QueryParams,
}

impl Execute {
    pub(crate) fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        let id = r.short_bytes("prepared id")?;
        let result_metadata_id = if version >= Version::V5 { Some(r.short_bytes("result metadata id")?) } else { None };
        Ok(Execute { id, result_metadata_id, params: QueryParams::parse(r, version)? })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        wire::put_short_bytes(out, &self.id, "prepared id")?;
        if version >= Version::V5 {
            wire::put_short_bytes(out, self.result_metadata_id.as_deref().unwrap_or_default(), "result metadata id")?;
        }
        self.params.encode(out, version)
    }
}

/// What a batch statement runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchQuery {
    /// Kind 0: a query string.
    Query(String),
    /// Kind 1: a prepared statement's id.
    Prepared(Bytes),
}

/// One statement of a BATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStatement {
    pub query: BatchQuery,
    /// Named only when the batch has the names flag (which Cassandra never implemented).
    pub values: Values,
}

/// BATCH: statements run together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// 0 logged, 1 unlogged, 2 counter.
    pub kind: u8,
    pub statements: Vec<BatchStatement>,
    pub consistency: Consistency,
    /// The flags as received; presence bits are recomputed on encoding.
    pub flags: u32,
    pub serial_consistency: Option<Consistency>,
    pub timestamp: Option<i64>,
    /// v5 only.
    pub keyspace: Option<String>,
    /// v5 only.
    pub now_in_seconds: Option<i32>,
}

impl Batch {
    pub(crate) fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        let kind = r.u8("batch type")?;
        if kind > 2 {
            return Err(CassandraCodecError::InvalidValue { what: "batch type", value: i64::from(kind) });
        }
        // The names flag comes after the statements it shapes: read them without names, and
        // again with names if the flags then ask for them.
        let start = r.position();
        let (statements, tail) = match Self::parse_statements(r, false) {
            Ok(statements) => {
                let tail = BatchTail::parse(r, version)?;
                if tail.flags & WITH_NAMES_FOR_VALUES == 0 {
                    (statements, tail)
                } else {
                    r.seek(start);
                    (Self::parse_statements(r, true)?, BatchTail::parse(r, version)?)
                }
            }
            Err(first) => {
                r.seek(start);
                let statements = Self::parse_statements(r, true).map_err(|_| first.clone())?;
                let tail = BatchTail::parse(r, version).map_err(|_| first.clone())?;
                if tail.flags & WITH_NAMES_FOR_VALUES == 0 {
                    return Err(first);
                }
                (statements, tail)
            }
        };
        Ok(Batch {
            kind,
            statements,
            consistency: tail.consistency,
            flags: tail.flags,
            serial_consistency: tail.serial_consistency,
            timestamp: tail.timestamp,
            keyspace: tail.keyspace,
            now_in_seconds: tail.now_in_seconds,
        })
    }

    fn parse_statements(r: &mut Reader, named: bool) -> Result<Vec<BatchStatement>> {
        let n = r.u16("number of batch statements")?;
        (0..n)
            .map(|_| {
                let query = match r.u8("batch statement kind")? {
                    0 => BatchQuery::Query(r.long_string("batch query")?),
                    1 => BatchQuery::Prepared(r.short_bytes("batch prepared id")?),
                    k => {
                        return Err(CassandraCodecError::InvalidValue {
                            what: "batch statement kind",
                            value: i64::from(k),
                        })
                    }
                };
                Ok(BatchStatement { query, values: Values::parse(r, named)? })
            })
            .collect()
    }

    /// The flags that match the fields.
    pub fn effective_flags(&self) -> u32 {
        let presence = WITH_SERIAL_CONSISTENCY
            | WITH_DEFAULT_TIMESTAMP
            | WITH_NAMES_FOR_VALUES
            | WITH_KEYSPACE
            | WITH_NOW_IN_SECONDS;
        let mut flags = self.flags & !presence;
        for (bit, on) in [
            (WITH_SERIAL_CONSISTENCY, self.serial_consistency.is_some()),
            (WITH_DEFAULT_TIMESTAMP, self.timestamp.is_some()),
            (WITH_NAMES_FOR_VALUES, self.statements.iter().any(|s| matches!(s.values, Values::Named(_)))),
            (WITH_KEYSPACE, self.keyspace.is_some()),
            (WITH_NOW_IN_SECONDS, self.now_in_seconds.is_some()),
        ] {
            if on {
                flags |= bit;
            }
        }
        flags
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        let flags = self.effective_flags();
        let named = flags & WITH_NAMES_FOR_VALUES != 0;
        out.push(self.kind);
        wire::put_short_count(out, self.statements.len(), "number of batch statements")?;
        for statement in &self.statements {
            match &statement.query {
                BatchQuery::Query(q) => {
                    out.push(0);
                    wire::put_long_string(out, q, "batch query")?;
                }
                BatchQuery::Prepared(id) => {
                    out.push(1);
                    wire::put_short_bytes(out, id, "batch prepared id")?;
                }
            }
            if named && matches!(statement.values, Values::Positional(ref v) if !v.is_empty()) {
                return Err(CassandraCodecError::InvalidValue {
                    what: "batch mixing named and positional values",
                    value: 0,
                });
            }
            statement.values.encode(out)?;
        }
        wire::put_consistency(out, self.consistency);
        write_flags(out, flags, version)?;
        if let Some(c) = self.serial_consistency {
            wire::put_consistency(out, c);
        }
        if let Some(t) = self.timestamp {
            wire::put_i64(out, t);
        }
        encode_v5_tail(out, version, self.keyspace.as_deref(), self.now_in_seconds)
    }
}

/// What follows a batch's statements.
struct BatchTail {
    consistency: Consistency,
    flags: u32,
    serial_consistency: Option<Consistency>,
    timestamp: Option<i64>,
    keyspace: Option<String>,
    now_in_seconds: Option<i32>,
}

impl BatchTail {
    fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        let consistency = r.consistency("consistency")?;
        let flags = read_flags(r, version, "batch flags")?;
        let has = |bit: u32| flags & bit != 0;
        let v5 = version >= Version::V5;
        Ok(BatchTail {
            consistency,
            flags,
            serial_consistency: if has(WITH_SERIAL_CONSISTENCY) {
                Some(r.consistency("serial consistency")?)
            } else {
                None
            },
            timestamp: if has(WITH_DEFAULT_TIMESTAMP) { Some(r.i64("timestamp")?) } else { None },
            keyspace: if v5 && has(WITH_KEYSPACE) { Some(r.string("keyspace")?) } else { None },
            now_in_seconds: if v5 && has(WITH_NOW_IN_SECONDS) { Some(r.i32("now in seconds")?) } else { None },
        })
    }
}

/// REGISTER: the event types to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub events: Vec<String>,
}

impl Register {
    pub(crate) fn parse(r: &mut Reader) -> Result<Self> {
        Ok(Register { events: r.string_list("event types")? })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        wire::put_string_list(out, &self.events, "event types")
    }
}
