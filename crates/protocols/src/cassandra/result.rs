//! RESULT bodies, and rows that a transform can read and rewrite cell by cell.
//!
//! ```text
//! RESULT     [int] kind: 1 Void, 2 Rows, 3 Set_keyspace, 4 Prepared, 5 Schema_change
//! Rows       <metadata>[int] rows_count, then rows_count x columns_count [bytes] cells
//! metadata   [int] flags, [int] columns_count, [bytes] paging_state if HAS_MORE_PAGES,
//!            [short bytes] new_metadata_id if METADATA_CHANGED (v5), and unless NO_METADATA:
//!            [string][string] global keyspace, table if GLOBAL_TABLES_SPEC,
//!            then per column: ([string] keyspace [string] table)? [string] name [option] type
//! Prepared   [short bytes] id, [short bytes] result_metadata_id (v5),
//!            [int] flags [int] columns_count [int] pk_count (v4+) [short]... pk indexes,
//!            global spec and column specs as above, then the result <metadata>
//! ```
//!
//! Cells stay raw bytes that share the frame's memory; decode one with the typed functions
//! of `cassandra_protocol::types::data_serialization_types` (`decode_int`, `decode_inet`,
//! `decode_varchar`, ...), which check their input's length. To rewrite a cell, find its
//! column with [`Rows::column_index`], replace it with [`Rows::set_cell`], and encode the frame.

use super::response::SchemaChange;
use super::wire::{self, Reader};
use super::{CassandraCodecError, Result, Version};
use bytes::Bytes;

/// Rows metadata flag bits.
pub mod metadata_flags {
    pub const GLOBAL_TABLES_SPEC: i32 = 0x0001;
    pub const HAS_MORE_PAGES: i32 = 0x0002;
    pub const NO_METADATA: i32 = 0x0004;
    /// v5 only.
    pub const METADATA_CHANGED: i32 = 0x0008;
}
use metadata_flags::*;

/// Deepest nesting of collection, tuple and UDT types accepted.
pub const MAX_TYPE_DEPTH: usize = 32;
/// Most rows accepted in a result without columns, where rows take no bytes to count.
const MAX_EMPTY_ROWS: usize = 1 << 16;

/// A RESULT body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultBody {
    Void,
    Rows(Rows),
    SetKeyspace(String),
    Prepared(Prepared),
    SchemaChange(SchemaChange),
}

impl ResultBody {
    pub(crate) fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        Ok(match r.i32("result kind")? {
            1 => ResultBody::Void,
            2 => ResultBody::Rows(Rows::parse(r)?),
            3 => ResultBody::SetKeyspace(r.string("keyspace")?),
            4 => ResultBody::Prepared(Prepared::parse(r, version)?),
            5 => ResultBody::SchemaChange(SchemaChange::parse(r)?),
            kind => return Err(CassandraCodecError::InvalidValue { what: "result kind", value: i64::from(kind) }),
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        match self {
            ResultBody::Void => wire::put_i32(out, 1),
            ResultBody::Rows(rows) => {
                wire::put_i32(out, 2);
                rows.encode(out)?;
            }
            ResultBody::SetKeyspace(ks) => {
                wire::put_i32(out, 3);
                wire::put_string(out, ks, "keyspace")?;
            }
            ResultBody::Prepared(prepared) => {
                wire::put_i32(out, 4);
                prepared.encode(out, version)?;
            }
            ResultBody::SchemaChange(change) => {
                wire::put_i32(out, 5);
                change.encode(out)?;
            }
        }
        Ok(())
    }
}

/// A keyspace and table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub keyspace: String,
    pub table: String,
}

impl TableSpec {
    fn parse(r: &mut Reader) -> Result<Self> {
        Ok(TableSpec { keyspace: r.string("keyspace name")?, table: r.string("table name")? })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        wire::put_string(out, &self.keyspace, "keyspace name")?;
        wire::put_string(out, &self.table, "table name")
    }
}

