//! A small hand-written CQL tokenizer and parser for the statements the test double runs:
//! `CREATE KEYSPACE`, `CREATE TABLE`, `DROP KEYSPACE`, `DROP TABLE`, `USE`, `INSERT`,
//! `SELECT` and `BEGIN ... APPLY BATCH` of INSERTs.
//!
//! The input comes from the network: nothing here indexes or unwraps, and every failure is a
//! [`CqlError`] that becomes an ERROR frame (Syntax for text it cannot read, Invalid for CQL
//! it reads but does not run).

use shotover_protocols::cassandra::result::ColumnType;
use shotover_protocols::cassandra::ErrorCode;

/// Why a statement failed: the ERROR frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CqlError {
    pub code: ErrorCode,
    pub message: String,
    /// Code-specific fields (ALREADY_EXISTS, UNPREPARED).
    pub extra: Vec<u8>,
}

impl CqlError {
    pub fn syntax(message: impl Into<String>) -> Self {
        CqlError { code: ErrorCode::SYNTAX_ERROR, message: message.into(), extra: Vec::new() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        CqlError { code: ErrorCode::INVALID, message: message.into(), extra: Vec::new() }
    }

    pub fn unsupported(what: &str) -> Self {
        CqlError::invalid(format!("the CQL test double does not support {what}"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Token {
    /// An unquoted identifier or keyword, lowercased.
    Word(String),
    /// A `"quoted"` identifier, case kept.
    Quoted(String),
    /// A `'string'` or `$$string$$`.
    Str(String),
    /// An integer or decimal number as written, sign included.
    Number(String),
    Uuid([u8; 16]),
    /// `0x...`
    Blob(Vec<u8>),
    /// Punctuation: `( ) , ; . * = ? { } : < > [ ] + -`.
    Sym(char),
}

fn uuid_at(c: &[char], i: usize) -> Option<[u8; 16]> {
    let s = c.get(i..i + 36)?;
    if c.get(i + 36).is_some_and(|n| n.is_alphanumeric() || *n == '_') {
        return None;
    }
    let mut hex = String::with_capacity(32);
    for (j, ch) in s.iter().enumerate() {
        if matches!(j, 8 | 13 | 18 | 23) {
            if *ch != '-' {
                return None;
            }
        } else if ch.is_ascii_hexdigit() {
            hex.push(*ch);
        } else {
            return None;
        }
    }
    let bytes = hex_bytes(&hex)?;
    bytes.try_into().ok()
}

pub(crate) fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok())).collect()
}

/// Splits CQL text into tokens. Comments (`--`, `//`, `/* */`) are dropped.
pub(crate) fn tokenize(cql: &str) -> Result<Vec<Token>, CqlError> {
    let c: Vec<char> = cql.chars().collect();
    let at = |i: usize| c.get(i).copied();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(ch) = at(i) {
        if ch.is_whitespace() {
            i += 1;
        } else if (ch == '-' && at(i + 1) == Some('-')) || (ch == '/' && at(i + 1) == Some('/')) {
            while at(i).is_some_and(|x| x != '\n') {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == Some('*') {
            i += 2;
            loop {
                match at(i) {
                    None => return Err(CqlError::syntax("unterminated comment")),
                    Some('*') if at(i + 1) == Some('/') => {
                        i += 2;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else if ch == '\'' || ch == '"' {
            // 'string' and "identifier", each with its quote doubled inside.
            let mut s = String::new();
            i += 1;
            loop {
                match at(i) {
                    None => return Err(CqlError::syntax(format!("unterminated {ch}quoted{ch} text"))),
                    Some(q) if q == ch && at(i + 1) == Some(ch) => {
                        s.push(ch);
                        i += 2;
                    }
                    Some(q) if q == ch => {
                        i += 1;
                        break;
                    }
                    Some(x) => {
                        s.push(x);
                        i += 1;
                    }
                }
            }
            out.push(if ch == '\'' { Token::Str(s) } else { Token::Quoted(s) });
        } else if ch == '$' && at(i + 1) == Some('$') {
            let mut s = String::new();
            i += 2;
            loop {
                match at(i) {
                    None => return Err(CqlError::syntax("unterminated $$string$$")),
                    Some('$') if at(i + 1) == Some('$') => {
                        i += 2;
                        break;
                    }
                    Some(x) => {
                        s.push(x);
                        i += 1;
                    }
                }
            }
            out.push(Token::Str(s));
        } else if let Some(uuid) = uuid_at(&c, i) {
            out.push(Token::Uuid(uuid));
            i += 36;
        } else if ch == '0' && matches!(at(i + 1), Some('x' | 'X')) {
            i += 2;
            let mut hex = String::new();
            while let Some(h) = at(i).filter(|h| h.is_ascii_hexdigit()) {
                hex.push(h);
                i += 1;
            }
            let blob = hex_bytes(&hex).ok_or_else(|| CqlError::syntax(format!("invalid blob literal 0x{hex}")))?;
            out.push(Token::Blob(blob));
        } else if ch.is_ascii_digit() || (ch == '-' && at(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let mut s = String::from(ch);
            i += 1;
            let digits = |s: &mut String, i: &mut usize| {
                while let Some(d) = at(*i).filter(char::is_ascii_digit) {
                    s.push(d);
                    *i += 1;
                }
            };
            digits(&mut s, &mut i);
            if at(i) == Some('.') && at(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                s.push('.');
                i += 1;
                digits(&mut s, &mut i);
            }
            if let Some(e) = at(i).filter(|e| *e == 'e' || *e == 'E') {
                let sign = at(i + 1).filter(|x| *x == '+' || *x == '-');
                let first_digit = at(i + 1 + usize::from(sign.is_some()));
                if first_digit.is_some_and(|d| d.is_ascii_digit()) {
                    s.push(e);
                    s.extend(sign);
                    i += 1 + usize::from(sign.is_some());
                    digits(&mut s, &mut i);
                }
            }
            if at(i).is_some_and(|x| x.is_alphabetic() || x == '_') {
                return Err(CqlError::syntax(format!("invalid number {s}{}", at(i).unwrap_or_default())));
            }
            out.push(Token::Number(s));
        } else if ch.is_alphabetic() || ch == '_' {
            let mut s = String::new();
            while let Some(x) = at(i).filter(|x| x.is_alphanumeric() || *x == '_') {
                s.extend(x.to_lowercase());
                i += 1;
            }
            out.push(Token::Word(s));
        } else if "(),;.*=?{}:<>[]+-".contains(ch) {
            out.push(Token::Sym(ch));
            i += 1;
        } else {
            return Err(CqlError::syntax(format!("line 1:{i} unexpected character '{ch}'")));
        }
    }
    Ok(out)
}

/// A constant written in the statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Null,
    Str(String),
    Number(String),
    Bool(bool),
    Uuid([u8; 16]),
    Blob(Vec<u8>),
    List(Vec<Literal>),
    Set(Vec<Literal>),
    /// Also `{}`, which may be an empty set.
    Map(Vec<(Literal, Literal)>),
}

impl Literal {
    /// How Cassandra names the kind of constant in its errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Literal::Null => "NULL",
            Literal::Str(_) => "STRING",
            Literal::Number(n) if n.contains(['.', 'e', 'E']) => "FLOAT",
            Literal::Number(_) => "INTEGER",
            Literal::Bool(_) => "BOOLEAN",
            Literal::Uuid(_) => "UUID",
            Literal::Blob(_) => "HEX",
            Literal::List(_) => "LIST",
            Literal::Set(_) => "SET",
            Literal::Map(_) => "MAP",
        }
    }
}

/// A value in a statement: a constant, or a bind marker (`?`, numbered from 0 in order).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Term {
    Literal(Literal),
    Bind(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Relation {
    Eq(Term),
    /// `IN (a, b, ...)`
    In(Vec<Term>),
    /// `IN ?`: one bound list.
    InBind(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Condition {
    pub column: String,
    pub relation: Relation,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Selection {
    All,
    Columns(Vec<String>),
    /// `count(*)` or `count(1)`.
    Count,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Insert {
    pub keyspace: Option<String>,
    pub table: String,
    pub columns: Vec<String>,
    pub values: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Select {
    pub keyspace: Option<String>,
    pub table: String,
    pub selection: Selection,
    pub conditions: Vec<Condition>,
    pub limit: Option<Term>,
    pub allow_filtering: bool,
}

/// A column definition: name, type, and the type as CQL text (`frozen<map<text, text>>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnDef {
    pub name: String,
    pub ty: ColumnType,
    pub cql: String,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Statement {
    CreateKeyspace {
        name: String,
        if_not_exists: bool,
        /// As written; the class is expanded to its full name when stored.
        replication: Vec<(String, String)>,
        durable_writes: bool,
    },
    CreateTable {
        keyspace: Option<String>,
        name: String,
        if_not_exists: bool,
        columns: Vec<ColumnDef>,
        key: String,
    },
    DropKeyspace {
        name: String,
        if_exists: bool,
    },
    DropTable {
        keyspace: Option<String>,
        name: String,
        if_exists: bool,
    },
    Use(String),
    Insert(Insert),
    Select(Select),
    /// `BEGIN [UNLOGGED] BATCH ... APPLY BATCH`: INSERTs only.
    Batch(Vec<Insert>),
}

/// A parsed statement and how many bind markers it has.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Parsed {
    pub statement: Statement,
    pub markers: usize,
}

/// Parses one statement (a trailing `;` is allowed).
pub(crate) fn parse(cql: &str) -> Result<Parsed, CqlError> {
    let mut p = Parser { tokens: tokenize(cql)?, pos: 0, markers: 0, depth: 0 };
    let statement = p.statement()?;
    while p.eat_sym(';') {}
    if let Some(t) = p.peek() {
        return Err(CqlError::syntax(format!("line 1: extraneous input {} at the end of the statement", show(t))));
    }
    Ok(Parsed { statement, markers: p.markers })
}

fn show(t: &Token) -> String {
    match t {
        Token::Word(w) => format!("'{w}'"),
        Token::Quoted(q) => format!("'\"{q}\"'"),
        Token::Str(s) => format!("''{s}''"),
        Token::Number(n) => format!("'{n}'"),
        Token::Uuid(_) => "a uuid".into(),
        Token::Blob(_) => "a blob".into(),
        Token::Sym(c) => format!("'{c}'"),
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    markers: usize,
    /// Nesting of collection literals and types, bounded so that deep input cannot
    /// overflow the stack.
    depth: usize,
}

/// Deepest nesting of collection literals and collection types accepted.
const MAX_DEPTH: usize = 16;

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Token> {
        self.tokens.get(self.pos + ahead)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn unexpected(&self, wanted: &str) -> CqlError {
        match self.peek() {
            Some(t) => CqlError::syntax(format!("line 1: mismatched input {} expecting {wanted}", show(t))),
            None => CqlError::syntax(format!("line 1: the statement ends where {wanted} was expected")),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), CqlError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.unexpected(&kw.to_uppercase()))
        }
    }

    fn eat_sym(&mut self, c: char) -> bool {
        let yes = self.peek() == Some(&Token::Sym(c));
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_sym(&mut self, c: char) -> Result<(), CqlError> {
        if self.eat_sym(c) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("'{c}'")))
        }
    }

    fn ident(&mut self) -> Result<String, CqlError> {
        match self.peek() {
            Some(Token::Word(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            Some(Token::Quoted(q)) => {
                let q = q.clone();
                self.pos += 1;
                Ok(q)
            }
            _ => Err(self.unexpected("an identifier")),
        }
    }

    /// `[keyspace.]name`
    fn qualified(&mut self) -> Result<(Option<String>, String), CqlError> {
        let first = self.ident()?;
        if self.eat_sym('.') {
            Ok((Some(first), self.ident()?))
        } else {
            Ok((None, first))
        }
    }

    fn if_not_exists(&mut self) -> Result<bool, CqlError> {
        if self.eat_kw("if") {
            self.expect_kw("not")?;
            self.expect_kw("exists")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn if_exists(&mut self) -> Result<bool, CqlError> {
        if self.eat_kw("if") {
            self.expect_kw("exists")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn statement(&mut self) -> Result<Statement, CqlError> {
        let Some(Token::Word(first)) = self.peek().cloned() else {
            return Err(self.unexpected("a statement"));
        };
        self.pos += 1;
        match first.as_str() {
            "select" => Ok(Statement::Select(self.select()?)),
            "insert" => Ok(Statement::Insert(self.insert()?)),
            "use" => Ok(Statement::Use(self.ident()?)),
            "create" => self.create(),
            "drop" => self.drop(),
            "begin" => self.batch(),
            "update" | "delete" | "truncate" | "alter" | "grant" | "revoke" | "list" | "describe" | "desc" => {
                Err(CqlError::unsupported(&format!("{} statements", first.to_uppercase())))
            }
            _ => Err(CqlError::syntax(format!("line 1:0 no viable alternative at input '{first}'"))),
        }
    }

    fn create(&mut self) -> Result<Statement, CqlError> {
        if self.eat_kw("keyspace") || self.eat_kw("schema") {
            let if_not_exists = self.if_not_exists()?;
            let name = self.ident()?;
            let mut replication = Vec::new();
            let mut durable_writes = true;
            if self.eat_kw("with") {
                loop {
                    let option = self.ident()?;
                    self.expect_sym('=')?;
                    let value = self.literal()?;
                    match (option.as_str(), value) {
                        ("replication", Literal::Map(entries)) => {
                            for (k, v) in entries {
                                replication.push((literal_text(&k)?, literal_text(&v)?));
                            }
                        }
                        ("durable_writes", Literal::Bool(b)) => durable_writes = b,
                        ("durable_writes", Literal::Str(s)) => durable_writes = !s.eq_ignore_ascii_case("false"),
                        (other, _) => {
                            return Err(CqlError::syntax(format!("unknown or malformed keyspace option {other}")))
                        }
                    }
                    if !self.eat_kw("and") {
                        break;
                    }
                }
            }
            return Ok(Statement::CreateKeyspace { name, if_not_exists, replication, durable_writes });
        }
        if self.eat_kw("table") || self.eat_kw("columnfamily") {
            let if_not_exists = self.if_not_exists()?;
            let (keyspace, name) = self.qualified()?;
            self.expect_sym('(')?;
            let mut columns = Vec::new();
            let mut key: Option<String> = None;
            loop {
                if self.is_kw("primary") && matches!(self.peek_at(1), Some(Token::Word(w)) if w == "key") {
                    self.pos += 2;
                    self.expect_sym('(')?;
                    let mut parts = Vec::new();
                    let mut depth = 1;
                    while depth > 0 {
                        match self.next() {
                            Some(Token::Sym('(')) => depth += 1,
                            Some(Token::Sym(')')) => depth -= 1,
                            Some(Token::Sym(',')) => parts.push(None),
                            Some(Token::Word(w) | Token::Quoted(w)) => parts.push(Some(w)),
                            Some(_) => return Err(self.unexpected("a primary key column")),
                            None => return Err(self.unexpected("')'")),
                        }
                    }
                    let names: Vec<String> = parts.into_iter().flatten().collect();
                    match names.as_slice() {
                        [one] => set_key(&mut key, one.clone())?,
                        _ => return Err(CqlError::unsupported("primary keys of more than one column")),
                    }
                } else {
                    let column = self.ident()?;
                    let (ty, cql) = self.cql_type()?;
                    if self.eat_kw("static") {
                        return Err(CqlError::unsupported("static columns"));
                    }
                    if self.eat_kw("primary") {
                        self.expect_kw("key")?;
                        set_key(&mut key, column.clone())?;
                    }
                    if columns.iter().any(|c: &ColumnDef| c.name == column) {
                        return Err(CqlError::invalid(format!("Duplicate column {column} declaration for table")));
                    }
                    columns.push(ColumnDef { name: column, ty, cql });
                }
                if !self.eat_sym(',') {
                    break;
                }
            }
            self.expect_sym(')')?;
            // Table options (WITH compaction = {...} AND ...) are accepted and ignored.
            if self.eat_kw("with") {
                while self.peek().is_some_and(|t| *t != Token::Sym(';')) {
                    self.pos += 1;
                }
            }
            let key =
                key.ok_or_else(|| CqlError::invalid("No PRIMARY KEY specified for table (exactly one required)"))?;
            if !columns.iter().any(|c| c.name == key) {
                return Err(CqlError::invalid(format!("Unknown definition {key} referenced in PRIMARY KEY")));
            }
            return Ok(Statement::CreateTable { keyspace, name, if_not_exists, columns, key });
        }
        match self.peek() {
            Some(Token::Word(w)) => Err(CqlError::unsupported(&format!("CREATE {}", w.to_uppercase()))),
            _ => Err(self.unexpected("KEYSPACE or TABLE")),
        }
    }

    fn drop(&mut self) -> Result<Statement, CqlError> {
        if self.eat_kw("keyspace") || self.eat_kw("schema") {
            let if_exists = self.if_exists()?;
            return Ok(Statement::DropKeyspace { if_exists, name: self.ident()? });
        }
        if self.eat_kw("table") || self.eat_kw("columnfamily") {
            let if_exists = self.if_exists()?;
            let (keyspace, name) = self.qualified()?;
            return Ok(Statement::DropTable { keyspace, name, if_exists });
        }
        match self.peek() {
            Some(Token::Word(w)) => Err(CqlError::unsupported(&format!("DROP {}", w.to_uppercase()))),
            _ => Err(self.unexpected("KEYSPACE or TABLE")),
        }
    }

    fn batch(&mut self) -> Result<Statement, CqlError> {
        if !self.eat_kw("unlogged") {
            self.eat_kw("logged");
        }
        if self.is_kw("counter") {
            return Err(CqlError::unsupported("counter batches"));
        }
        self.expect_kw("batch")?;
        if self.is_kw("using") {
            return Err(CqlError::unsupported("USING in batches"));
        }
        let mut inserts = Vec::new();
        loop {
            while self.eat_sym(';') {}
            if self.eat_kw("apply") {
                self.expect_kw("batch")?;
                return Ok(Statement::Batch(inserts));
            }
            match self.next() {
                Some(Token::Word(w)) if w == "insert" => inserts.push(self.insert()?),
                Some(Token::Word(w)) if w == "update" || w == "delete" => {
                    return Err(CqlError::unsupported(&format!("{} statements", w.to_uppercase())))
                }
                _ => {
                    self.pos = self.pos.saturating_sub(1);
                    return Err(self.unexpected("INSERT or APPLY BATCH"));
                }
            }
        }
    }

    fn insert(&mut self) -> Result<Insert, CqlError> {
        self.expect_kw("into")?;
        let (keyspace, table) = self.qualified()?;
        if self.is_kw("json") {
            return Err(CqlError::unsupported("INSERT JSON"));
        }
        self.expect_sym('(')?;
        let mut columns = vec![self.ident()?];
        while self.eat_sym(',') {
            columns.push(self.ident()?);
        }
        self.expect_sym(')')?;
        self.expect_kw("values")?;
        self.expect_sym('(')?;
        let mut values = vec![self.term()?];
        while self.eat_sym(',') {
            values.push(self.term()?);
        }
        self.expect_sym(')')?;
        if self.is_kw("if") {
            return Err(CqlError::unsupported("lightweight transactions (IF NOT EXISTS)"));
        }
        if self.is_kw("using") {
            return Err(CqlError::unsupported("USING TTL or TIMESTAMP"));
        }
        if columns.len() != values.len() {
            return Err(CqlError::invalid("Unmatched column names/values"));
        }
        Ok(Insert { keyspace, table, columns, values })
    }

    fn select(&mut self) -> Result<Select, CqlError> {
        if self.is_kw("json") || self.is_kw("distinct") {
            return Err(CqlError::unsupported("SELECT JSON or DISTINCT"));
        }
        let selection = if self.eat_sym('*') {
            Selection::All
        } else if self.is_kw("count") && self.peek_at(1) == Some(&Token::Sym('(')) {
            self.pos += 2;
            if !(self.eat_sym('*') || matches!(self.next(), Some(Token::Number(n)) if n == "1")) {
                return Err(self.unexpected("'*'"));
            }
            self.expect_sym(')')?;
            Selection::Count
        } else {
            let mut columns = vec![self.ident()?];
            while self.eat_sym(',') {
                columns.push(self.ident()?);
            }
            if self.peek() == Some(&Token::Sym('(')) || self.is_kw("as") {
                return Err(CqlError::unsupported("functions and aliases in selections"));
            }
            Selection::Columns(columns)
        };
        self.expect_kw("from")?;
        let (keyspace, table) = self.qualified()?;
        let mut conditions = Vec::new();
        if self.eat_kw("where") {
            loop {
                let column = self.ident()?;
                let relation = if self.eat_sym('=') {
                    Relation::Eq(self.term()?)
                } else if self.eat_kw("in") {
                    if self.eat_sym('?') {
                        self.markers += 1;
                        Relation::InBind(self.markers - 1)
                    } else {
                        self.expect_sym('(')?;
                        let mut terms = Vec::new();
                        if !self.eat_sym(')') {
                            terms.push(self.term()?);
                            while self.eat_sym(',') {
                                terms.push(self.term()?);
                            }
                            self.expect_sym(')')?;
                        }
                        Relation::In(terms)
                    }
                } else {
                    return Err(match self.peek() {
                        Some(Token::Sym('<' | '>')) => CqlError::unsupported("range conditions"),
                        _ => self.unexpected("'=' or IN"),
                    });
                };
                conditions.push(Condition { column, relation });
                if !self.eat_kw("and") {
                    break;
                }
            }
        }
        if self.is_kw("order") || self.is_kw("group") || self.is_kw("per") {
            return Err(CqlError::unsupported("ORDER BY, GROUP BY and PER PARTITION LIMIT"));
        }
        let limit = if self.eat_kw("limit") { Some(self.term()?) } else { None };
        let mut allow_filtering = false;
        if self.eat_kw("allow") {
            self.expect_kw("filtering")?;
            allow_filtering = true;
        }
        Ok(Select { keyspace, table, selection, conditions, limit, allow_filtering })
    }

    fn term(&mut self) -> Result<Term, CqlError> {
        if self.eat_sym('?') {
            self.markers += 1;
            return Ok(Term::Bind(self.markers - 1));
        }
        if self.peek() == Some(&Token::Sym(':')) {
            return Err(CqlError::unsupported("named bind markers"));
        }
        Ok(Term::Literal(self.literal()?))
    }

    fn literal(&mut self) -> Result<Literal, CqlError> {
        self.nested(Parser::literal_inner)
    }

    /// Runs `f` one nesting level deeper.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Parser) -> Result<T, CqlError>) -> Result<T, CqlError> {
        if self.depth >= MAX_DEPTH {
            return Err(CqlError::syntax(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn literal_inner(&mut self) -> Result<Literal, CqlError> {
        let Some(token) = self.next() else {
            return Err(self.unexpected("a value"));
        };
        Ok(match token {
            Token::Str(s) => Literal::Str(s),
            Token::Number(n) => Literal::Number(n),
            Token::Uuid(u) => Literal::Uuid(u),
            Token::Blob(b) => Literal::Blob(b),
            Token::Word(w) if w == "true" || w == "false" => Literal::Bool(w == "true"),
            Token::Word(w) if w == "null" => Literal::Null,
            Token::Word(w) if w == "nan" => Literal::Number("NaN".into()),
            Token::Word(w) if w == "infinity" => Literal::Number("Infinity".into()),
            Token::Sym('-') if self.eat_kw("infinity") => Literal::Number("-Infinity".into()),
            Token::Sym('[') => {
                let mut items = Vec::new();
                if !self.eat_sym(']') {
                    items.push(self.literal()?);
                    while self.eat_sym(',') {
                        items.push(self.literal()?);
                    }
                    self.expect_sym(']')?;
                }
                Literal::List(items)
            }
            Token::Sym('{') => {
                if self.eat_sym('}') {
                    return Ok(Literal::Map(Vec::new()));
                }
                let first = self.literal()?;
                if self.eat_sym(':') {
                    let mut entries = vec![(first, self.literal()?)];
                    while self.eat_sym(',') {
                        let k = self.literal()?;
                        self.expect_sym(':')?;
                        entries.push((k, self.literal()?));
                    }
                    self.expect_sym('}')?;
                    Literal::Map(entries)
                } else {
                    let mut items = vec![first];
                    while self.eat_sym(',') {
                        items.push(self.literal()?);
                    }
                    self.expect_sym('}')?;
                    Literal::Set(items)
                }
            }
            _ => {
                self.pos -= 1;
                return Err(self.unexpected("a value"));
            }
        })
    }

    /// A CQL type, and its canonical text.
    fn cql_type(&mut self) -> Result<(ColumnType, String), CqlError> {
        self.nested(Parser::cql_type_inner)
    }

    fn cql_type_inner(&mut self) -> Result<(ColumnType, String), CqlError> {
        let name = match self.next() {
            Some(Token::Word(w)) => w,
            _ => {
                self.pos = self.pos.saturating_sub(1);
                return Err(self.unexpected("a type"));
            }
        };
        let native = match name.as_str() {
            "ascii" => Some(ColumnType::Ascii),
            "bigint" => Some(ColumnType::Bigint),
            "blob" => Some(ColumnType::Blob),
            "boolean" => Some(ColumnType::Boolean),
            "date" => Some(ColumnType::Date),
            "decimal" => Some(ColumnType::Decimal),
            "double" => Some(ColumnType::Double),
            "duration" => Some(ColumnType::Duration),
            "float" => Some(ColumnType::Float),
            "inet" => Some(ColumnType::Inet),
            "int" => Some(ColumnType::Int),
            "smallint" => Some(ColumnType::Smallint),
            "text" | "varchar" => Some(ColumnType::Varchar),
            "time" => Some(ColumnType::Time),
            "timestamp" => Some(ColumnType::Timestamp),
            "timeuuid" => Some(ColumnType::Timeuuid),
            "tinyint" => Some(ColumnType::Tinyint),
            "uuid" => Some(ColumnType::Uuid),
            "varint" => Some(ColumnType::Varint),
            _ => None,
        };
        if let Some(ty) = native {
            let cql = if name == "varchar" { "text".to_string() } else { name };
            return Ok((ty, cql));
        }
        match name.as_str() {
            "list" | "set" | "frozen" => {
                self.expect_sym('<')?;
                let (inner, inner_cql) = self.cql_type()?;
                self.expect_sym('>')?;
                let ty = match name.as_str() {
                    "list" => ColumnType::List(Box::new(inner)),
                    "set" => ColumnType::Set(Box::new(inner)),
                    _ => inner,
                };
                Ok((ty, format!("{name}<{inner_cql}>")))
            }
            "map" => {
                self.expect_sym('<')?;
                let (k, k_cql) = self.cql_type()?;
                self.expect_sym(',')?;
                let (v, v_cql) = self.cql_type()?;
                self.expect_sym('>')?;
                Ok((ColumnType::Map(Box::new(k), Box::new(v)), format!("map<{k_cql}, {v_cql}>")))
            }
            "counter" => Err(CqlError::unsupported("counter columns")),
            "tuple" => Err(CqlError::unsupported("tuples")),
            other => Err(CqlError::unsupported(&format!("the type {other} (user-defined types included)"))),
        }
    }
}

fn set_key(key: &mut Option<String>, column: String) -> Result<(), CqlError> {
    if key.is_some() {
        return Err(CqlError::invalid("Multiple PRIMARY KEYs specified (exactly one required)"));
    }
    *key = Some(column);
    Ok(())
}

/// A keyspace option's value as text (replication factors are written as numbers or strings).
fn literal_text(l: &Literal) -> Result<String, CqlError> {
    match l {
        Literal::Str(s) | Literal::Number(s) => Ok(s.clone()),
        Literal::Bool(b) => Ok(b.to_string()),
        other => Err(CqlError::syntax(format!("invalid {} in replication options", other.kind()))),
    }
}

/// Parses a CQL type written as text (the system tables are declared this way).
pub(crate) fn parse_type(cql: &str) -> Result<(ColumnType, String), CqlError> {
    let mut p = Parser { tokens: tokenize(cql)?, pos: 0, markers: 0, depth: 0 };
    let t = p.cql_type()?;
    if p.peek().is_some() {
        return Err(p.unexpected("the end of the type"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = tokenize("SELECT \"Mixed\", x FROM ks.t WHERE k = 'it''s' -- c\n AND u = 123e4567-e89b-12d3-a456-426614174000 AND b = 0xCAFE AND n = -1.5e3 /* x */;").unwrap();
        assert_eq!(t[0], Token::Word("select".into()));
        assert_eq!(t[1], Token::Quoted("Mixed".into()));
        assert!(t.contains(&Token::Str("it's".into())));
        assert!(t.contains(&Token::Blob(vec![0xca, 0xfe])));
        assert!(t.contains(&Token::Number("-1.5e3".into())));
        assert!(t.iter().any(|x| matches!(x, Token::Uuid(u) if u[0] == 0x12 && u[15] == 0)));
        assert_eq!(t.last(), Some(&Token::Sym(';')));
        for bad in ["'open", "/* open", "\"open", "SELECT # FROM t", "0xABC", "12abc", "$$ open"] {
            assert_eq!(tokenize(bad).map_err(|e| e.code), Err(ErrorCode::SYNTAX_ERROR), "{bad}");
        }
    }

    #[test]
    fn statements() {
        let p = parse("CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1} AND durable_writes = false").unwrap();
        assert_eq!(
            p.statement,
            Statement::CreateKeyspace {
                name: "ks".into(),
                if_not_exists: true,
                replication: vec![("class".into(), "SimpleStrategy".into()), ("replication_factor".into(), "1".into())],
                durable_writes: false,
            }
        );
        let p = parse(
            "create table ks.t (k text, v int, m frozen<map<text, list<int>>>, PRIMARY KEY ((k))) WITH comment = 'x'",
        )
        .unwrap();
        let Statement::CreateTable { columns, key, .. } = p.statement else { panic!() };
        assert_eq!(key, "k");
        assert_eq!(columns[2].cql, "frozen<map<text, list<int>>>");
        let p = parse("INSERT INTO t (k, v, s) VALUES (?, 5, {'a', 'b'});").unwrap();
        assert_eq!(p.markers, 1);
        let p =
            parse("SELECT a, \"B\" FROM ks.t WHERE k = ? AND x IN (1, ?) AND y IN ? LIMIT ? ALLOW FILTERING").unwrap();
        assert_eq!(p.markers, 4);
        let Statement::Select(s) = p.statement else { panic!() };
        assert_eq!(s.selection, Selection::Columns(vec!["a".into(), "B".into()]));
        assert_eq!(s.conditions[2].relation, Relation::InBind(2));
        assert_eq!(s.limit, Some(Term::Bind(3)));
        assert!(s.allow_filtering);
        let p = parse("BEGIN UNLOGGED BATCH INSERT INTO t (k) VALUES (?); INSERT INTO t (k) VALUES (?) APPLY BATCH")
            .unwrap();
        assert!(matches!(p.statement, Statement::Batch(ref b) if b.len() == 2));
        assert_eq!(p.markers, 2);
        assert_eq!(parse("SELECT count(*) FROM t").unwrap().statement, {
            Statement::Select(Select {
                keyspace: None,
                table: "t".into(),
                selection: Selection::Count,
                conditions: vec![],
                limit: None,
                allow_filtering: false,
            })
        });
    }

    #[test]
    fn rejections() {
        let code = |cql: &str| parse(cql).map(|_| ()).map_err(|e| e.code);
        assert_eq!(code("UPDATE t SET v = 1 WHERE k = 1"), Err(ErrorCode::INVALID));
        assert_eq!(code("CREATE TABLE t (a int, b int, PRIMARY KEY (a, b))"), Err(ErrorCode::INVALID));
        assert_eq!(code("CREATE TABLE t (a int PRIMARY KEY, b int PRIMARY KEY)"), Err(ErrorCode::INVALID));
        assert_eq!(code("CREATE TABLE t (a int)"), Err(ErrorCode::INVALID));
        assert_eq!(code("INSERT INTO t (k) VALUES (1) IF NOT EXISTS"), Err(ErrorCode::INVALID));
        assert_eq!(code("INSERT INTO t (k, v) VALUES (1)"), Err(ErrorCode::INVALID));
        assert_eq!(code("FROBNICATE"), Err(ErrorCode::SYNTAX_ERROR));
        assert_eq!(code("SELECT * FROM"), Err(ErrorCode::SYNTAX_ERROR));
        assert_eq!(code("SELECT * FROM t extra"), Err(ErrorCode::SYNTAX_ERROR));
        assert_eq!(code("SELECT * FROM t WHERE k > 1"), Err(ErrorCode::INVALID));
        assert_eq!(code(""), Err(ErrorCode::SYNTAX_ERROR));
        assert_eq!(code("INSERT INTO t (k) VALUES ({1: })"), Err(ErrorCode::SYNTAX_ERROR));
        assert_eq!(code("CREATE TABLE t (k map<int>, PRIMARY KEY (k))"), Err(ErrorCode::SYNTAX_ERROR));
        assert_eq!(code("BEGIN BATCH SELECT * FROM t APPLY BATCH"), Err(ErrorCode::SYNTAX_ERROR));
        // Deep nesting is refused, not recursed into.
        let deep = format!("INSERT INTO t (k) VALUES ({}1{})", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(&deep), Err(ErrorCode::SYNTAX_ERROR));
        let deep = format!("CREATE TABLE t (k {}int{} PRIMARY KEY)", "list<".repeat(100_000), ">".repeat(100_000));
        assert_eq!(code(&deep), Err(ErrorCode::SYNTAX_ERROR));
        assert!(parse("INSERT INTO t (k) VALUES ([[[1]]])").is_ok());
        // Every prefix of a valid statement is an error, never a panic.
        let full = "BEGIN BATCH INSERT INTO ks.t (k, v) VALUES ('a', [1, {2: 3}]) APPLY BATCH";
        for end in 0..full.len() {
            let _ = parse(&full[..end]);
        }
    }

    #[test]
    fn types() {
        assert_eq!(parse_type("varchar").unwrap(), (ColumnType::Varchar, "text".into()));
        assert_eq!(
            parse_type("frozen<set<text>>").unwrap(),
            (ColumnType::Set(Box::new(ColumnType::Varchar)), "frozen<set<text>>".into())
        );
        assert!(parse_type("map<text>").is_err());
        assert!(parse_type("int int").is_err());
    }
}
