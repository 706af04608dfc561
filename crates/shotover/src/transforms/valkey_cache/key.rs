//! Cache keys: a partition's key values in one canonical form, whichever way a statement
//! gives them (a literal, or a bound value of a known type), so that a write invalidates
//! the entry a read of the same partition was cached under.
//!
//! Only types whose values have one canonical form are cached: text (`ascii`, `text`,
//! `varchar`), integers (`tinyint` to `bigint`, `varint`), `uuid`/`timeuuid`, `blob` and
//! `boolean`. A value of another type (a timestamp can be written `'2024-01-01'` or as a
//! number) makes a read uncacheable. A write needs no type: its literal's canonical form
//! is the only one a cached read of a cacheable type could have used.

use shotover_protocols::cassandra::result::ColumnType;
use shotover_protocols::cassandra::statement::{literal_bytes, LiteralKind, Term};
use std::fmt::Write as _;

/// The first byte of a canonical value: its class.
const TEXT: u8 = b's';
const INTEGER: u8 = b'n';
const UUID: u8 = b'u';
const BLOB: u8 = b'b';
const BOOLEAN: u8 = b't';

/// The class of a cacheable type.
fn class(t: &ColumnType) -> Option<u8> {
    use ColumnType::*;
    Some(match t {
        Ascii | Varchar => TEXT,
        Tinyint | Smallint | Int | Bigint | Varint => INTEGER,
        Uuid | Timeuuid => UUID,
        Blob => BLOB,
        Boolean => BOOLEAN,
        _ => return None,
    })
}

/// The canonical form of a bound value of type `t` (`None`: not a cacheable type, or not a
/// valid value of it).
pub(super) fn bound(t: &ColumnType, bytes: &[u8]) -> Option<Vec<u8>> {
    let class = class(t)?;
    let mut out = vec![class];
    match class {
        TEXT => out.extend_from_slice(std::str::from_utf8(bytes).ok()?.as_bytes()),
        INTEGER => {
            if bytes.is_empty() || bytes.len() > 16 {
                return None;
            }
            // Big-endian two's complement, sign-extended.
            let fill = if bytes[0] & 0x80 != 0 { 0xff } else { 0 };
            let mut wide = [fill; 16];
            wide[16 - bytes.len()..].copy_from_slice(bytes);
            // Writing to a Vec cannot fail.
            let _ = write!(Digits(&mut out), "{}", i128::from_be_bytes(wide));
        }
        UUID if bytes.len() == 16 => out.extend_from_slice(bytes),
        BLOB => out.extend_from_slice(bytes),
        BOOLEAN if bytes.len() == 1 => out.push(u8::from(bytes[0] != 0)),
        _ => return None,
    }
    Some(out)
}

/// The canonical form of a literal, by its kind alone (`None`: a literal of no cacheable
/// class, such as `1.5`, or not a literal).
pub(super) fn literal(term: &Term, cql: &str) -> Option<Vec<u8>> {
    match term {
        Term::Literal { kind, span } => {
            let text = cql.get(span.clone())?;
            let mut out = Vec::with_capacity(text.len() + 1);
            match kind {
                LiteralKind::String => {
                    out.push(TEXT);
                    out.extend(literal_bytes(*kind, text)?);
                }
                LiteralKind::Blob => {
                    out.push(BLOB);
                    out.extend(literal_bytes(*kind, text)?);
                }
                LiteralKind::Number => {
                    let n: i128 = text.parse().ok()?;
                    out.push(INTEGER);
                    let _ = write!(Digits(&mut out), "{n}");
                }
                LiteralKind::Uuid => {
                    out.push(UUID);
                    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
                    if hex.len() != 32 {
                        return None;
                    }
                    for pair in hex.chunks(2) {
                        out.push(u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?);
                    }
                }
                LiteralKind::Duration => return None,
            }
            Some(out)
        }
        Term::Constant { word, .. } => match word.as_str() {
            "true" => Some(vec![BOOLEAN, 1]),
            "false" => Some(vec![BOOLEAN, 0]),
            _ => None,
        },
        Term::Marker { .. } | Term::Other(_) => None,
    }
}

/// Whether a canonical value is of the class of type `t` (a literal read from a column
/// of that type is cached only then).
pub(super) fn is_class_of(t: &ColumnType, canonical: &[u8]) -> bool {
    class(t).is_some_and(|c| canonical.first() == Some(&c))
}