/// A column's (or bind marker's) name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Present when the metadata has no global table spec.
    pub table_spec: Option<TableSpec>,
    pub name: String,
    pub col_type: ColumnType,
}

/// A CQL type, as an `[option]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// A Java class name.
    Custom(String),
    Ascii,
    Bigint,
    Blob,
    Boolean,
    Counter,
    Decimal,
    Double,
    Float,
    Int,
    Timestamp,
    Uuid,
    /// `text` and `varchar`.
    Varchar,
    Varint,
    Timeuuid,
    Inet,
    Date,
    Time,
    Smallint,
    Tinyint,
    Duration,
    List(Box<ColumnType>),
    Map(Box<ColumnType>, Box<ColumnType>),
    Set(Box<ColumnType>),
    Udt {
        keyspace: String,
        name: String,
        fields: Vec<(String, ColumnType)>,
    },
    Tuple(Vec<ColumnType>),
}

impl ColumnType {
    fn parse(r: &mut Reader, depth: usize) -> Result<Self> {
        if depth > MAX_TYPE_DEPTH {
            return Err(CassandraCodecError::TooDeep(MAX_TYPE_DEPTH));
        }
        let inner = |r: &mut Reader| ColumnType::parse(r, depth + 1).map(Box::new);
        Ok(match r.u16("column type")? {
            0x0000 => ColumnType::Custom(r.string("custom type")?),
            0x0001 => ColumnType::Ascii,
            0x0002 => ColumnType::Bigint,
            0x0003 => ColumnType::Blob,
            0x0004 => ColumnType::Boolean,
            0x0005 => ColumnType::Counter,
            0x0006 => ColumnType::Decimal,
            0x0007 => ColumnType::Double,
            0x0008 => ColumnType::Float,
            0x0009 => ColumnType::Int,
            0x000B => ColumnType::Timestamp,
            0x000C => ColumnType::Uuid,
            0x000D => ColumnType::Varchar,
            0x000E => ColumnType::Varint,
            0x000F => ColumnType::Timeuuid,
            0x0010 => ColumnType::Inet,
            0x0011 => ColumnType::Date,
            0x0012 => ColumnType::Time,
            0x0013 => ColumnType::Smallint,
            0x0014 => ColumnType::Tinyint,
            0x0015 => ColumnType::Duration,
            0x0020 => ColumnType::List(inner(r)?),
            0x0021 => ColumnType::Map(inner(r)?, inner(r)?),
            0x0022 => ColumnType::Set(inner(r)?),
            0x0030 => {
                let keyspace = r.string("udt keyspace")?;
                let name = r.string("udt name")?;
                let n = r.u16("udt field count")?;
                let fields = (0..n)
                    .map(|_| Ok((r.string("udt field name")?, ColumnType::parse(r, depth + 1)?)))
                    .collect::<Result<_>>()?;
                ColumnType::Udt { keyspace, name, fields }
            }
            0x0031 => {
                let n = r.u16("tuple size")?;
                ColumnType::Tuple((0..n).map(|_| ColumnType::parse(r, depth + 1)).collect::<Result<_>>()?)
            }
            id => return Err(CassandraCodecError::InvalidValue { what: "column type", value: i64::from(id) }),
        })
    }

