//! Sorting CQL statements into the query types that QueryTypeFilter filters on.
//!
//! [`classify`] reads only the leading keyword (after whitespace and `--`, `//` and `/* */`
//! comments, case-insensitively), and for writes whether an `IF` follows, skipping string
//! literals, `$$` strings and quoted identifiers:
//!
//! | statement | type |
//! |---|---|
//! | SELECT | Read |
//! | USE, LIST (roles, users, permissions), DESCRIBE / DESC | Read: they read, or change only the connection |
//! | INSERT, UPDATE, DELETE, TRUNCATE | Write |
//! | INSERT/UPDATE/DELETE with `IF` (lightweight transactions) | ReadWrite: they read the row, write only if the condition holds, and return what they read |
//! | BEGIN ... BATCH | Write; ReadWrite if any statement in it has `IF` |
//! | CREATE, ALTER, DROP, GRANT, REVOKE | SchemaChange: they change schema or access, not rows |
//! | anything else, and empty input | Write, the conservative choice: a deny list of writes also stops what the proxy cannot name |
//!
//! Non-QUERY requests ([`classify_request`]): PREPARE takes its statement's type, so a filter
//! stops a statement as early as it is prepared; EXECUTE takes the type recorded for its
//! prepared id in [`PreparedQueryTypes`] (Write if unknown); STARTUP, OPTIONS, REGISTER and
//! AUTH_RESPONSE set up the connection, every driver sends them, and they are Read.

use super::frame::{CassandraBody, CassandraFrame};
use super::request::{BatchQuery, Prepare};
use super::result::Prepared;
use bytes::Bytes;
use std::collections::HashMap;

/// The query types of the proxy's QueryTypeFilter, shared with Valkey.
pub use crate::valkey::command::QueryType;

/// The query type of a CQL statement.
pub fn classify(cql: &str) -> QueryType {
    let mut tokens = Tokens { s: cql.as_bytes(), pos: 0 };
    let Some(first) = tokens.next_word() else {
        return QueryType::Write;
    };
    let is = |kw: &str| first.eq_ignore_ascii_case(kw.as_bytes());
    if is("SELECT") || is("USE") || is("LIST") || is("DESCRIBE") || is("DESC") {
        QueryType::Read
    } else if is("INSERT") || is("UPDATE") || is("DELETE") || is("BEGIN") {
        if tokens.any_word("IF") {
            QueryType::ReadWrite
        } else {
            QueryType::Write
        }
    } else if is("CREATE") || is("ALTER") || is("DROP") || is("GRANT") || is("REVOKE") {
        QueryType::SchemaChange
    } else {
        QueryType::Write
    }
}

/// The query type of a request frame (see the module doc). Responses are Read.
pub fn classify_request(frame: &CassandraFrame, prepared: &PreparedQueryTypes) -> QueryType {
    match &frame.body {
        CassandraBody::Query(q) => classify(&q.query),
        CassandraBody::Prepare(p) => classify(&p.query),
        CassandraBody::Execute(e) => prepared.get(&e.id).unwrap_or(QueryType::Write),
        CassandraBody::Batch(b) => {
            let lwt = b.statements.iter().any(|s| match &s.query {
                BatchQuery::Query(q) => classify(q) == QueryType::ReadWrite,
                BatchQuery::Prepared(id) => prepared.get(id) == Some(QueryType::ReadWrite),
            });
            if lwt {
                QueryType::ReadWrite
            } else {
                QueryType::Write
            }
        }
        _ => QueryType::Read,
    }
}

/// Words of a statement, skipping comments, literals and quoted identifiers.
struct Tokens<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Tokens<'a> {
    fn peek(&self, offset: usize) -> Option<u8> {
        self.s.get(self.pos + offset).copied()
    }

    /// Moves past the end of the first `end` from the current position (or to the end).
    fn skip_past(&mut self, end: &[u8]) {
        let rest = self.s.get(self.pos..).unwrap_or_default();
        self.pos = match rest.windows(end.len()).position(|w| w == end) {
            Some(i) => self.pos + i + end.len(),
            None => self.s.len(),
        };
    }

    /// Skips a literal quoted by `q`, where a doubled quote stands for itself.
    fn skip_quoted(&mut self, q: u8) {
        self.pos += 1;
        while let Some(c) = self.peek(0) {
            self.pos += 1;
            if c == q {
                if self.peek(0) == Some(q) {
                    self.pos += 1;
                } else {
                    return;
                }
            }
        }
    }

    fn next_word(&mut self) -> Option<&'a [u8]> {
        while let Some(c) = self.peek(0) {
            match (c, self.peek(1)) {
                (b'-', Some(b'-')) | (b'/', Some(b'/')) => self.skip_past(b"\n"),
                (b'/', Some(b'*')) => {
                    self.pos += 2;
                    self.skip_past(b"*/");
                }
                (b'$', Some(b'$')) => {
                    self.pos += 2;
                    self.skip_past(b"$$");
                }
                (b'\'' | b'"', _) => self.skip_quoted(c),
                (c, _) if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = self.pos;
                    while self.peek(0).is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
                        self.pos += 1;
                    }
                    return self.s.get(start..self.pos);
                }
                _ => self.pos += 1,
            }
        }
        None
    }

    fn any_word(&mut self, kw: &str) -> bool {
        while let Some(word) = self.next_word() {
            if word.eq_ignore_ascii_case(kw.as_bytes()) {
                return true;
            }
        }
        false
    }
}