/// The Valkey hash of one partition: `{entry}:keyspace:` and each value with its length,
/// so that no two partitions share a name. Every key of an entry has the hash tag
/// `{entry}`, so that on a cluster they share a slot with the entry's generation key.
pub(super) fn partition(entry: &str, keyspace: &str, values: &[Vec<u8>]) -> Vec<u8> {
    let mut key = table(entry);
    key.push(b':');
    key.extend_from_slice(keyspace.as_bytes());
    for value in values {
        let _ = write!(Digits(&mut key), ":{}:", value.len());
        key.extend_from_slice(value);
    }
    key
}

/// The key holding an entry's generation: bumped to invalidate the whole table.
pub(super) fn table(entry: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(entry.len() + 2);
    key.push(b'{');
    key.extend_from_slice(entry.as_bytes());
    key.push(b'}');
    key
}

/// `write!` into a byte vector.
struct Digits<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Digits<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shotover_protocols::cassandra::statement::{parse, Statement};

    fn literal_as(t: &ColumnType, term: &Term, cql: &str) -> Option<Vec<u8>> {
        literal(term, cql).filter(|c| is_class_of(t, c))
    }

    /// The first WHERE term of a SELECT.
    fn term(cql: &str) -> Term {
        let Some(Statement::Select(s)) = parse(cql) else { panic!("{cql}") };
        s.r#where.relations[0].value.clone()
    }

    #[test]
    fn literals_and_bound_values_meet() {
        let cases: [(&str, ColumnType, &[u8]); 6] = [
            ("SELECT * FROM t WHERE k = 'it''s'", ColumnType::Varchar, b"it's"),
            ("SELECT * FROM t WHERE k = -5", ColumnType::Int, &[0xff, 0xff, 0xff, 0xfb]),
            ("SELECT * FROM t WHERE k = 0005", ColumnType::Bigint, &[0, 0, 0, 0, 0, 0, 0, 5]),
            (
                "SELECT * FROM t WHERE k = 123E4567-e89b-12d3-a456-426614174000",
                ColumnType::Uuid,
                &[0x12, 0x3e, 0x45, 0x67, 0xe8, 0x9b, 0x12, 0xd3, 0xa4, 0x56, 0x42, 0x66, 0x14, 0x17, 0x40, 0],
            ),
            ("SELECT * FROM t WHERE k = 0xCAFE", ColumnType::Blob, &[0xca, 0xfe]),
            ("SELECT * FROM t WHERE k = true", ColumnType::Boolean, &[1]),
        ];
        for (cql, t, bytes) in cases {
            let from_literal = literal_as(&t, &term(cql), cql);
            assert!(from_literal.is_some(), "{cql}");
            assert_eq!(from_literal, bound(&t, bytes), "{cql}");
            assert_eq!(literal(&term(cql), cql), from_literal, "{cql}");
        }
    }

    #[test]
    fn uncacheable_types_and_mismatched_literals_give_nothing() {
        let cql = "SELECT * FROM t WHERE k = '2024-01-01'";
        assert_eq!(literal_as(&ColumnType::Timestamp, &term(cql), cql), None);
        assert_eq!(bound(&ColumnType::Timestamp, &[0; 8]), None);
        assert_eq!(literal_as(&ColumnType::Int, &term(cql), cql), None);
        let cql = "SELECT * FROM t WHERE k = 1.5";
        assert_eq!(literal(&term(cql), cql), None);
        assert_eq!(bound(&ColumnType::Varchar, &[0xff]), None);
        assert_eq!(bound(&ColumnType::Uuid, &[1, 2]), None);
        assert_eq!(bound(&ColumnType::Int, &[]), None);
        assert_eq!(bound(&ColumnType::Varint, &[1; 17]), None);
    }

    #[test]
    fn keys_share_the_entrys_hash_tag_and_cannot_collide() {
        assert_eq!(table("ks.t"), b"{ks.t}");
        let a = partition("ks.t", "ks", &[b"sa:1".to_vec(), b"sb".to_vec()]);
        let b = partition("ks.t", "ks", &[b"sa".to_vec(), b"s1:sb".to_vec()]);
        assert_ne!(a, b);
        assert_eq!(a, b"{ks.t}:ks:4:sa:1:2:sb");
    }
}
