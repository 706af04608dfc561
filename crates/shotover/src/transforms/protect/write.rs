//! The request side of Protect: what a QUERY, EXECUTE or BATCH writes to protected columns
//! is encrypted in place, literals in the statement text and bound values alike.

use super::{PreparedInfo, Refusal, Shared};
use bytes::Bytes;
use shotover_protocols::cassandra::request::{query_flags, BatchQuery, Value, Values};
use shotover_protocols::cassandra::statement::{self, LiteralKind, Statement, Table, Term};
use shotover_protocols::cassandra::CassandraBody;
use std::fmt::Write as _;
use std::ops::Range;
use std::rc::Rc;

/// What the response to a request needs.
pub(super) enum Outcome {
    Nothing,
    /// Its rows may hold protected columns: of a read, or the existing row a conditional
    /// write returns (with the prepared statement, for rows sent without metadata).
    Rows(Option<(Bytes, Rc<PreparedInfo>)>),
    /// A USE: its result names the connection's new keyspace.
    Use,
}

pub(super) fn protect_request(
    shared: &Shared,
    keyspace: Option<&str>,
    body: &mut CassandraBody,
) -> Result<Outcome, Refusal> {
    match body {
        CassandraBody::Query(q) => {
            let ks = q.params.keyspace.clone().or(keyspace.map(str::to_owned));
            if is_use(&q.query) {
                return Ok(Outcome::Use);
            }
            if !shared.may_name_protected(&q.query) {
                return Ok(Outcome::Nothing);
            }
            if let Some(text) = protect_statement(shared, ks.as_deref(), &q.query, q.params.values.as_mut())? {
                q.query = text;
            }
            // Rows without metadata could not be told apart: ask for it.
            q.params.flags &= !query_flags::SKIP_METADATA;
            Ok(Outcome::Rows(None))
        }
        CassandraBody::Execute(e) => {
            let info = prepared(shared, &e.id)?;
            if let Some(values) = e.params.values.as_mut() {
                protect_bound(shared, &info, values)?;
            }
            Ok(if info.touches { Outcome::Rows(Some((e.id.clone(), info))) } else { Outcome::Nothing })
        }
        CassandraBody::Batch(b) => {
            let ks = b.keyspace.clone().or(keyspace.map(str::to_owned));
            let mut touches = false;
            for s in &mut b.statements {
                match &mut s.query {
                    BatchQuery::Query(text) => {
                        if shared.may_name_protected(text) {
                            touches = true;
                            if let Some(new) = protect_statement(shared, ks.as_deref(), text, Some(&mut s.values))? {
                                *text = new;
                            }
                        }
                    }
                    BatchQuery::Prepared(id) => {
                        let info = prepared(shared, id)?;
                        touches |= info.touches;
                        protect_bound(shared, &info, &mut s.values)?;
                    }
                }
            }
            Ok(if touches { Outcome::Rows(None) } else { Outcome::Nothing })
        }
        _ => Ok(Outcome::Nothing),
    }
}

/// Whether `cql` is a USE statement.
pub(super) fn is_use(cql: &str) -> bool {
    // Parsed (which skips comments) only when it starts with USE or a comment: this runs on
    // every QUERY.
    let head = cql.trim_start().as_bytes();
    let may = head.get(..3).is_some_and(|w| w.eq_ignore_ascii_case(b"use"))
        || [&b"--"[..], b"//", b"/*"].iter().any(|c| head.starts_with(c));
    may && matches!(statement::parse(cql), Some(Statement::Use { .. }))
}

pub(super) fn prepared(shared: &Shared, id: &Bytes) -> Result<Rc<PreparedInfo>, Refusal> {
    shared.prepared.borrow().get(id).cloned().ok_or_else(|| Refusal::Unprepared(id.clone()))
}

