//! CQL statements as data: which keyspace, table and columns a statement touches, and with
//! which values, for the transforms that act on rows (Protect, ValkeyCache).
//!
//! [`parse`] reads the statements those need, sans I/O:
//! - `USE keyspace`;
//! - `SELECT [JSON] [DISTINCT] * | selectors FROM table [WHERE relations] ...`;
//! - `INSERT INTO table (columns) VALUES (terms) ...` and `INSERT INTO table JSON ...`;
//! - `UPDATE table [USING ...] SET assignments WHERE relations ...`;
//! - `DELETE [columns] FROM table [USING ...] WHERE relations ...`;
//! - `BEGIN [UNLOGGED | COUNTER] BATCH [USING ...] statements APPLY BATCH`.
//!
//! A term is a literal (with its byte range in the statement, so that it can be replaced),
//! a bind marker (numbered in order of appearance, as the prepared statement's variables
//! are), or anything else (a collection, a function call) by its byte range. Unquoted
//! identifiers are lowercased, as Cassandra does; quoted ones keep their case.
//!
//! `parse` returns `None` for any other statement and for text it cannot read: a caller
//! passes such statements on untouched, or refuses them where passing them on is unsafe.
//! No input makes it panic (see the mutation test).

mod lex;

pub use lex::LiteralKind;
use lex::{Kind, Token};
use std::ops::Range;

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Use {
        keyspace: String,
    },
    Select(Select),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    /// The INSERT, UPDATE and DELETE statements of a BATCH, in order.
    Batch(Vec<Statement>),
}

/// `keyspace.table`, or `table` in the connection's keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    pub keyspace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Literal {
        kind: LiteralKind,
        span: Range<usize>,
    },
    /// `true`, `false`, `null`, `NaN`, `Infinity` (lowercased).
    Constant {
        word: String,
        span: Range<usize>,
    },
    /// A bind marker: the `index`th of the statement (`:name` markers have a name).
    Marker {
        index: usize,
        name: Option<String>,
    },
    /// A collection, tuple, function call, cast or arithmetic, by its byte range.
    Other(Range<usize>),
}

/// `column op term`. Relations the proxy does not read (on tokens, tuples, map entries)
/// are counted in [`Where::others`].
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub column: String,
    /// `=`, `<`, `<=`, `>`, `>=`, `!=`, `in`, `contains`, `contains key`, `like`.
    pub operator: String,
    pub value: Term,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Where {
    pub relations: Vec<Relation>,
    pub others: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Selected {
    /// The column, when the selector is one (not a function call or a term).
    pub column: Option<String>,
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub table: Table,
    pub json: bool,
    pub distinct: bool,
    /// `None` for `*`.
    pub selectors: Option<Vec<Selected>>,
    pub r#where: Where,
    /// GROUP BY, ORDER BY, LIMIT, ALLOW FILTERING or anything else after WHERE.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub table: Table,
    /// Empty for `INSERT ... JSON`.
    pub columns: Vec<String>,
    pub values: Vec<Term>,
    pub json: bool,
}

/// `column = term`; `value` is `None` for other assignments (`c = c + t`, `c[k] = t`,
/// `c.field = t`).
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub column: String,
    pub value: Option<Term>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub table: Table,
    pub assignments: Vec<Assignment>,
    pub r#where: Where,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub table: Table,
    /// Columns deleted (empty: the whole row); an element (`c[k]`) counts as its column.
    pub columns: Vec<String>,
    pub r#where: Where,
}

/// The statement `cql` holds, or `None` (see the module doc).
pub fn parse(cql: &str) -> Option<Statement> {
    let tokens = lex::tokens(cql)?;
    let mut p = Parser { t: &tokens, at: 0 };
    let statement = p.statement()?;
    p.eat_punct(";");
    p.done().then_some(statement)
}

/// Words after which a write's WHERE clause is over: its conditions, or (in a BATCH, where
/// `;` between statements is optional) the next statement or the batch's end.
const STATEMENT_ENDS: [&str; 5] = ["if", "apply", "insert", "update", "delete"];

