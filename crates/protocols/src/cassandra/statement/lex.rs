//! CQL's tokens: identifiers (unquoted ones lowercased), quoted identifiers, literals,
//! bind markers (numbered in the order they appear, as a prepared statement's variables
//! are) and punctuation. Whitespace and `--`, `//` and `/* */` comments are skipped.
//! Every token keeps its byte range in the statement, so that a literal can be replaced.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    /// An unquoted identifier or keyword, lowercased.
    Word(String),
    /// A `"quoted"` identifier, as written (case kept, `""` unescaped).
    Quoted(String),
    /// A literal: `'string'` or `$$string$$`, a number, `0x…`, a UUID, a duration.
    Literal(LiteralKind),
    /// `?`, or `:name`: the `index`th bind marker of the statement.
    Marker { index: usize, name: Option<String> },
    /// One punctuation character (`<=`, `>=` and `!=` are one token each).
    Punct(&'static str),
}

/// What kind of literal a term is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralKind {
    String,
    Number,
    Blob,
    Uuid,
    /// A duration such as `1h30m`, or a number followed by letters.
    Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub(super) kind: Kind,
    pub(super) span: Range<usize>,
}

impl Token {
    pub(super) fn is_word(&self, word: &str) -> bool {
        matches!(&self.kind, Kind::Word(w) if w == word)
    }

    pub(super) fn is_punct(&self, punct: &str) -> bool {
        matches!(self.kind, Kind::Punct(p) if p == punct)
    }

    /// Whether it can end a term, after which `-` is subtraction and `:` a map's colon.
    fn ends_term(&self) -> bool {
        match &self.kind {
            Kind::Literal(_) | Kind::Quoted(_) | Kind::Marker { .. } => true,
            // Not `)`: `(blob) :name` is a cast of a named marker.
            Kind::Punct(p) => matches!(*p, "]" | "}"),
            // Keywords after which a named marker may come.
            Kind::Word(w) => !matches!(
                w.as_str(),
                "in" | "limit" | "ttl" | "timestamp" | "key" | "contains" | "and" | "where" | "set" | "values" | "like"
            ),
        }
    }
}

const PUNCT: [&str; 17] = ["(", ")", ",", ";", ".", "=", "<", ">", "[", "]", "{", "}", ":", "+", "-", "*", "/"];

/// The tokens of `cql`, or `None` when it holds something CQL cannot (an unclosed string or
/// comment, a character outside the language).
pub(super) fn tokens(cql: &str) -> Option<Vec<Token>> {
    let s = cql.as_bytes();
    let mut out: Vec<Token> = Vec::new();
    let mut pos = 0;
    let mut markers = 0;
    while let Some(&c) = s.get(pos) {
        let start = pos;
        let rest = s.get(pos..).unwrap_or_default();
        let after_term = out.last().is_some_and(Token::ends_term);
        let kind = if c.is_ascii_whitespace() {
            pos += 1;
            continue;
        } else if rest.starts_with(b"--") || rest.starts_with(b"//") {
            pos += rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            continue;
        } else if rest.starts_with(b"/*") {
            pos += 2 + find(rest.get(2..)?, b"*/")? + 2;
            continue;
        } else if c == b'\'' {
            pos = quoted_end(s, pos, b'\'')?;
            Kind::Literal(LiteralKind::String)
        } else if rest.starts_with(b"$$") {
            pos += 2 + find(rest.get(2..)?, b"$$")? + 2;
            Kind::Literal(LiteralKind::String)
        } else if c == b'"' {
            pos = quoted_end(s, pos, b'"')?;
            let inner = cql.get(start + 1..pos - 1)?;
            Kind::Quoted(inner.replace("\"\"", "\""))
        } else if let Some(len) = uuid_len(rest) {
            pos += len;
            Kind::Literal(LiteralKind::Uuid)
        } else if rest.len() > 1 && rest.starts_with(b"0") && matches!(rest.get(1), Some(b'x' | b'X')) {
            pos += 2 + rest.iter().skip(2).take_while(|b| b.is_ascii_hexdigit()).count();
            Kind::Literal(LiteralKind::Blob)
        } else if c.is_ascii_digit() || (c == b'-' && !after_term && rest.get(1).is_some_and(u8::is_ascii_digit)) {
            let (len, kind) = number_len(rest);
            pos += len;
            Kind::Literal(kind)
        } else if c.is_ascii_alphabetic() {
            pos += word_len(rest);
            Kind::Word(cql.get(start..pos)?.to_ascii_lowercase())
        } else if c == b'?' {
            pos += 1;
            markers += 1;
            Kind::Marker { index: markers - 1, name: None }
        } else if c == b':' && !after_term && rest.get(1).is_some_and(|b| b.is_ascii_alphabetic() || *b == b'"') {
            let name = if rest.get(1) == Some(&b'"') {
                pos = quoted_end(s, pos + 1, b'"')?;
                cql.get(start + 2..pos - 1)?.replace("\"\"", "\"")
            } else {
                pos += 1 + word_len(rest.get(1..)?);
                cql.get(start + 1..pos)?.to_ascii_lowercase()
            };
            markers += 1;
            Kind::Marker { index: markers - 1, name: Some(name) }
        } else if let Some(p) = ["<=", ">=", "!="].into_iter().find(|p| rest.starts_with(p.as_bytes())) {
            pos += 2;
            Kind::Punct(p)
        } else {
            let p = PUNCT.into_iter().find(|p| rest.starts_with(p.as_bytes()))?;
            pos += 1;
            Kind::Punct(p)
        };
        out.push(Token { kind, span: start..pos });
    }
    Some(out)
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The end of a string or quoted identifier that starts at `start` with `quote`, where a
/// doubled quote stands for one.
fn quoted_end(s: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut pos = start + 1;
    loop {
        match s.get(pos) {
            Some(&b) if b == quote => {
                if s.get(pos + 1) == Some(&quote) {
                    pos += 2;
                } else {
                    return Some(pos + 1);
                }
            }
            Some(_) => pos += 1,
            None => return None,
        }
    }
}

fn word_len(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count()
}

/// A UUID (8-4-4-4-12 hex digits) at the start of `s`, not followed by a word character.
fn uuid_len(s: &[u8]) -> Option<usize> {
    let candidate = s.get(..36)?;
    let ok = candidate.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    let followed = s.get(36).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
    (ok && !followed).then_some(36)
}

/// A number (`-1`, `1.5`, `2e-3`) at the start of `s`; digits followed by letters make a
/// duration (`1h30m`).
fn number_len(s: &[u8]) -> (usize, LiteralKind) {
    let mut pos = usize::from(s.first() == Some(&b'-'));
    let digits = |s: &[u8], at: usize| s.get(at..).map_or(0, |r| r.iter().take_while(|b| b.is_ascii_digit()).count());
    pos += digits(s, pos);
    if s.get(pos) == Some(&b'.') && s.get(pos + 1).is_some_and(u8::is_ascii_digit) {
        pos += 1 + digits(s, pos + 1);
    }
    if matches!(s.get(pos), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(s.get(pos + 1), Some(b'+' | b'-')));
        let exponent = digits(s, pos + 1 + sign);
        if exponent > 0 {
            pos += 1 + sign + exponent;
        }
    }
    if s.get(pos).is_some_and(|b| b.is_ascii_alphabetic()) {
        pos += s.get(pos..).map_or(0, word_len);
        return (pos, LiteralKind::Duration);
    }
    (pos, LiteralKind::Number)
}