/// Encrypts the bound values of protected bind markers.
fn protect_bound(shared: &Shared, info: &PreparedInfo, values: &mut Values) -> Result<(), Refusal> {
    // A named value may fill several markers: it is encrypted once.
    let mut done = std::collections::HashSet::new();
    for (index, marker) in info.bind.iter().enumerate() {
        let Some(marker) = marker else { continue };
        let slot = match values {
            Values::Positional(v) => v.get_mut(index).map(|v| (index, v)),
            Values::Named(v) => {
                v.iter_mut().enumerate().find(|(_, (name, _))| name == marker).map(|(i, (_, v))| (i, v))
            }
        };
        match slot {
            Some((slot, value)) if done.insert(slot) => encrypt_value(shared, value)?,
            Some(_) => {}
            None => return Err(Refusal::Invalid(format!("{marker}: no value bound for a protected column"))),
        }
    }
    Ok(())
}

fn encrypt_value(shared: &Shared, value: &mut Value) -> Result<(), Refusal> {
    if let Value::Bytes(plain) = value {
        let stored = shared.ring.keys.borrow_mut().protect(plain).map_err(Refusal::encrypting)?;
        *value = Value::Bytes(Bytes::from(stored));
    }
    Ok(())
}

/// A write statement with its protected values encrypted: the new text (literals
/// replaced) and `values` changed in place. `None` for a read.
fn protect_statement(
    shared: &Shared,
    keyspace: Option<&str>,
    cql: &str,
    mut values: Option<&mut Values>,
) -> Result<Option<String>, Refusal> {
    let Some(parsed) = statement::parse(cql) else { return unreadable(cql) };
    let mut writes = Vec::new();
    collect_writes(&parsed, &mut writes)?;
    if matches!(parsed, Statement::Select(_) | Statement::Use { .. }) {
        return Ok(None);
    }
    let mut replacements: Vec<(Range<usize>, String)> = Vec::new();
    let mut encrypted = std::collections::HashSet::new();
    for (table, column, term) in writes {
        let Some(term) = term else {
            if is_protected(shared, keyspace, table, &column)? {
                return Err(Refusal::Invalid(format!(
                    "{column} is protected: only a whole value can be written to it (INSERT JSON, \
                     arithmetic and element updates cannot be encrypted)"
                )));
            }
            continue;
        };
        if !is_protected(shared, keyspace, table, &column)? {
            continue;
        }
        match term {
            Term::Constant { word, .. } if word == "null" => {}
            Term::Literal { kind: kind @ (LiteralKind::String | LiteralKind::Blob), span } => {
                let text = cql.get(span.clone()).unwrap_or_default();
                let plain = statement::literal_bytes(*kind, text)
                    .ok_or_else(|| Refusal::Invalid(format!("{column}: an unreadable literal")))?;
                let stored = shared.ring.keys.borrow_mut().protect(&plain).map_err(Refusal::encrypting)?;
                replacements.push((span.clone(), hex_literal(&stored)));
            }
            Term::Marker { index, name } => {
                let bound = values.as_deref().map_or(0, Values::len);
                if statement::marker_count(cql) != Some(bound) {
                    // The proxy would not know which value is the protected column's.
                    return Err(Refusal::Invalid(format!(
                        "{column}: the values bound do not match the statement's bind markers"
                    )));
                }
                let slot = match values.as_deref_mut() {
                    Some(Values::Positional(v)) => v.get_mut(*index).map(|v| (*index, v)),
                    Some(Values::Named(v)) => {
                        v.iter_mut().enumerate().find(|(_, (n, _))| Some(n) == name.as_ref()).map(|(i, (_, v))| (i, v))
                    }
                    None => None,
                };
                match slot {
                    Some((slot, value)) if encrypted.insert(slot) => encrypt_value(shared, value)?,
                    Some(_) => {}
                    None => return Err(Refusal::Invalid(format!("{column}: no value bound"))),
                }
            }
            _ => {
                return Err(Refusal::Invalid(format!(
                    "{column} is protected: give it a blob or string literal, or a bound value"
                )))
            }
        }
    }
    replacements.sort_by_key(|(span, _)| std::cmp::Reverse(span.start));
    let mut text = cql.to_owned();
    for (span, with) in replacements {
        if text.get(span.clone()).is_none() {
            return Err(Refusal::Invalid("the statement changed under the proxy".into()));
        }
        text.replace_range(span, &with);
    }
    Ok(Some(text))
}