/// The end of a write: `;`, or the next statement or end of a BATCH.
fn statement_end(t: &Token) -> bool {
    t.is_punct(";") || ["apply", "insert", "update", "delete"].iter().any(|w| t.is_word(w))
}

/// How many bind markers `cql` holds, as the parser numbers them (`None` when it cannot be
/// read). A caller can check it against the values bound, or the markers Cassandra reports.
pub fn marker_count(cql: &str) -> Option<usize> {
    Some(lex::tokens(cql)?.iter().filter(|t| matches!(t.kind, Kind::Marker { .. })).count())
}

/// The first word of `cql`, lowercased, after whitespace and comments.
pub fn first_word(cql: &str) -> Option<String> {
    match lex::tokens(cql)?.into_iter().next()?.kind {
        Kind::Word(w) => Some(w),
        _ => None,
    }
}

/// The bytes a string (UTF-8) or blob literal stands for.
pub fn literal_bytes(kind: LiteralKind, text: &str) -> Option<Vec<u8>> {
    match kind {
        LiteralKind::String if text.starts_with("$$") => {
            Some(text.get(2..text.len().checked_sub(2)?)?.as_bytes().to_vec())
        }
        LiteralKind::String => Some(text.get(1..text.len().checked_sub(1)?)?.replace("''", "'").into_bytes()),
        LiteralKind::Blob => {
            let hex = text.get(2..)?.as_bytes();
            if hex.len() % 2 != 0 {
                return None;
            }
            hex.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()).collect()
        }
        _ => None,
    }
}