/// The query types of prepared statements, by prepared id, so that EXECUTE can be
/// classified. Drivers prepare on one connection and execute on all of them, so keep one per
/// core rather than per connection.
///
/// Bounded: when full, an arbitrary entry is forgotten, and its EXECUTEs classify as Write
/// until it is prepared again.
#[derive(Debug, Clone)]
pub struct PreparedQueryTypes {
    by_id: HashMap<Bytes, QueryType>,
    capacity: usize,
}

impl Default for PreparedQueryTypes {
    fn default() -> Self {
        PreparedQueryTypes::with_capacity(PreparedQueryTypes::DEFAULT_CAPACITY)
    }
}

impl PreparedQueryTypes {
    /// Entries kept by [`PreparedQueryTypes::new`].
    pub const DEFAULT_CAPACITY: usize = 10_000;

    pub fn new() -> Self {
        PreparedQueryTypes::default()
    }

    pub fn with_capacity(capacity: usize) -> Self {
        PreparedQueryTypes { by_id: HashMap::new(), capacity: capacity.max(1) }
    }

    pub fn insert(&mut self, id: Bytes, query_type: QueryType) {
        if self.by_id.len() >= self.capacity && !self.by_id.contains_key(&id) {
            if let Some(victim) = self.by_id.keys().next().cloned() {
                self.by_id.remove(&victim);
            }
        }
        self.by_id.insert(id, query_type);
    }

    /// Records the type of a PREPARE's statement under the id its RESULT gave it.
    pub fn remember(&mut self, request: &Prepare, result: &Prepared) {
        self.insert(result.id.clone(), classify(&request.query));
    }

    pub fn get(&self, id: &[u8]) -> Option<QueryType> {
        self.by_id.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Leading keywords that name a statement in metrics; anything else is `OTHER`, so labels
/// stay bounded whatever clients send.
const KEYWORDS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "TRUNCATE", "USE", "CREATE", "ALTER", "DROP", "GRANT", "REVOKE",
    "LIST", "DESCRIBE",
];

/// The statement's leading keyword, upper-cased, from a fixed set (`OTHER` otherwise).
pub fn statement_keyword(cql: &str) -> &'static str {
    let mut tokens = Tokens { s: cql.as_bytes(), pos: 0 };
    let Some(first) = tokens.next_word() else { return "OTHER" };
    KEYWORDS.iter().find(|k| first.eq_ignore_ascii_case(k.as_bytes())).copied().unwrap_or("OTHER")
}