/// A statement naming a protected table that the parser cannot read: refused if it may
/// write rows (INSERT, UPDATE, BATCH), passed otherwise (reads, DDL, TRUNCATE, DELETE).
pub(super) fn unreadable(cql: &str) -> Result<Option<String>, Refusal> {
    match statement::first_word(cql).as_deref() {
        Some("select" | "delete" | "create" | "alter" | "drop" | "truncate" | "grant" | "revoke" | "list") => Ok(None),
        _ => {
            Err(Refusal::Invalid("a write naming a protected table that the proxy cannot read; it was not sent".into()))
        }
    }
}

/// (table, column, value written) for every column a write sets; `None` for a value the
/// proxy cannot encrypt (INSERT JSON, `c = c + t`, `c[k] = t`).
pub(super) type Write<'a> = (&'a Table, String, Option<&'a Term>);

pub(super) fn collect_writes<'a>(s: &'a Statement, out: &mut Vec<Write<'a>>) -> Result<(), Refusal> {
    match s {
        Statement::Insert(i) if i.json => out.push((&i.table, "*".into(), None)),
        Statement::Insert(i) => {
            out.extend(i.columns.iter().zip(&i.values).map(|(c, v)| (&i.table, c.clone(), Some(v))))
        }
        Statement::Update(u) => {
            out.extend(u.assignments.iter().map(|a| (&u.table, a.column.clone(), a.value.as_ref())));
        }
        Statement::Batch(statements) => {
            for s in statements {
                collect_writes(s, out)?;
            }
        }
        Statement::Delete(_) | Statement::Select(_) | Statement::Use { .. } => {}
    }
    Ok(())
}

/// Whether `column` of `table` is protected (`*`: whether the table has protected columns).
pub(super) fn is_protected(
    shared: &Shared,
    keyspace: Option<&str>,
    table: &Table,
    column: &str,
) -> Result<bool, Refusal> {
    let Some(ks) = table.keyspace.as_deref().or(keyspace) else {
        let named = shared.columns.values().any(|tables| tables.contains_key(&table.name));
        return if named {
            Err(Refusal::Invalid(format!(
                "{}: no keyspace given, so the proxy cannot tell whether it is protected",
                table.name
            )))
        } else {
            Ok(false)
        };
    };
    Ok(shared.table(ks, &table.name).is_some_and(|c| column == "*" || c.contains(column)))
}

