//! What a CQL statement means for the cache: a read of one partition of a cached table, a
//! write to cached tables, or nothing.

use super::{key, Entry};
use shotover_protocols::cassandra::result::ColumnType;
use shotover_protocols::cassandra::statement::{self, Relation, Select, Statement, Table, Term};

/// A partition key column's value, as the statement gives it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Src {
    /// A literal, in its canonical form by kind (`None`: of no cacheable class).
    Literal(Option<Vec<u8>>),
    /// The `index`th bind marker (`:name` markers have a name).
    Marker { index: usize, name: Option<String> },
}

/// A key column and its value.
pub(super) type Part = (String, Src);

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Read {
    pub(super) entry: usize,
    pub(super) keyspace: String,
    pub(super) table: String,
    /// The partition key's values, in order.
    pub(super) parts: Vec<Part>,
    /// Per result column, the table column it is (for learning types), when known.
    pub(super) columns: Option<Vec<Option<String>>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Write {
    pub(super) entry: usize,
    pub(super) keyspace: String,
    /// The partition key's values; `None` invalidates the whole table.
    pub(super) parts: Option<Vec<Part>>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shape {
    Pass,
    Use(String),
    Read(Read),
    Writes(Vec<Write>),
}

/// The cached entry a table of a statement is, given the connection's keyspace.
fn lookup<'a>(entries: &'a [Entry], keyspace: Option<&str>, table: &Table) -> Vec<(usize, &'a Entry, String)> {
    let ks = table.keyspace.as_deref().or(keyspace);
    let exact =
        entries.iter().position(|e| e.keyspace.as_deref().is_some_and(|k| Some(k) == ks) && e.table == table.name);
    let bare = entries.iter().position(|e| e.keyspace.is_none() && e.table == table.name);
    match (ks, exact.or(bare)) {
        (Some(ks), Some(i)) => vec![(i, &entries[i], ks.to_string())],
        // Without a keyspace, a write could be to any entry of that table name.
        (None, _) => entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.table == table.name)
            .map(|(i, e)| (i, e, String::new()))
            .collect(),
        (Some(_), None) => Vec::new(),
    }
}

fn src(term: &Term, cql: &str) -> Src {
    match term {
        Term::Marker { index, name } => Src::Marker { index: *index, name: name.clone() },
        other => Src::Literal(key::literal(other, cql)),
    }
}

/// The `=` relation on each of `columns`, or `None` if one has none (or an IN).
fn equalities(relations: &[Relation], columns: &[String], cql: &str) -> Option<Vec<Part>> {
    columns
        .iter()
        .map(|c| {
            let r = relations.iter().find(|r| &r.column == c && r.operator == "=")?;
            Some((c.clone(), src(&r.value, cql)))
        })
        .collect()
}

/// The statement's shape. `keyspace` is the connection's; `names_cached` says whether the
/// text may name a cached table (checked by the caller, cheaply, before parsing).
pub(super) fn of(entries: &[Entry], keyspace: Option<&str>, cql: &str) -> Shape {
    match statement::parse(cql) {
        Some(Statement::Use { keyspace }) => Shape::Use(keyspace),
        Some(Statement::Select(s)) => read(entries, keyspace, &s, cql).map_or(Shape::Pass, Shape::Read),
        Some(write @ (Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Batch(_))) => {
            let mut out = Vec::new();
            writes(entries, keyspace, &write, cql, &mut out);
            if out.is_empty() {
                Shape::Pass
            } else {
                Shape::Writes(out)
            }
        }
        // A statement the parser does not read (TRUNCATE, DROP, ALTER, or text it cannot
        // read) may change any table it names: those are invalidated whole.
        None => {
            if statement::first_word(cql).is_some_and(|w| w == "select") {
                return Shape::Pass;
            }
            let lower = cql.to_ascii_lowercase();
            // DROP or ALTER KEYSPACE names no table: every entry that can be in it.
            let keyspace_wide = names_word(&lower, "keyspace");
            let concerned = |e: &Entry| match &e.keyspace {
                Some(ks) => {
                    names_word(&lower, &e.table.to_ascii_lowercase()) || names_word(&lower, &ks.to_ascii_lowercase())
                }
                None => names_word(&lower, &e.table.to_ascii_lowercase()) || keyspace_wide,
            };
            let named: Vec<Write> = entries
                .iter()
                .enumerate()
                .filter(|(_, e)| concerned(e))
                .map(|(entry, _)| Write { entry, keyspace: String::new(), parts: None })
                .collect();
            if named.is_empty() {
                Shape::Pass
            } else {
                Shape::Writes(named)
            }
        }
    }
}

