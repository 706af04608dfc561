use super::*;

fn table(keyspace: Option<&str>, name: &str) -> Table {
    Table { keyspace: keyspace.map(str::to_owned), name: name.to_owned() }
}

/// The text of a term's range in `cql`.
fn text<'a>(cql: &'a str, term: &Term) -> &'a str {
    match term {
        Term::Literal { span, .. } | Term::Constant { span, .. } | Term::Other(span) => &cql[span.clone()],
        Term::Marker { .. } => "?",
    }
}

#[test]
fn use_and_select() {
    assert_eq!(parse("USE ks"), Some(Statement::Use { keyspace: "ks".into() }));
    assert_eq!(parse("use \"MyKs\";"), Some(Statement::Use { keyspace: "MyKs".into() }));
    let cql =
        "SELECT a, \"B\" AS b2, writetime(c) FROM ks.t WHERE pk = 'x' AND ck IN (1, 2) AND token(pk) > 3 LIMIT 10";
    let Some(Statement::Select(s)) = parse(cql) else { panic!() };
    assert_eq!(s.table, table(Some("ks"), "t"));
    let selectors = s.selectors.unwrap();
    assert_eq!(selectors[0], Selected { column: Some("a".into()), alias: None });
    assert_eq!(selectors[1], Selected { column: Some("B".into()), alias: Some("b2".into()) });
    assert_eq!(selectors[2], Selected { column: None, alias: None });
    assert_eq!(s.r#where.relations.len(), 2);
    assert_eq!((s.r#where.relations[0].column.as_str(), s.r#where.relations[0].operator.as_str()), ("pk", "="));
    assert_eq!(text(cql, &s.r#where.relations[0].value), "'x'");
    assert_eq!((s.r#where.relations[1].operator.as_str(), text(cql, &s.r#where.relations[1].value)), ("in", "(1, 2)"));
    assert_eq!(s.r#where.others, 1);
    assert!(s.more);
    let Some(Statement::Select(s)) = parse("select * from T where k = ?") else { panic!() };
    assert_eq!((s.selectors, s.table, s.more), (None, table(None, "t"), false));
    assert_eq!(s.r#where.relations[0].value, Term::Marker { index: 0, name: None });
}

#[test]
fn insert_with_literals_and_markers() {
    let cql = "INSERT INTO ks.t (pk, \"Col\", n, b, u, m) VALUES ('it''s', -1.5e3, :n, 0xCAFE, \
               123e4567-e89b-12d3-a456-426614174000, {'k': true}) USING TTL ?";
    let Some(Statement::Insert(i)) = parse(cql) else { panic!() };
    assert_eq!(i.columns, ["pk", "Col", "n", "b", "u", "m"]);
    assert_eq!(text(cql, &i.values[0]), "'it''s'");
    assert!(matches!(i.values[0], Term::Literal { kind: LiteralKind::String, .. }));
    assert!(matches!(i.values[1], Term::Literal { kind: LiteralKind::Number, .. }));
    assert_eq!(text(cql, &i.values[1]), "-1.5e3");
    assert_eq!(i.values[2], Term::Marker { index: 0, name: Some("n".into()) });
    assert!(matches!(i.values[3], Term::Literal { kind: LiteralKind::Blob, .. }));
    assert!(matches!(i.values[4], Term::Literal { kind: LiteralKind::Uuid, .. }));
    assert_eq!(text(cql, &i.values[5]), "{'k': true}");
    // The map's `: true` is not a named marker; the TTL's `?` is the second marker.
    assert_eq!(lex::tokens(cql).unwrap().iter().filter(|t| matches!(t.kind, Kind::Marker { .. })).count(), 2);
    assert!(parse("INSERT INTO t (a, b) VALUES (1)").is_none(), "columns and values must pair");
    let Some(Statement::Insert(i)) = parse("INSERT INTO t JSON '{\"a\": 1}'") else { panic!() };
    assert!(i.json && i.columns.is_empty());
}

#[test]
fn update_assignments() {
    let cql = "UPDATE t USING TIMESTAMP ? SET a = ?, b = b + {1}, c['k'] = 'v', d = $$x$$ WHERE pk = ? IF a = 1";
    let Some(Statement::Update(u)) = parse(cql) else { panic!() };
    let columns: Vec<_> = u.assignments.iter().map(|a| a.column.as_str()).collect();
    assert_eq!(columns, ["a", "b", "c", "d"]);
    assert_eq!(u.assignments[0].value, Some(Term::Marker { index: 1, name: None }));
    assert_eq!(u.assignments[1].value, None);
    assert_eq!(u.assignments[2].value, None);
    assert_eq!(text(cql, u.assignments[3].value.as_ref().unwrap()), "$$x$$");
    assert_eq!(u.r#where.relations[0].value, Term::Marker { index: 2, name: None });
}

#[test]
fn delete_and_batch() {
    let Some(Statement::Delete(d)) = parse("DELETE a, m['k'] FROM ks.t USING TIMESTAMP 1 WHERE pk = 1") else {
        panic!()
    };
    assert_eq!((d.columns, d.table), (vec!["a".to_owned(), "m".to_owned()], table(Some("ks"), "t")));
    let cql = "BEGIN UNLOGGED BATCH USING TIMESTAMP 5 INSERT INTO t (a) VALUES (?); \
               UPDATE t SET b = 'x' WHERE a = ? DELETE FROM t WHERE a = 3 APPLY BATCH;";
    let Some(Statement::Batch(statements)) = parse(cql) else { panic!() };
    assert_eq!(statements.len(), 3);
    let Statement::Update(u) = &statements[1] else { panic!() };
    assert_eq!(u.r#where.relations[0].value, Term::Marker { index: 1, name: None });
    assert!(parse("BEGIN BATCH SELECT * FROM t APPLY BATCH").is_none());
    // Batches do not nest: no input recurses deeply (this one would overflow the stack).
    assert!(parse(&"BEGIN BATCH ".repeat(100_000)).is_none());
    assert_eq!(marker_count("INSERT INTO t (a, b) VALUES (?, :b) USING TTL ?"), Some(3));
    assert_eq!(marker_count("UPDATE t SET n = (blob) :a, c = ? WHERE k = 1"), Some(2));
    assert_eq!(first_word("/* x */ -- y\n  Insert INTO t"), Some("insert".into()));
}

#[test]
fn comments_case_and_other_statements() {
    let Some(Statement::Select(s)) = parse("/* c */ SeLeCt -- x\n * FROM Ks.\"T\" // y") else { panic!() };
    assert_eq!(s.table, table(Some("ks"), "T"));
    for other in ["CREATE TABLE t (a int PRIMARY KEY)", "TRUNCATE t", "", "SELECT", "SELECT * FROM", "'unclosed"] {
        assert_eq!(parse(other), None, "{other}");
    }
    assert_eq!(parse("SELECT * FROM t WHERE a = 1 garbage ) here"), None);
}

/// No input makes the parser panic: real statements with bytes replaced, inserted and cut
/// at random (a fixed-seed generator), and every prefix of them.
#[test]
fn mutated_statements_do_not_panic() {
    let statements = [
        "INSERT INTO ks.t (pk, \"Col\", m) VALUES ('it''s', -1.5e3, {'k': :v}) USING TTL ?",
        "UPDATE t USING TIMESTAMP ? SET a = ?, b = b + {1}, c['k'] = 'v' WHERE pk = ? IF a = 1",
        "BEGIN BATCH INSERT INTO t (a) VALUES (?); DELETE a FROM t WHERE b IN (1, 2) APPLY BATCH",
        "SELECT a AS b, f(c) FROM ks.t WHERE pk = 123e4567-e89b-12d3-a456-426614174000 AND x > 0x0 /* */",
        "SELECT * FROM t WHERE k = $$a$$ AND \"q\"\"x\" CONTAINS KEY 1h30m LIMIT 1;",
    ];
    let alphabet = b" ,;()[]{}'\"$:?=<>!-+*/.0123456789abcdefxyzAEX\n\xff";
    let mut seed: u64 = 0xc91;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for cql in statements {
        for end in 0..=cql.len() {
            if let Some(prefix) = cql.get(..end) {
                let _ = parse(prefix);
            }
        }
        for _ in 0..3000 {
            let mut bytes = cql.as_bytes().to_vec();
            for _ in 0..=next() % 4 {
                let at = next() % (bytes.len() + 1);
                let b = alphabet.get(next() % alphabet.len()).copied().unwrap_or(b' ');
                match next() % 3 {
                    0 if at < bytes.len() => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ => bytes.truncate(at),
                }
            }
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }
}

#[test]
fn literals_become_bytes() {
    assert_eq!(literal_bytes(LiteralKind::String, "'it''s'"), Some(b"it's".to_vec()));
    assert_eq!(literal_bytes(LiteralKind::String, "$$a'b$$"), Some(b"a'b".to_vec()));
    assert_eq!(literal_bytes(LiteralKind::Blob, "0xCAfe"), Some(vec![0xca, 0xfe]));
    assert_eq!(literal_bytes(LiteralKind::Blob, "0xCAf"), None);
    assert_eq!(literal_bytes(LiteralKind::Blob, "0x"), Some(vec![]));
    assert_eq!(literal_bytes(LiteralKind::String, "'"), None);
}

#[test]
fn named_markers_after_like_are_markers() {
    let cql = "SELECT * FROM t WHERE v LIKE :p AND id = :id";
    assert_eq!(marker_count(cql), Some(2));
    let Some(Statement::Select(s)) = parse(cql) else { panic!() };
    assert_eq!(s.r#where.relations[1].value, Term::Marker { index: 1, name: Some("id".into()) });
}
