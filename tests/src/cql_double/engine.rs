//! The in-memory catalog and what the statements do to it: keyspaces, tables with a
//! single-column partition key, rows as the bytes the drivers sent. Rows keep insertion
//! order (a real node orders them by token); a write to an existing key updates the
//! columns it names.

use super::cql::{ColumnDef, CqlError, Insert, Literal, Parsed, Relation, Select, Selection, Statement, Term};
use super::system;
use super::values::{check_bound, decode_collection, encode_literal, Cell};
use bytes::Bytes;
use shotover_protocols::cassandra::request::Value;
use shotover_protocols::cassandra::response::SchemaChange;
use shotover_protocols::cassandra::result::{ColumnType, ResultBody, Rows, RowsMetadata};
use shotover_protocols::cassandra::ErrorCode;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// What this node says about itself in `system.local`, and about its peers.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub address: IpAddr,
    pub port: u16,
    pub peers: Vec<(IpAddr, u16)>,
    pub release_version: String,
    /// The highest protocol version, as `system.local` gives it ("5").
    pub native_protocol_version: String,
}

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub keyspaces: BTreeMap<String, Keyspace>,
}

#[derive(Debug)]
pub(crate) struct Keyspace {
    pub replication: Vec<(String, String)>,
    pub durable_writes: bool,
    pub tables: BTreeMap<String, Table>,
}

#[derive(Debug)]
pub(crate) struct Table {
    pub columns: Vec<ColumnDef>,
    /// The partition key column.
    pub key: usize,
    pub rows: Vec<Vec<Cell>>,
    pub id: [u8; 16],
}

/// A table to read: a user table's rows, or a system table made up on the spot.
pub(crate) struct TableData {
    pub keyspace: String,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    pub key: usize,
    pub rows: Vec<Vec<Cell>>,
    /// System tables may be filtered on any column.
    pub system: bool,
}

/// A bind marker: what it binds, for PREPARE's metadata and to check bound values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub keyspace: String,
    pub table: String,
    pub name: String,
    pub ty: ColumnType,
    /// Binds the partition key (for PREPARE's pk indexes).
    pub pk: bool,
}

/// What a SELECT returns: keyspace, table, and each column's name and type.
pub(crate) type ResultColumns = (String, String, Vec<(String, ColumnType)>);

/// How much metadata a RESULT Rows carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetadataMode {
    Full,
    /// The request set SKIP_METADATA.
    Skip,
    /// v5 EXECUTE with an out-of-date result metadata id: full metadata and the new id.
    Changed(Bytes),
}

/// A 16-byte digest, shaped like a version 4 UUID.
pub(crate) fn hash16(parts: &[&[u8]]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        half.hash(&mut h);
        for p in parts {
            p.hash(&mut h);
        }
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}

fn unauthorized(message: impl Into<String>) -> CqlError {
    CqlError { code: ErrorCode::UNAUTHORIZED, message: message.into(), extra: Vec::new() }
}

fn already_exists(keyspace: &str, table: &str, message: String) -> CqlError {
    let mut extra = Vec::new();
    for s in [keyspace, table] {
        extra.extend_from_slice(&(s.len().min(u16::MAX.into()) as u16).to_be_bytes());
        extra.extend_from_slice(s.as_bytes());
    }
    CqlError { code: ErrorCode::ALREADY_EXISTS, message, extra }
}

fn schema_change(change: &str, target: &str, keyspace: &str, name: Option<&str>) -> ResultBody {
    ResultBody::SchemaChange(SchemaChange {
        change_type: change.into(),
        target: target.into(),
        keyspace: keyspace.into(),
        name: name.map(str::to_string),
        arguments: None,
    })
}

fn resolve_keyspace(explicit: &Option<String>, session: Option<&str>) -> Result<String, CqlError> {
    explicit.clone().or_else(|| session.map(str::to_string)).ok_or_else(|| {
        CqlError::invalid("No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename")
    })
}