/// The query string of a QUERY or PREPARE request, read straight from its bytes when its
/// body is neither compressed nor preceded by a custom payload; `None` otherwise (parse the
/// frame instead). Costs no allocation.
pub fn query_text(frame: &[u8]) -> Option<&str> {
    use super::header::{flags, HEADER_LEN};
    let header = super::FrameHeader::parse(frame).ok()?;
    let is_query = matches!(header.opcode, super::Opcode::Query | super::Opcode::Prepare);
    if header.response || !is_query || header.flags & (flags::COMPRESSION | flags::CUSTOM_PAYLOAD) != 0 {
        return None;
    }
    let len_bytes: [u8; 4] = frame.get(HEADER_LEN..HEADER_LEN + 4)?.try_into().ok()?;
    let len = usize::try_from(i32::from_be_bytes(len_bytes)).ok()?;
    let text = frame.get(HEADER_LEN + 4..HEADER_LEN + 4 + len)?;
    std::str::from_utf8(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::captures::*;
    use crate::cassandra::compression::Compression;
    use QueryType::*;

    #[test]
    fn statements() {
        let cases = [
            ("SELECT * FROM ks.t", Read),
            ("  select k from t", Read),
            ("-- a comment\nSELECT 1", Read),
            ("// c\n/* block\n comment */ SeLeCt x FROM t", Read),
            ("USE ks", Read),
            ("LIST ROLES", Read),
            ("DESCRIBE KEYSPACES", Read),
            ("INSERT INTO t (k) VALUES (1)", Write),
            ("INSERT INTO t (k) VALUES (1) IF NOT EXISTS", ReadWrite),
            ("insert into t (k, v) values (1, 'IF') using ttl 5", Write),
            ("INSERT INTO t (\"if\") VALUES ($$ IF $$)", Write),
            ("UPDATE t SET v = 'it''s IF' WHERE k = 1", Write),
            ("UPDATE t SET v = 2 WHERE k = 1 IF v = 1", ReadWrite),
            ("DELETE FROM t WHERE k = 1", Write),
            ("DELETE FROM t WHERE k = 1 if exists", ReadWrite),
            ("TRUNCATE ks.t", Write),
            ("BEGIN BATCH INSERT INTO t (k) VALUES (1); APPLY BATCH", Write),
            ("BEGIN UNLOGGED BATCH UPDATE t SET v = 1 WHERE k = 1 IF v = 0; APPLY BATCH", ReadWrite),
            ("CREATE TABLE IF NOT EXISTS t (k int PRIMARY KEY)", SchemaChange),
            ("ALTER TABLE t ADD v int", SchemaChange),
            ("DROP KEYSPACE ks", SchemaChange),
            ("GRANT SELECT ON ks.t TO r", SchemaChange),
            ("REVOKE SELECT ON ks.t FROM r", SchemaChange),
            ("", Write),
            ("/* unterminated", Write),
            ("'unterminated", Write),
            ("FROBNICATE", Write),
            ("(SELECT)", Read),
        ];
        for (cql, expected) in cases {
            assert_eq!(classify(cql), expected, "{cql}");
        }
    }

    #[test]
    fn requests_v4_1() {
        let mut prepared = PreparedQueryTypes::new();
        let parse = |h: &str| CassandraFrame::parse(&Bytes::from(hex(h)), Compression::None).unwrap();
        assert_eq!(classify_request(&parse(QUERY_V4_1), &prepared), Read);
        assert_eq!(classify_request(&parse(QUERY_V4_2), &prepared), ReadWrite);
        assert_eq!(classify_request(&parse(QUERY_V4_3), &prepared), Write);
        assert_eq!(classify_request(&parse(PREPARE_V4_1), &prepared), Read);
        assert_eq!(classify_request(&parse(STARTUP_V4_LZ4), &prepared), Read);
        assert_eq!(classify_request(&parse(REGISTER_V3), &prepared), Read);
        // EXECUTE of an unknown id is Write; once recorded, it takes its statement's type.
        let execute = parse(EXECUTE_V4_1);
        assert_eq!(classify_request(&execute, &prepared), Write);
        prepared.insert(Bytes::from(hex("deadbeefdeadbeefdeadbeefdeadbeef")), Read);
        assert_eq!(classify_request(&execute, &prepared), Read);
        // A batch with a prepared LWT is ReadWrite.
        let batch = parse(BATCH_V4_1);
        assert_eq!(classify_request(&batch, &prepared), Write);
        prepared.insert(Bytes::from(vec![0xab; 16]), ReadWrite);
        assert_eq!(classify_request(&batch, &prepared), ReadWrite);
    }

    #[test]
    fn prepared_map_is_bounded() {
        let mut prepared = PreparedQueryTypes::with_capacity(3);
        for i in 0..10u8 {
            prepared.insert(Bytes::from(vec![i]), Read);
        }
        assert_eq!(prepared.len(), 3);
        assert_eq!(prepared.get(&[9]), Some(Read));
        prepared.insert(Bytes::from(vec![9]), Write);
        assert_eq!((prepared.len(), prepared.get(&[9])), (3, Some(Write)));
    }

    #[test]
    fn statement_keyword_is_bounded() {
        assert_eq!(statement_keyword("  select * from t"), "SELECT");
        assert_eq!(statement_keyword("/* c */ INSERT INTO t"), "INSERT");
        assert_eq!(statement_keyword("FROBNICATE"), "OTHER");
        assert_eq!(statement_keyword(""), "OTHER");
    }

    #[test]
    fn query_text_reads_uncompressed_queries() {
        let mut frame = vec![0x04, 0, 0, 1, 0x07];
        let body = [&(8i32).to_be_bytes()[..], b"SELECT 1", &[0, 1, 0]].concat();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        assert_eq!(query_text(&frame), Some("SELECT 1"));
        frame[1] = 0x01; // compressed: the caller must parse
        assert_eq!(query_text(&frame), None);
        assert_eq!(query_text(&frame[..12]), None);
    }
}