fn hex_literal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{crypto::Keys, keyring::KeyRing, Columns};
    use super::*;

    fn shared() -> Shared {
        let mut columns = Columns::new();
        columns.entry("ks".into()).or_default().insert("t".into(), ["c".to_string()].into());
        Shared::new(columns, Rc::new(KeyRing::new(Keys::local(&[1; 32], "k").unwrap(), None)))
    }

    fn invalid(r: Result<Option<String>, Refusal>) -> String {
        match r {
            Err(Refusal::Invalid(text)) => text,
            Err(Refusal::Unprepared(_)) => "unprepared".into(),
            Err(Refusal::Unavailable(text)) => format!("unavailable: {text}"),
            Ok(text) => panic!("not refused: {text:?}"),
        }
    }

    #[test]
    fn literals_are_replaced_and_bound_values_encrypted() {
        let s = shared();
        let cql = "INSERT INTO ks.t (k, c) VALUES ('a', 'it''s secret')";
        let out = protect_statement(&s, None, cql, None).unwrap().unwrap();
        let hex = out.strip_prefix("INSERT INTO ks.t (k, c) VALUES ('a', 0x").unwrap().strip_suffix(')').unwrap();
        let stored = statement::literal_bytes(LiteralKind::Blob, &format!("0x{hex}")).unwrap();
        assert_eq!(s.ring.keys.borrow_mut().unprotect(&stored).unwrap(), b"it's secret");

        let mut values = Values::Positional(vec![Value::Bytes(Bytes::from_static(b"x")), Value::Null]);
        protect_statement(&s, Some("ks"), "UPDATE t SET c = ? WHERE k = ?", Some(&mut values)).unwrap();
        let Values::Positional(v) = &values else { unreachable!() };
        let Value::Bytes(stored) = &v[0] else { panic!("{v:?}") };
        assert_eq!(s.ring.keys.borrow_mut().unprotect(stored).unwrap(), b"x");
        assert_eq!(v[1], Value::Null);

        // Other tables, and reads, pass as they are.
        let other = "INSERT INTO ks.other (c) VALUES ('x')";
        assert_eq!(protect_statement(&s, None, other, None).unwrap().as_deref(), Some(other));
        assert_eq!(protect_statement(&s, None, "SELECT c FROM ks.t", None).unwrap(), None);
        assert_eq!(protect_statement(&s, None, "SELECT c FROM ks.t WHERE ((", None).unwrap(), None);
    }

    #[test]
    fn use_and_protected_tables_are_spotted_cheaply() {
        let s = shared();
        assert!(is_use("USE ks") && is_use("  /* c */ use \"Ks\";"));
        assert!(!is_use("SELECT * FROM users") && !is_use("-- use ks\nSELECT 1"));
        assert!(s.may_name_protected("INSERT INTO KS.T (k) VALUES (1)"));
        assert!(!s.may_name_protected("DROP KEYSPACE a"));
    }

    #[test]
    fn writes_that_cannot_be_encrypted_are_refused() {
        let s = shared();
        assert!(invalid(protect_statement(&s, None, "INSERT INTO ks.t (k, c) VALUES ('a', 5)", None))
            .contains("blob or string literal"));
        assert!(invalid(protect_statement(&s, None, "INSERT INTO ks.t JSON '{}'", None)).contains("whole value"));
        assert!(invalid(protect_statement(&s, None, "UPDATE ks.t SET c = c + 0x00 WHERE k = 'a'", None))
            .contains("whole value"));
        assert!(invalid(protect_statement(&s, None, "INSERT INTO t (k, c) VALUES ('a', 'b')", None))
            .contains("no keyspace"));
        assert!(invalid(protect_statement(&s, None, "INSERT INTO ks.t (k, c) VALUES ('a', 'b') ((", None))
            .contains("cannot read"));
        assert!(
            invalid(protect_statement(&s, None, "UPDATE ks.t SET c = ? WHERE k = 'a'", None)).contains("do not match")
        );
        // A cast before a named marker hides it from the parser's count: refused, not guessed.
        let mut one = Values::Positional(vec![Value::Bytes(Bytes::from_static(b"x"))]);
        let cast = "UPDATE ks.t SET n = (blob) :a, c = ? WHERE k = 'a'";
        assert!(invalid(protect_statement(&s, None, cast, Some(&mut one))).contains("do not match"));
        // DDL and TRUNCATE naming the table pass even when the parser cannot read them.
        assert_eq!(protect_statement(&s, None, "TRUNCATE ks.t", None).unwrap(), None);
        assert_eq!(protect_statement(&s, None, "DROP TABLE ks.t", None).unwrap(), None);
    }

    #[test]
    fn a_named_value_filling_two_markers_is_encrypted_once() {
        let s = shared();
        let mut values = Values::Named(vec![("v".into(), Value::Bytes(Bytes::from_static(b"x")))]);
        let cql = "UPDATE ks.t SET c = :v WHERE k = 'a' IF c = :v";
        // The condition's marker is not a write: only the SET's is encrypted, once.
        protect_statement(&s, None, cql, Some(&mut values)).unwrap_err();
        let mut values = Values::Named(vec![("v".into(), Value::Bytes(Bytes::from_static(b"x")))]);
        let info = PreparedInfo { bind: vec![Some("v".into()), Some("v".into())], result: vec![], touches: true };
        protect_bound(&s, &info, &mut values).unwrap();
        let Values::Named(v) = &values else { unreachable!() };
        let Value::Bytes(stored) = &v[0].1 else { panic!() };
        assert_eq!(s.ring.keys.borrow_mut().unprotect(stored).unwrap(), b"x");
    }

    #[test]
    fn literals_become_bytes() {
        assert_eq!(hex_literal(&[0, 0xab]), "0x00ab");
    }
}