struct Parser<'a> {
    t: &'a [Token],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.t.get(self.at)
    }

    fn peek_word(&self, word: &str) -> bool {
        self.peek().is_some_and(|t| t.is_word(word))
    }

    fn done(&self) -> bool {
        self.at >= self.t.len()
    }

    fn next(&mut self) -> Option<&Token> {
        let t = self.t.get(self.at)?;
        self.at += 1;
        Some(t)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let yes = self.peek_word(word);
        self.at += usize::from(yes);
        yes
    }

    fn eat_punct(&mut self, punct: &str) -> bool {
        let yes = self.peek().is_some_and(|t| t.is_punct(punct));
        self.at += usize::from(yes);
        yes
    }

    fn expect_word(&mut self, word: &str) -> Option<()> {
        self.eat_word(word).then_some(())
    }

    fn expect_punct(&mut self, punct: &str) -> Option<()> {
        self.eat_punct(punct).then_some(())
    }

    /// An identifier: a word (keywords too: CQL lets many be names) or a quoted one.
    fn ident(&mut self) -> Option<String> {
        match &self.next()?.kind {
            Kind::Word(w) | Kind::Quoted(w) => Some(w.clone()),
            _ => None,
        }
    }

    fn table(&mut self) -> Option<Table> {
        let first = self.ident()?;
        if self.eat_punct(".") {
            return Some(Table { keyspace: Some(first), name: self.ident()? });
        }
        Some(Table { keyspace: None, name: first })
    }

    fn statement(&mut self) -> Option<Statement> {
        let Kind::Word(first) = &self.next()?.kind else { return None };
        match first.as_str() {
            "use" => Some(Statement::Use { keyspace: self.ident()? }),
            "select" => self.select().map(Statement::Select),
            "insert" => self.insert().map(Statement::Insert),
            "update" => self.update().map(Statement::Update),
            "delete" => self.delete().map(Statement::Delete),
            "begin" => self.batch(),
            _ => None,
        }
    }

    /// Skips tokens up to (not including) the first at bracket depth 0 that `stop` accepts,
    /// or to the end; the byte range skipped. `None` on unbalanced brackets.
    fn skip_until(&mut self, stop: impl Fn(&Token) -> bool) -> Option<Range<usize>> {
        let start = self.peek().map(|t| t.span.start);
        let mut end = start;
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            if depth == 0 && stop(t) {
                break;
            }
            match t.kind {
                Kind::Punct("(" | "[" | "{") => depth += 1,
                Kind::Punct(")" | "]" | "}") => depth = depth.checked_sub(1)?,
                _ => {}
            }
            end = Some(t.span.end);
            self.at += 1;
        }
        (depth == 0).then_some(start.unwrap_or(0)..end.unwrap_or(0))
    }

    /// A term, ending at a token `stop` accepts (at depth 0) or at the end.
    fn term(&mut self, stop: impl Fn(&Token) -> bool) -> Option<Term> {
        let first = self.peek()?.clone();
        let single = self.t.get(self.at + 1).is_none_or(&stop);
        if single {
            let term = match first.kind {
                Kind::Literal(kind) => Some(Term::Literal { kind, span: first.span.clone() }),
                Kind::Marker { index, name } => Some(Term::Marker { index, name }),
                Kind::Word(w) if matches!(w.as_str(), "true" | "false" | "null" | "nan" | "infinity") => {
                    Some(Term::Constant { word: w, span: first.span.clone() })
                }
                _ => None,
            };
            if let Some(term) = term {
                self.at += 1;
                return Some(term);
            }
        }
        let span = self.skip_until(stop)?;
        (!span.is_empty()).then_some(Term::Other(span))
    }

    /// `WHERE relation AND relation ...`, up to a keyword that ends it.
    fn r#where(&mut self, ends: &[&str]) -> Option<Where> {
        let mut w = Where::default();
        if !self.eat_word("where") {
            return Some(w);
        }
        let stop = |t: &Token| t.is_word("and") || t.is_punct(";") || ends.iter().any(|e| t.is_word(e));
        loop {
            let start = self.at;
            match self.relation(&stop) {
                Some(r) => w.relations.push(r),
                None => {
                    self.at = start;
                    self.skip_until(stop)?;
                    w.others += 1;
                }
            }
            if !self.eat_word("and") {
                return Some(w);
            }
        }
    }

    fn relation(&mut self, stop: &impl Fn(&Token) -> bool) -> Option<Relation> {
        let column = self.ident()?;
        let operator = match self.next()?.kind.clone() {
            Kind::Punct(p @ ("=" | "<" | ">" | "<=" | ">=" | "!=")) => p.to_owned(),
            Kind::Word(w) if w == "in" || w == "like" => w,
            Kind::Word(w) if w == "contains" => {
                if self.eat_word("key") {
                    "contains key".to_owned()
                } else {
                    w
                }
            }
            _ => return None,
        };
        let value = self.term(stop)?;
        Some(Relation { column, operator, value })
    }

    fn select(&mut self) -> Option<Select> {
        let json = self.eat_word("json");
        let distinct = self.eat_word("distinct");
        let selectors = if self.eat_punct("*") {
            None
        } else {
            let mut list = Vec::new();
            loop {
                list.push(self.selector()?);
                if !self.eat_punct(",") {
                    break;
                }
            }
            Some(list)
        };
        self.expect_word("from")?;
        let table = self.table()?;
        let ends = ["group", "order", "per", "limit", "allow"];
        let r#where = self.r#where(&ends)?;
        let more = !self.done() && !self.peek().is_some_and(|t| t.is_punct(";"));
        if more {
            self.skip_until(|t| t.is_punct(";"))?;
        }
        Some(Select { table, json, distinct, selectors, r#where, more })
    }

    fn selector(&mut self) -> Option<Selected> {
        let is_column = matches!(self.peek()?.kind, Kind::Word(_) | Kind::Quoted(_))
            && self.t.get(self.at + 1).is_none_or(|t| t.is_punct(",") || t.is_word("from") || t.is_word("as"));
        let column = if is_column {
            self.ident()
        } else {
            let span = self.skip_until(|t| t.is_punct(",") || t.is_word("from") || t.is_word("as"))?;
            if span.is_empty() {
                return None;
            }
            None
        };
        let alias = if self.eat_word("as") { Some(self.ident()?) } else { None };
        Some(Selected { column, alias })
    }

    fn insert(&mut self) -> Option<Insert> {
        self.expect_word("into")?;
        let table = self.table()?;
        if self.eat_word("json") {
            self.skip_until(statement_end)?;
            return Some(Insert { table, columns: Vec::new(), values: Vec::new(), json: true });
        }
        self.expect_punct("(")?;
        let mut columns = Vec::new();
        loop {
            columns.push(self.ident()?);
            if !self.eat_punct(",") {
                break;
            }
        }
        self.expect_punct(")")?;
        self.expect_word("values")?;
        self.expect_punct("(")?;
        let mut values = Vec::new();
        loop {
            values.push(self.term(|t| t.is_punct(",") || t.is_punct(")"))?);
            if !self.eat_punct(",") {
                break;
            }
        }
        self.expect_punct(")")?;
        if columns.len() != values.len() {
            return None;
        }
        // IF NOT EXISTS, USING TTL / TIMESTAMP.
        self.skip_until(statement_end)?;
        Some(Insert { table, columns, values, json: false })
    }

    /// `USING TTL t AND TIMESTAMP t`, skipped (its markers are numbered all the same).
    fn using(&mut self, ends: &[&str]) -> Option<()> {
        if self.eat_word("using") {
            self.skip_until(|t| ends.iter().any(|e| t.is_word(e)))?;
        }
        Some(())
    }

    fn update(&mut self) -> Option<Update> {
        let table = self.table()?;
        self.using(&["set"])?;
        self.expect_word("set")?;
        let mut assignments = Vec::new();
        let stop = |t: &Token| t.is_punct(",") || t.is_word("where");
        loop {
            let column = self.ident()?;
            let value = if self.eat_punct("=") {
                let start = self.at;
                let value = self.term(stop)?;
                // `c = c + t` and `c = t - c` are not values of their own.
                (!self.arithmetic(start..self.at)).then_some(value)
            } else {
                // `c[k] = t`, `c.field = t`.
                self.skip_until(stop)?;
                None
            };
            assignments.push(Assignment { column, value });
            if !self.eat_punct(",") {
                break;
            }
        }
        let r#where = self.r#where(&STATEMENT_ENDS)?;
        self.skip_until(statement_end)?;
        Some(Update { table, assignments, r#where })
    }

    /// Whether the tokens `range` hold `+` or `-` outside brackets.
    fn arithmetic(&self, range: Range<usize>) -> bool {
        let mut depth = 0i32;
        self.t.get(range).unwrap_or_default().iter().any(|t| {
            match t.kind {
                Kind::Punct("(" | "[" | "{") => depth += 1,
                Kind::Punct(")" | "]" | "}") => depth -= 1,
                _ => {}
            }
            depth == 0 && (t.is_punct("+") || t.is_punct("-"))
        })
    }

    fn delete(&mut self) -> Option<Delete> {
        let mut columns = Vec::new();
        if !self.peek_word("from") {
            loop {
                columns.push(self.ident()?);
                // An element or field (`c[k]`, `c.f`) deletes part of its column.
                self.skip_until(|t| t.is_punct(",") || t.is_word("from"))?;
                if !self.eat_punct(",") {
                    break;
                }
            }
        }
        self.expect_word("from")?;
        let table = self.table()?;
        self.using(&["where"])?;
        let r#where = self.r#where(&STATEMENT_ENDS)?;
        self.skip_until(statement_end)?;
        Some(Delete { table, columns, r#where })
    }

    fn batch(&mut self) -> Option<Statement> {
        if !self.eat_word("unlogged") {
            self.eat_word("counter");
        }
        self.expect_word("batch")?;
        self.using(&["insert", "update", "delete"])?;
        let mut statements = Vec::new();
        while !self.eat_word("apply") {
            // Only writes: no nesting, so no input can recurse deeply.
            let s = match &self.next()?.kind {
                Kind::Word(w) if w == "insert" => Statement::Insert(self.insert()?),
                Kind::Word(w) if w == "update" => Statement::Update(self.update()?),
                Kind::Word(w) if w == "delete" => Statement::Delete(self.delete()?),
                _ => return None,
            };
            statements.push(s);
            self.eat_punct(";");
        }
        self.expect_word("batch")?;
        Some(Statement::Batch(statements))
    }
}

#[cfg(test)]
mod tests;
