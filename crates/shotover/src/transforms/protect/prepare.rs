//! PREPARE and its result: which bind markers of a prepared statement are protected
//! columns, read from the statement itself (Cassandra reports a named marker under its own
//! name, not its column's), and which result columns are.

use super::write::{collect_writes, is_protected, unreadable};
use super::{PreparedInfo, Refusal, Shared};
use shotover_protocols::cassandra::result::{ColumnSpec, ColumnType, Prepared, RowsMetadata, TableSpec};
use shotover_protocols::cassandra::statement::{self, Term};

/// What a PREPARE's statement says, kept until its result comes.
#[derive(Debug, Clone, Default)]
pub(super) struct PrepareCheck {
    /// The bind markers that carry protected columns.
    protected: Vec<usize>,
    /// Every bind marker, as the parser counts them.
    markers: Option<usize>,
    /// It names a protected table.
    touches: bool,
}

/// Checks a statement being prepared. A write whose protected value is not a bare bind
/// marker is refused: a literal in it would be stored as written at every EXECUTE.
pub(super) fn check(shared: &Shared, keyspace: Option<&str>, cql: &str) -> Result<PrepareCheck, Refusal> {
    if !shared.may_name_protected(cql) {
        return Ok(PrepareCheck::default());
    }
    let Some(parsed) = statement::parse(cql) else {
        unreadable(cql)?;
        return Ok(PrepareCheck { touches: true, ..PrepareCheck::default() });
    };
    let mut writes = Vec::new();
    collect_writes(&parsed, &mut writes)?;
    let mut protected = Vec::new();
    for (table, column, term) in writes {
        if !is_protected(shared, keyspace, table, &column)? {
            continue;
        }
        match term {
            Some(Term::Marker { index, .. }) => protected.push(*index),
            Some(Term::Constant { word, .. }) if word == "null" => {}
            _ => {
                return Err(Refusal::Invalid(format!(
                    "{column} is protected: in a prepared statement, give its value as a bind marker"
                )))
            }
        }
    }
    Ok(PrepareCheck { protected, markers: statement::marker_count(cql), touches: true })
}

/// What Protect keeps of a PREPARED result; `Err` when the markers Cassandra reports do not
/// match the statement as the proxy read it (it could not tell which value to encrypt).
pub(super) fn learn(shared: &Shared, check: &PrepareCheck, p: &Prepared) -> Result<PreparedInfo, Refusal> {
    let specs = &p.metadata.columns;
    if !check.protected.is_empty() && check.markers != Some(specs.len()) {
        return Err(Refusal::Invalid(
            "the statement's bind markers are not as the proxy read them; it cannot protect them".into(),
        ));
    }
    let mut bind = vec![None; specs.len()];
    for &index in &check.protected {
        if let Some(spec) = specs.get(index).filter(|s| s.col_type != ColumnType::Blob) {
            return Err(not_a_blob(&spec.name, &spec.col_type));
        }
        if let (Some(slot), Some(spec)) = (bind.get_mut(index), specs.get(index)) {
            // Drivers send named values under the name Cassandra reports.
            *slot = Some(spec.name.clone());
        }
    }
    let result = result_columns(shared, &p.result_metadata);
    let touches = check.touches || result.iter().any(|p| *p);
    Ok(PreparedInfo { bind, result, touches })
}

/// The error for a protected column of another type than blob: what is stored is binary.
pub(super) fn not_a_blob(column: &str, t: &ColumnType) -> Refusal {
    Refusal::Invalid(format!("{column} is protected, so it must be a blob column, not {t:?}"))
}

/// Per result column, whether it is protected.
pub(super) fn result_columns(shared: &Shared, metadata: &RowsMetadata) -> Vec<bool> {
    let protected = |spec: &ColumnSpec, global: Option<&TableSpec>| {
        spec.table_spec.as_ref().or(global).is_some_and(|t| shared.protected(&t.keyspace, &t.table, &spec.name))
    };
    metadata.columns.iter().map(|c| protected(c, metadata.global_table_spec.as_ref())).collect()
}