    fn id(&self) -> u16 {
        match self {
            ColumnType::Custom(_) => 0x0000,
            ColumnType::Ascii => 0x0001,
            ColumnType::Bigint => 0x0002,
            ColumnType::Blob => 0x0003,
            ColumnType::Boolean => 0x0004,
            ColumnType::Counter => 0x0005,
            ColumnType::Decimal => 0x0006,
            ColumnType::Double => 0x0007,
            ColumnType::Float => 0x0008,
            ColumnType::Int => 0x0009,
            ColumnType::Timestamp => 0x000B,
            ColumnType::Uuid => 0x000C,
            ColumnType::Varchar => 0x000D,
            ColumnType::Varint => 0x000E,
            ColumnType::Timeuuid => 0x000F,
            ColumnType::Inet => 0x0010,
            ColumnType::Date => 0x0011,
            ColumnType::Time => 0x0012,
            ColumnType::Smallint => 0x0013,
            ColumnType::Tinyint => 0x0014,
            ColumnType::Duration => 0x0015,
            ColumnType::List(_) => 0x0020,
            ColumnType::Map(..) => 0x0021,
            ColumnType::Set(_) => 0x0022,
            ColumnType::Udt { .. } => 0x0030,
            ColumnType::Tuple(_) => 0x0031,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        wire::put_u16(out, self.id());
        match self {
            ColumnType::Custom(class) => wire::put_string(out, class, "custom type")?,
            ColumnType::List(t) | ColumnType::Set(t) => t.encode(out)?,
            ColumnType::Map(k, v) => {
                k.encode(out)?;
                v.encode(out)?;
            }
            ColumnType::Udt { keyspace, name, fields } => {
                wire::put_string(out, keyspace, "udt keyspace")?;
                wire::put_string(out, name, "udt name")?;
                wire::put_short_count(out, fields.len(), "udt field count")?;
                for (field, t) in fields {
                    wire::put_string(out, field, "udt field name")?;
                    t.encode(out)?;
                }
            }
            ColumnType::Tuple(types) => {
                wire::put_short_count(out, types.len(), "tuple size")?;
                types.iter().try_for_each(|t| t.encode(out))?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads `count` column specs (count from the wire: the loop stops at the first missing one).
fn parse_column_specs(r: &mut Reader, count: usize, global: bool) -> Result<Vec<ColumnSpec>> {
    let mut columns = Vec::new();
    for _ in 0..count {
        let table_spec = if global { None } else { Some(TableSpec::parse(r)?) };
        columns.push(ColumnSpec { table_spec, name: r.string("column name")?, col_type: ColumnType::parse(r, 0)? });
    }
    Ok(columns)
}

fn encode_column_specs(out: &mut Vec<u8>, columns: &[ColumnSpec], global: bool) -> Result<()> {
    for c in columns {
        match (&c.table_spec, global) {
            (Some(spec), false) => spec.encode(out)?,
            (None, true) => {}
            _ => return Err(CassandraCodecError::InvalidValue { what: "column table spec presence", value: 0 }),
        }
        wire::put_string(out, &c.name, "column name")?;
        c.col_type.encode(out)?;
    }
    Ok(())
}

/// The metadata of a set of rows.
///
/// On encoding, HAS_MORE_PAGES, METADATA_CHANGED and GLOBAL_TABLES_SPEC follow the fields;
/// unless NO_METADATA is set, the column count is the number of `columns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsMetadata {
    /// The flags as received.
    pub flags: i32,
    /// Cells per row. Equal to `columns.len()` unless NO_METADATA is set.
    pub columns_count: usize,
    pub paging_state: Option<Bytes>,
    /// v5 only.
    pub new_metadata_id: Option<Bytes>,
    pub global_table_spec: Option<TableSpec>,
    /// Empty when NO_METADATA is set.
    pub columns: Vec<ColumnSpec>,
}

impl RowsMetadata {
    fn parse(r: &mut Reader) -> Result<Self> {
        let flags = r.i32("rows metadata flags")?;
        let columns_count = r.count("columns count")?;
        let paging_state = if flags & HAS_MORE_PAGES != 0 { r.bytes("paging state")? } else { None };
        let mut metadata = RowsMetadata {
            flags,
            columns_count,
            paging_state,
            new_metadata_id: None,
            global_table_spec: None,
            columns: vec![],
        };
        if flags & NO_METADATA != 0 {
            return Ok(metadata);
        }
        if flags & METADATA_CHANGED != 0 {
            metadata.new_metadata_id = Some(r.short_bytes("new metadata id")?);
        }
        let global = flags & GLOBAL_TABLES_SPEC != 0;
        if global {
            metadata.global_table_spec = Some(TableSpec::parse(r)?);
        }
        metadata.columns = parse_column_specs(r, columns_count, global)?;
        Ok(metadata)
    }

    fn no_metadata(&self) -> bool {
        self.flags & NO_METADATA != 0
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let no_metadata = self.no_metadata();
        let mut flags = self.flags & !(HAS_MORE_PAGES | METADATA_CHANGED | GLOBAL_TABLES_SPEC);
        if self.paging_state.is_some() {
            flags |= HAS_MORE_PAGES;
        }
        if !no_metadata {
            if self.new_metadata_id.is_some() {
                flags |= METADATA_CHANGED;
            }
            if self.global_table_spec.is_some() {
                flags |= GLOBAL_TABLES_SPEC;
            }
        }
        wire::put_i32(out, flags);
        wire::put_int_count(out, if no_metadata { self.columns_count } else { self.columns.len() }, "columns count")?;
        if let Some(state) = &self.paging_state {
            wire::put_bytes(out, Some(state), "paging state")?;
        }
        if no_metadata {
            return Ok(());
        }
        if let Some(id) = &self.new_metadata_id {
            wire::put_short_bytes(out, id, "new metadata id")?;
        }
        if let Some(spec) = &self.global_table_spec {
            spec.encode(out)?;
        }
        encode_column_specs(out, &self.columns, self.global_table_spec.is_some())
    }

    /// Full metadata for columns of one table: a global table spec, then each column's name
    /// and type.
    pub fn for_table(
        keyspace: impl Into<String>,
        table: impl Into<String>,
        columns: impl IntoIterator<Item = (String, ColumnType)>,
    ) -> Self {
        let columns: Vec<ColumnSpec> =
            columns.into_iter().map(|(name, col_type)| ColumnSpec { table_spec: None, name, col_type }).collect();
        RowsMetadata {
            flags: GLOBAL_TABLES_SPEC,
            columns_count: columns.len(),
            paging_state: None,
            new_metadata_id: None,
            global_table_spec: Some(TableSpec { keyspace: keyspace.into(), table: table.into() }),
            columns,
        }
    }

    /// Metadata with NO_METADATA, which gives only the number of cells per row: for rows
    /// whose request set SKIP_METADATA, and for the result metadata of a prepared statement
    /// that returns no rows (with a count of 0).
    pub fn without_columns(columns_count: usize) -> Self {
        RowsMetadata {
            flags: NO_METADATA,
            columns_count,
            paging_state: None,
            new_metadata_id: None,
            global_table_spec: None,
            columns: Vec::new(),
        }
    }

    /// The keyspace and table of a column: its own spec, or the global one.
    pub fn table_of(&self, column: usize) -> Option<&TableSpec> {
        self.columns.get(column)?.table_spec.as_ref().or(self.global_table_spec.as_ref())
    }
}

/// A set of rows, each a list of raw cells (`None` is null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    pub metadata: RowsMetadata,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

impl Rows {
    fn parse(r: &mut Reader) -> Result<Self> {
        let metadata = RowsMetadata::parse(r)?;
        let rows_count = r.count("rows count")?;
        let columns = metadata.columns_count;
        // Every cell takes at least its 4-byte length: refuse counts the body cannot hold
        // before allocating for them.
        let cells = rows_count.checked_mul(columns).and_then(|c| c.checked_mul(4));
        if cells.is_none_or(|bytes| bytes > r.remaining()) || (columns == 0 && rows_count > MAX_EMPTY_ROWS) {
            return Err(CassandraCodecError::InvalidLength { what: "rows count", len: rows_count as i64 });
        }
        let mut rows = Vec::with_capacity(rows_count);
        for _ in 0..rows_count {
            let mut row = Vec::with_capacity(columns);
            for _ in 0..columns {
                row.push(r.bytes("cell")?);
            }
            rows.push(row);
        }
        Ok(Rows { metadata, rows })
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        self.metadata.encode(out)?;
        let width = if self.metadata.no_metadata() { self.metadata.columns_count } else { self.metadata.columns.len() };
        wire::put_int_count(out, self.rows.len(), "rows count")?;
        for row in &self.rows {
            if row.len() != width {
                return Err(CassandraCodecError::InvalidValue { what: "cells in a row", value: row.len() as i64 });
            }
            for cell in row {
                wire::put_bytes(out, cell.as_deref(), "cell")?;
            }
        }
        Ok(())
    }

    /// The index of the column named `name`, if the metadata names columns.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.metadata.columns.iter().position(|c| c.name == name)
    }

    /// The spec of column `index`.
    pub fn column(&self, index: usize) -> Option<&ColumnSpec> {
        self.metadata.columns.get(index)
    }

    /// The cell at `row`, `column`: `None` if out of range, `Some(None)` if null.
    pub fn cell(&self, row: usize, column: usize) -> Option<Option<&Bytes>> {
        self.rows.get(row)?.get(column).map(Option::as_ref)
    }

    /// Replaces one cell (`None` writes null).
    pub fn set_cell(&mut self, row: usize, column: usize, value: Option<Bytes>) -> Result<()> {
        let slot = self
            .rows
            .get_mut(row)
            .and_then(|r| r.get_mut(column))
            .ok_or(CassandraCodecError::InvalidValue { what: "cell index", value: row as i64 })?;
        *slot = value;
        Ok(())
    }
}

/// The bind markers of a prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedMetadata {
    pub flags: i32,
    /// Which bind markers make up the partition key (v4+).
    pub pk_indexes: Vec<u16>,
    pub global_table_spec: Option<TableSpec>,
    pub columns: Vec<ColumnSpec>,
}

/// The result of a PREPARE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub id: Bytes,
    /// v5 only.
    pub result_metadata_id: Option<Bytes>,
    pub metadata: PreparedMetadata,
    pub result_metadata: RowsMetadata,
}

impl Prepared {
    fn parse(r: &mut Reader, version: Version) -> Result<Self> {
        let id = r.short_bytes("prepared id")?;
        let result_metadata_id = if version >= Version::V5 { Some(r.short_bytes("result metadata id")?) } else { None };
        let flags = r.i32("prepared metadata flags")?;
        let columns_count = r.count("bind marker count")?;
        let mut pk_indexes = Vec::new();
        if version >= Version::V4 {
            for _ in 0..r.count("partition key count")? {
                pk_indexes.push(r.u16("partition key index")?);
            }
        }
        let global = flags & GLOBAL_TABLES_SPEC != 0;
        let global_table_spec = if global { Some(TableSpec::parse(r)?) } else { None };
        let columns = parse_column_specs(r, columns_count, global)?;
        let metadata = PreparedMetadata { flags, pk_indexes, global_table_spec, columns };
        Ok(Prepared { id, result_metadata_id, metadata, result_metadata: RowsMetadata::parse(r)? })
    }

    fn encode(&self, out: &mut Vec<u8>, version: Version) -> Result<()> {
        wire::put_short_bytes(out, &self.id, "prepared id")?;
        if version >= Version::V5 {
            wire::put_short_bytes(out, self.result_metadata_id.as_deref().unwrap_or_default(), "result metadata id")?;
        }
        let m = &self.metadata;
        let mut flags = m.flags & !GLOBAL_TABLES_SPEC;
        if m.global_table_spec.is_some() {
            flags |= GLOBAL_TABLES_SPEC;
        }
        wire::put_i32(out, flags);
        wire::put_int_count(out, m.columns.len(), "bind marker count")?;
        if version >= Version::V4 {
            wire::put_int_count(out, m.pk_indexes.len(), "partition key count")?;
            m.pk_indexes.iter().for_each(|&i| wire::put_u16(out, i));
        }
        if let Some(spec) = &m.global_table_spec {
            spec.encode(out)?;
        }
        encode_column_specs(out, &m.columns, m.global_table_spec.is_some())?;
        self.result_metadata.encode(out)
    }
}

#[cfg(test)]
mod tests;