fn full_class(class: &str) -> String {
    if class.contains('.') {
        class.to_string()
    } else {
        format!("org.apache.cassandra.locator.{class}")
    }
}

impl Catalog {
    /// A digest of the schema: it changes with every CREATE and DROP.
    pub fn schema_version(&self) -> [u8; 16] {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for (name, ks) in &self.keyspaces {
            parts.push(name.as_bytes().to_vec());
            for (k, v) in &ks.replication {
                parts.push(format!("{k}={v}").into_bytes());
            }
            for (table, t) in &ks.tables {
                parts.push(table.as_bytes().to_vec());
                for c in &t.columns {
                    parts.push(format!("{} {}", c.name, c.cql).into_bytes());
                }
            }
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        hash16(&refs)
    }

    /// A table to read, user or system.
    pub fn table_data(&self, keyspace: &str, table: &str, node: &Node) -> Result<TableData, CqlError> {
        if system::is_system_keyspace(keyspace) {
            return system::table(keyspace, table, self, node)
                .ok_or_else(|| CqlError::invalid(format!("unconfigured table {table}")));
        }
        let t = self.user_table(keyspace, table)?;
        Ok(TableData {
            keyspace: keyspace.into(),
            name: table.into(),
            columns: t.columns.clone(),
            key: t.key,
            rows: t.rows.clone(),
            system: false,
        })
    }

    fn user_table(&self, keyspace: &str, table: &str) -> Result<&Table, CqlError> {
        let ks = self
            .keyspaces
            .get(keyspace)
            .ok_or_else(|| CqlError::invalid(format!("Keyspace '{keyspace}' does not exist")))?;
        ks.tables.get(table).ok_or_else(|| CqlError::invalid(format!("unconfigured table {table}")))
    }

    /// The bind markers of a statement, in order.
    pub fn markers(&self, parsed: &Parsed, session: Option<&str>, node: &Node) -> Result<Vec<Marker>, CqlError> {
        let mut slots: Vec<Option<Marker>> = vec![None; parsed.markers];
        let mut set = |i: usize, m: Marker| {
            if let Some(slot) = slots.get_mut(i) {
                *slot = Some(m);
            }
        };
        let insert_markers = |insert: &Insert, set: &mut dyn FnMut(usize, Marker)| -> Result<(), CqlError> {
            let keyspace = resolve_keyspace(&insert.keyspace, session)?;
            let data = self.table_data(&keyspace, &insert.table, node)?;
            for (column, term) in insert.columns.iter().zip(&insert.values) {
                if let Term::Bind(i) = term {
                    let idx = column_index(&data, column)?;
                    let c = &data.columns[idx];
                    set(
                        *i,
                        Marker {
                            keyspace: keyspace.clone(),
                            table: insert.table.clone(),
                            name: c.name.clone(),
                            ty: c.ty.clone(),
                            pk: idx == data.key,
                        },
                    );
                }
            }
            Ok(())
        };
        match &parsed.statement {
            Statement::Insert(insert) => insert_markers(insert, &mut set)?,
            Statement::Batch(inserts) => {
                for insert in inserts {
                    insert_markers(insert, &mut set)?;
                }
            }
            Statement::Select(select) => {
                let keyspace = resolve_keyspace(&select.keyspace, session)?;
                let data = self.table_data(&keyspace, &select.table, node)?;
                let marker = |name: String, ty: ColumnType, pk: bool| Marker {
                    keyspace: keyspace.clone(),
                    table: select.table.clone(),
                    name,
                    ty,
                    pk,
                };
                for cond in &select.conditions {
                    let idx = column_index(&data, &cond.column)?;
                    let c = &data.columns[idx];
                    match &cond.relation {
                        Relation::Eq(Term::Bind(i)) => set(*i, marker(c.name.clone(), c.ty.clone(), idx == data.key)),
                        Relation::In(terms) => {
                            for t in terms {
                                if let Term::Bind(i) = t {
                                    set(*i, marker(c.name.clone(), c.ty.clone(), false));
                                }
                            }
                        }
                        Relation::InBind(i) => {
                            set(*i, marker(format!("in({})", c.name), ColumnType::List(Box::new(c.ty.clone())), false))
                        }
                        Relation::Eq(Term::Literal(_)) => {}
                    }
                }
                if let Some(Term::Bind(i)) = &select.limit {
                    set(*i, marker("[limit]".into(), ColumnType::Int, false));
                }
            }
            _ => {}
        }
        slots.into_iter().map(|m| m.ok_or_else(|| CqlError::invalid("a bind marker binds nothing"))).collect()
    }

    /// The columns a SELECT returns (keyspace, table, columns); `None` for other statements.
    pub fn result_columns(
        &self,
        parsed: &Parsed,
        session: Option<&str>,
        node: &Node,
    ) -> Result<Option<ResultColumns>, CqlError> {
        let Statement::Select(select) = &parsed.statement else {
            return Ok(None);
        };
        let keyspace = resolve_keyspace(&select.keyspace, session)?;
        let data = self.table_data(&keyspace, &select.table, node)?;
        let columns = projection(&data, &select.selection)?.into_iter().map(|(_, name, ty)| (name, ty)).collect();
        Ok(Some((keyspace, select.table.clone(), columns)))
    }

    /// Checks the number of bound values, and each against its marker's type.
    pub fn check_values(&self, parsed: &Parsed, markers: &[Marker], values: &[Value]) -> Result<(), CqlError> {
        if values.len() != parsed.markers {
            return Err(CqlError::invalid(format!(
                "There were {} markers(?) in CQL but {} bound variables",
                parsed.markers,
                values.len()
            )));
        }
        for (marker, value) in markers.iter().zip(values) {
            if let Value::Bytes(b) = value {
                check_bound(b, &marker.ty, &marker.name)?;
            }
        }
        Ok(())
    }

    /// Runs a statement with positional bound values (already matched to the markers).
    pub fn execute(
        &mut self,
        parsed: &Parsed,
        session: Option<&str>,
        values: &[Value],
        node: &Node,
        metadata: MetadataMode,
    ) -> Result<ResultBody, CqlError> {
        let markers = self.markers(parsed, session, node)?;
        self.check_values(parsed, &markers, values)?;
        match &parsed.statement {
            Statement::CreateKeyspace { name, if_not_exists, replication, durable_writes } => {
                if system::is_system_keyspace(name) {
                    return Err(unauthorized(format!("{name} keyspace is not user-modifiable.")));
                }
                if self.keyspaces.contains_key(name) {
                    if *if_not_exists {
                        return Ok(ResultBody::Void);
                    }
                    return Err(already_exists(name, "", format!("Keyspace {name} already exists")));
                }
                let mut replication: Vec<(String, String)> = replication
                    .iter()
                    .map(|(k, v)| (k.clone(), if k == "class" { full_class(v) } else { v.clone() }))
                    .collect();
                if !replication.iter().any(|(k, _)| k == "class") {
                    replication =
                        vec![("class".into(), full_class("SimpleStrategy")), ("replication_factor".into(), "1".into())];
                }
                replication.sort();
                let ks = Keyspace { replication, durable_writes: *durable_writes, tables: BTreeMap::new() };
                self.keyspaces.insert(name.clone(), ks);
                Ok(schema_change("CREATED", "KEYSPACE", name, None))
            }
            Statement::CreateTable { keyspace, name, if_not_exists, columns, key } => {
                let keyspace = resolve_keyspace(keyspace, session)?;
                if system::is_system_keyspace(&keyspace) {
                    return Err(unauthorized(format!("{keyspace} keyspace is not user-modifiable.")));
                }
                let ks = self
                    .keyspaces
                    .get_mut(&keyspace)
                    .ok_or_else(|| CqlError::invalid(format!("Keyspace '{keyspace}' doesn't exist")))?;
                if ks.tables.contains_key(name) {
                    if *if_not_exists {
                        return Ok(ResultBody::Void);
                    }
                    return Err(already_exists(&keyspace, name, format!("Table {keyspace}.{name} already exists")));
                }
                let key = columns
                    .iter()
                    .position(|c| &c.name == key)
                    .ok_or_else(|| CqlError::invalid(format!("Unknown definition {key} referenced in PRIMARY KEY")))?;
                let id = hash16(&[keyspace.as_bytes(), name.as_bytes()]);
                ks.tables.insert(name.clone(), Table { columns: columns.clone(), key, rows: Vec::new(), id });
                Ok(schema_change("CREATED", "TABLE", &keyspace, Some(name)))
            }
            Statement::DropKeyspace { name, if_exists } => {
                if system::is_system_keyspace(name) {
                    return Err(unauthorized(format!("{name} keyspace is not user-modifiable.")));
                }
                if self.keyspaces.remove(name).is_none() {
                    if *if_exists {
                        return Ok(ResultBody::Void);
                    }
                    return Err(CqlError {
                        code: ErrorCode::CONFIG_ERROR,
                        message: format!("Cannot drop non existing keyspace '{name}'."),
                        extra: Vec::new(),
                    });
                }
                Ok(schema_change("DROPPED", "KEYSPACE", name, None))
            }
            Statement::DropTable { keyspace, name, if_exists } => {
                let keyspace = resolve_keyspace(keyspace, session)?;
                if system::is_system_keyspace(&keyspace) {
                    return Err(unauthorized(format!("{keyspace} keyspace is not user-modifiable.")));
                }
                let removed = self.keyspaces.get_mut(&keyspace).and_then(|ks| ks.tables.remove(name));
                if removed.is_none() {
                    if *if_exists {
                        return Ok(ResultBody::Void);
                    }
                    return Err(CqlError::invalid(format!("Table '{keyspace}.{name}' doesn't exist")));
                }
                Ok(schema_change("DROPPED", "TABLE", &keyspace, Some(name)))
            }
            Statement::Use(keyspace) => {
                if system::is_system_keyspace(keyspace) || self.keyspaces.contains_key(keyspace) {
                    Ok(ResultBody::SetKeyspace(keyspace.clone()))
                } else {
                    Err(CqlError::invalid(format!("Keyspace '{keyspace}' does not exist")))
                }
            }
            Statement::Insert(insert) => {
                let write = self.plan_insert(insert, session, values)?;
                self.apply(write);
                Ok(ResultBody::Void)
            }
            Statement::Batch(inserts) => {
                self.apply_batch(inserts.iter().map(|i| (i, session, values)))?;
                Ok(ResultBody::Void)
            }
            Statement::Select(select) => self.select(select, session, values, node, metadata),
        }
    }

    /// Checks every INSERT of a batch, then applies them all: a batch that fails changes
    /// nothing.
    pub fn apply_batch<'a>(
        &mut self,
        inserts: impl IntoIterator<Item = (&'a Insert, Option<&'a str>, &'a [Value])>,
    ) -> Result<(), CqlError> {
        let writes = inserts
            .into_iter()
            .map(|(i, session, values)| self.plan_insert(i, session, values))
            .collect::<Result<Vec<_>, _>>()?;
        for w in writes {
            self.apply(w);
        }
        Ok(())
    }

    fn plan_insert(&self, insert: &Insert, session: Option<&str>, values: &[Value]) -> Result<Write, CqlError> {
        let keyspace = resolve_keyspace(&insert.keyspace, session)?;
        if system::is_system_keyspace(&keyspace) {
            return Err(unauthorized(format!("{keyspace} keyspace is not user-modifiable.")));
        }
        let table = self.user_table(&keyspace, &insert.table)?;
        let mut cells: Vec<(usize, Cell)> = Vec::new();
        let mut key: Option<Bytes> = None;
        for (column, term) in insert.columns.iter().zip(&insert.values) {
            let idx = table
                .columns
                .iter()
                .position(|c| &c.name == column)
                .ok_or_else(|| CqlError::invalid(format!("Undefined column name {column}")))?;
            if cells.iter().any(|(i, _)| *i == idx) {
                return Err(CqlError::invalid(format!("Multiple definitions found for column {column}")));
            }
            let def = &table.columns[idx];
            let cell = match term {
                Term::Literal(l) => Some(encode_literal(l, &def.ty, column)?),
                Term::Bind(i) => match values.get(*i) {
                    Some(Value::Bytes(b)) => Some(Some(b.clone())),
                    Some(Value::Null) => Some(None),
                    Some(Value::NotSet) => None,
                    None => return Err(CqlError::invalid("missing bound value")),
                },
            };
            if idx == table.key {
                match &cell {
                    Some(Some(b)) => key = Some(b.clone()),
                    Some(None) => {
                        return Err(CqlError::invalid(format!("Invalid null value in condition for column {column}")))
                    }
                    None => return Err(CqlError::invalid(format!("Invalid unset value for column {column}"))),
                }
            }
            if let Some(cell) = cell {
                cells.push((idx, cell));
            }
        }
        let key_name = table.columns.get(table.key).map(|c| c.name.clone()).unwrap_or_default();
        let key = key.ok_or_else(|| CqlError::invalid(format!("Some partition key parts are missing: {key_name}")))?;
        Ok(Write { keyspace, table: insert.table.clone(), key, cells })
    }

    fn apply(&mut self, w: Write) {
        let Some(table) = self.keyspaces.get_mut(&w.keyspace).and_then(|ks| ks.tables.get_mut(&w.table)) else {
            return;
        };
        let key = table.key;
        let width = table.columns.len();
        let row = match table.rows.iter().position(|r| r.get(key).is_some_and(|c| c.as_ref() == Some(&w.key))) {
            Some(i) => &mut table.rows[i],
            None => {
                table.rows.push(vec![None; width]);
                let last = table.rows.len() - 1;
                &mut table.rows[last]
            }
        };
        for (idx, cell) in w.cells {
            if let Some(slot) = row.get_mut(idx) {
                *slot = cell;
            }
        }
    }

    fn select(
        &self,
        select: &Select,
        session: Option<&str>,
        values: &[Value],
        node: &Node,
        metadata: MetadataMode,
    ) -> Result<ResultBody, CqlError> {
        let keyspace = resolve_keyspace(&select.keyspace, session)?;
        let data = self.table_data(&keyspace, &select.table, node)?;
        let bound = |i: usize, column: &str| -> Result<Option<Bytes>, CqlError> {
            match values.get(i) {
                Some(Value::Bytes(b)) => Ok(Some(b.clone())),
                Some(Value::Null) => Ok(None),
                _ => Err(CqlError::invalid(format!("Invalid unset value for column {column}"))),
            }
        };
        // Each condition: a column, and the values it may hold.
        let mut filters: Vec<(usize, Vec<Bytes>)> = Vec::new();
        for cond in &select.conditions {
            let idx = column_index(&data, &cond.column)?;
            let def = &data.columns[idx];
            if !data.system && idx != data.key && !select.allow_filtering {
                return Err(CqlError::invalid(
                    "Cannot execute this query as it might involve data filtering and thus may have unpredictable \
                     performance. If you want to execute this query despite the performance unpredictability, use \
                     ALLOW FILTERING",
                ));
            }
            let term_value = |t: &Term| -> Result<Option<Bytes>, CqlError> {
                match t {
                    Term::Literal(l) => encode_literal(l, &def.ty, &def.name),
                    Term::Bind(i) => bound(*i, &def.name),
                }
            };
            let allowed: Vec<Option<Bytes>> = match &cond.relation {
                Relation::Eq(t) => vec![term_value(t)?],
                Relation::In(terms) => terms.iter().map(term_value).collect::<Result<_, _>>()?,
                Relation::InBind(i) => match bound(*i, &def.name)? {
                    Some(list) => decode_collection(&list)?,
                    None => {
                        return Err(CqlError::invalid(format!("Invalid null value for IN restriction on {}", def.name)))
                    }
                },
            };
            if idx == data.key && allowed.iter().any(Option::is_none) {
                return Err(CqlError::invalid(format!("Invalid null value in condition for column {}", def.name)));
            }
            filters.push((idx, allowed.into_iter().flatten().collect()));
        }
        let limit = match &select.limit {
            None => None,
            Some(t) => {
                let n = match t {
                    Term::Literal(Literal::Number(n)) => n.parse::<i32>().ok(),
                    Term::Bind(i) => match values.get(*i) {
                        Some(Value::Bytes(b)) => b.as_ref().try_into().ok().map(i32::from_be_bytes),
                        _ => None,
                    },
                    Term::Literal(_) => None,
                };
                match n {
                    Some(n) if n > 0 => Some(n as usize),
                    _ => return Err(CqlError::invalid("LIMIT must be strictly positive")),
                }
            }
        };
        let matching = data.rows.iter().filter(|row| {
            filters
                .iter()
                .all(|(idx, allowed)| row.get(*idx).is_some_and(|c| c.as_ref().is_some_and(|v| allowed.contains(v))))
        });
        let matching: Vec<&Vec<Cell>> = matching.take(limit.unwrap_or(usize::MAX)).collect();
        let columns = projection(&data, &select.selection)?;
        let rows: Vec<Vec<Cell>> = if select.selection == Selection::Count {
            vec![vec![Some(Bytes::copy_from_slice(&(matching.len() as i64).to_be_bytes()))]]
        } else {
            matching
                .iter()
                .map(|row| columns.iter().map(|(idx, _, _)| idx.and_then(|i| row.get(i).cloned().flatten())).collect())
                .collect()
        };
        let specs: Vec<(String, ColumnType)> = columns.into_iter().map(|(_, n, t)| (n, t)).collect();
        let metadata = match metadata {
            MetadataMode::Skip => RowsMetadata::without_columns(specs.len()),
            MetadataMode::Full => RowsMetadata::for_table(&keyspace, &select.table, specs),
            MetadataMode::Changed(id) => {
                let mut m = RowsMetadata::for_table(&keyspace, &select.table, specs);
                m.new_metadata_id = Some(id);
                m
            }
        };
        Ok(ResultBody::Rows(Rows { metadata, rows }))
    }
}

/// A checked INSERT: the row's key and the cells it sets.
struct Write {
    keyspace: String,
    table: String,
    key: Bytes,
    cells: Vec<(usize, Cell)>,
}

fn column_index(data: &TableData, column: &str) -> Result<usize, CqlError> {
    data.columns.iter().position(|c| c.name == column).ok_or_else(|| {
        CqlError::invalid(format!("Undefined column name {column} in table {}.{}", data.keyspace, data.name))
    })
}

/// The selected columns: (index in the table, or `None` for `count`), name, type.
fn projection(data: &TableData, selection: &Selection) -> Result<Vec<(Option<usize>, String, ColumnType)>, CqlError> {
    Ok(match selection {
        Selection::All => {
            data.columns.iter().enumerate().map(|(i, c)| (Some(i), c.name.clone(), c.ty.clone())).collect()
        }
        Selection::Count => vec![(None, "count".into(), ColumnType::Bigint)],
        Selection::Columns(names) => names
            .iter()
            .map(|n| {
                let i = column_index(data, n)?;
                Ok((Some(i), data.columns[i].name.clone(), data.columns[i].ty.clone()))
            })
            .collect::<Result<_, CqlError>>()?,
    })
}