/// Whether `word` occurs in `text` as a whole identifier.
fn names_word(text: &str, word: &str) -> bool {
    let ident = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let bytes = text.as_bytes();
    text.match_indices(word).any(|(at, _)| !ident(bytes.get(at.wrapping_sub(1))) && !ident(bytes.get(at + word.len())))
}

fn read(entries: &[Entry], keyspace: Option<&str>, s: &Select, cql: &str) -> Option<Read> {
    let (entry, e, keyspace) =
        lookup(entries, keyspace, &s.table).into_iter().next().filter(|(_, _, ks)| !ks.is_empty())?;
    let parts = equalities(&s.r#where.relations, &e.partition_key, cql)?;
    // The whole primary key must be named, as the cache is documented to require.
    equalities(&s.r#where.relations, &e.range_key, cql)?;
    if s.r#where.relations.iter().any(|r| r.operator == "in") {
        return None;
    }
    // SELECT JSON answers one `[json]` column: none of the table's.
    let columns = if s.json {
        Some(Vec::new())
    } else {
        s.selectors
            .as_ref()
            .map(|selected| selected.iter().map(|c| if c.alias.is_none() { c.column.clone() } else { None }).collect())
    };
    Some(Read { entry, keyspace, table: s.table.name.clone(), parts, columns })
}

fn writes(entries: &[Entry], keyspace: Option<&str>, s: &Statement, cql: &str, out: &mut Vec<Write>) {
    let table = match s {
        Statement::Insert(i) => &i.table,
        Statement::Update(u) => &u.table,
        Statement::Delete(d) => &d.table,
        Statement::Batch(statements) => {
            for s in statements {
                writes(entries, keyspace, s, cql, out);
            }
            return;
        }
        Statement::Use { .. } | Statement::Select(_) => return,
    };
    for (entry, e, keyspace) in lookup(entries, keyspace, table) {
        let parts = if keyspace.is_empty() { None } else { write_parts(s, e, cql) };
        out.push(Write { entry, keyspace, parts });
    }
}

/// The partition key a write names, if it names exactly one.
fn write_parts(s: &Statement, e: &Entry, cql: &str) -> Option<Vec<Part>> {
    match s {
        Statement::Insert(i) if !i.json => e
            .partition_key
            .iter()
            .map(|c| {
                let at = i.columns.iter().position(|x| x == c)?;
                Some((c.clone(), src(i.values.get(at)?, cql)))
            })
            .collect(),
        Statement::Update(u) => equalities(&u.r#where.relations, &e.partition_key, cql),
        Statement::Delete(d) => equalities(&d.r#where.relations, &e.partition_key, cql),
        _ => None,
    }
}

/// A value bound to a marker: its type and bytes (`None` for null or unset).
pub(super) type Bound = (ColumnType, Option<bytes::Bytes>);

/// Gives the value bound to the `index`th marker (named `name`) of a column.
pub(super) type Markers<'a> = &'a dyn Fn(&str, usize, Option<&str>) -> Option<Bound>;

/// The canonical values of `parts`, or `None` if one cannot be had. `literal_type` gives a
/// column's type for a read's literals (a write's literals need none); `marker` gives the
/// value bound to a marker of a column.
pub(super) fn resolve(
    parts: &[Part],
    for_read: bool,
    literal_type: &dyn Fn(&str) -> Option<ColumnType>,
    marker: Markers<'_>,
) -> Option<Vec<Vec<u8>>> {
    parts
        .iter()
        .map(|(column, src)| match src {
            Src::Literal(canonical) => {
                let canonical = canonical.clone()?;
                if for_read && !key::is_class_of(&literal_type(column)?, &canonical) {
                    return None;
                }
                Some(canonical)
            }
            Src::Marker { index, name } => {
                let (t, bytes) = marker(column, *index, name.as_deref())?;
                key::bound(&t, &bytes?)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        let entry = |ks: Option<&str>, t: &str, pk: &[&str], ck: &[&str]| Entry {
            name: ks.map_or(t.to_string(), |ks| format!("{ks}.{t}")),
            keyspace: ks.map(str::to_string),
            table: t.into(),
            partition_key: pk.iter().map(|s| s.to_string()).collect(),
            range_key: ck.iter().map(|s| s.to_string()).collect(),
        };
        vec![entry(Some("ks"), "t", &["a", "b"], &["c"]), entry(None, "u", &["id"], &[])]
    }

    fn lit(s: &str) -> Src {
        Src::Literal(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn reads_of_one_whole_primary_key_are_cacheable() {
        let e = entries();
        let Shape::Read(r) = of(&e, None, "SELECT x, y AS z FROM ks.t WHERE a = 'p' AND b = ? AND c = 1") else {
            panic!()
        };
        assert_eq!((r.entry, r.keyspace.as_str()), (0, "ks"));
        assert_eq!(r.parts, vec![("a".into(), lit("sp")), ("b".into(), Src::Marker { index: 0, name: None })]);
        assert_eq!(r.columns, Some(vec![Some("x".into()), None]));
        let Shape::Read(r) = of(&e, Some("other"), "select * from u where id = 5") else { panic!() };
        assert_eq!((r.entry, r.keyspace.as_str(), r.columns), (1, "other", None));
        for pass in [
            "SELECT * FROM ks.t WHERE a = 'p' AND b = 1",
            "SELECT * FROM ks.t WHERE a = 'p' AND b IN (1, 2) AND c = 1",
            "SELECT * FROM u WHERE id = 5",
            "SELECT * FROM ks.v WHERE id = 5",
            "SELECT * FROM ks.t WHERE a = 'p' AND b = 1 AND c = 1 AND d IN (1)",
        ] {
            assert_eq!(of(&e, None, pass), Shape::Pass, "{pass}");
        }
    }

    #[test]
    fn writes_name_their_partitions_or_their_tables() {
        let e = entries();
        let w = |cql: &str, ks: Option<&str>| match of(&e, ks, cql) {
            Shape::Writes(w) => w,
            other => panic!("{cql}: {other:?}"),
        };
        let insert = w("INSERT INTO ks.t (c, b, a, x) VALUES (1, 2, 'p', 4) IF NOT EXISTS", None);
        assert_eq!(insert[0].parts, Some(vec![("a".into(), lit("sp")), ("b".into(), lit("n2"))]));
        let update = w("UPDATE u SET x = 1 WHERE id = :k", Some("ks2"));
        assert_eq!(update[0].keyspace, "ks2");
        assert_eq!(update[0].parts, Some(vec![("id".into(), Src::Marker { index: 0, name: Some("k".into()) })]));
        assert_eq!(w("DELETE FROM u WHERE id IN (1, 2)", Some("k"))[0].parts, None);
        assert_eq!(w("UPDATE u SET x = 1 WHERE id = 1", None)[0].parts, None);
        assert_eq!(w("INSERT INTO ks.t JSON '{}'", None)[0].parts, None);
        let batch = w(
            "BEGIN BATCH INSERT INTO u (id) VALUES (1); DELETE FROM ks.t WHERE a = 'x' AND b = 2 APPLY BATCH",
            Some("k"),
        );
        assert_eq!(batch.len(), 2);
        assert_eq!(w("TRUNCATE ks.t", None), vec![Write { entry: 0, keyspace: String::new(), parts: None }]);
        let dropped = |cql: &str| w(cql, None).iter().map(|w| w.entry).collect::<Vec<_>>();
        assert_eq!(dropped("DROP KEYSPACE ks"), vec![0, 1], "ks.t, and u that may be in ks");
        assert_eq!(dropped("DROP KEYSPACE other"), vec![1]);
        assert_eq!(dropped("DROP TABLE other.u"), vec![1]);
        assert_eq!(of(&e, None, "INSERT INTO ks.other (a) VALUES (1)"), Shape::Pass);
        assert_eq!(of(&e, None, "SELECT count(*) FROM ks.t WHERE token(a) > 0 GROUP BY b"), Shape::Pass);
        assert_eq!(of(&e, None, "USE \"Ks\""), Shape::Use("Ks".into()));
    }

    #[test]
    fn reads_need_types_for_literals_and_writes_do_not() {
        let parts = vec![("a".to_string(), lit("sp")), ("b".to_string(), Src::Marker { index: 0, name: None })];
        let text = |_: &str| Some(ColumnType::Varchar);
        let unknown = |_: &str| None;
        let bound = |_: &str, i: usize, _: Option<&str>| {
            (i == 0).then(|| (ColumnType::Int, Some(bytes::Bytes::from_static(&[0, 0, 0, 7]))))
        };
        assert_eq!(resolve(&parts, true, &text, &bound), Some(vec![b"sp".to_vec(), b"n7".to_vec()]));
        assert_eq!(resolve(&parts, true, &unknown, &bound), None);
        assert_eq!(resolve(&parts, false, &unknown, &bound), Some(vec![b"sp".to_vec(), b"n7".to_vec()]));
        let null = |_: &str, _: usize, _: Option<&str>| Some((ColumnType::Int, None));
        assert_eq!(resolve(&parts, false, &unknown, &null), None);
    }
}
