//! Inline requests (`SET k "a b"\r\n`), split into arguments exactly as Valkey's
//! `sdssplitargs` splits them:
//!
//! - blanks (C `isspace`: space, `\t`, `\n`, `\v`, `\f`, `\r`) separate arguments, but only
//!   space, `\t`, `\n` and `\r` end an unquoted one (`a\vb` is one argument);
//! - a quote may open anywhere in an argument (`a"b c"` is `ab c`);
//! - in double quotes `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` and `\<any>` are escapes; in
//!   single quotes only `\'` is;
//! - a closing quote must be followed by a blank or the end of the line, and a quote must be
//!   closed: otherwise the whole request is refused ("unbalanced quotes");
//! - the line is a C string: it ends at its first NUL byte.

use super::ValkeyCodecError;

/// What [`split`] reports, argument by argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// The next byte of the current argument.
    Byte(u8),
    /// The current argument is complete.
    End,
}

/// Splits `line` (without its line ending) into arguments, calling `emit` for each byte and
/// at the end of each argument; returns the number of arguments. Allocates nothing: the
/// request scanner calls it with a closure that keeps nothing, to validate a line and learn
/// whether it holds a command at all (Valkey skips a line without arguments).
pub fn split(line: &[u8], mut emit: impl FnMut(Piece)) -> Result<usize, ValkeyCodecError> {
    let line = &line[..memchr::memchr(0, line).unwrap_or(line.len())];
    // A C string: reading past the end gives the terminating NUL.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut p = 0;
    let mut argc = 0;
    loop {
        while at(p) != 0 && is_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Ok(argc);
        }
        let (mut in_double, mut in_single, mut done) = (false, false, false);
        while !done {
            let c = at(p);
            if in_double {
                if c == b'\\' && at(p + 1) == b'x' && is_hex(at(p + 2)) && is_hex(at(p + 3)) {
                    emit(Piece::Byte(hex(at(p + 2)) * 16 + hex(at(p + 3))));
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    emit(Piece::Byte(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    }));
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(ValkeyCodecError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ValkeyCodecError::UnbalancedQuotes);
                } else {
                    emit(Piece::Byte(c));
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    emit(Piece::Byte(b'\''));
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return Err(ValkeyCodecError::UnbalancedQuotes);
                    }
                    done = true;
                } else if c == 0 {
                    return Err(ValkeyCodecError::UnbalancedQuotes);
                } else {
                    emit(Piece::Byte(c));
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => emit(Piece::Byte(c)),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        emit(Piece::End);
        argc += 1;
    }
}

/// The arguments of an inline request line (without its line ending).
pub fn args(line: &[u8]) -> Result<Vec<Vec<u8>>, ValkeyCodecError> {
    let mut args = Vec::new();
    let mut current = Vec::new();
    split(line, |piece| match piece {
        Piece::Byte(b) => current.push(b),
        Piece::End => args.push(std::mem::take(&mut current)),
    })?;
    Ok(args)
}

/// C's `isspace` in the C locale.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &[u8]) -> Result<Vec<Vec<u8>>, ValkeyCodecError> {
        args(line)
    }

    fn ok(line: &[u8], expected: &[&[u8]]) {
        assert_eq!(
            words(line),
            Ok(expected.iter().map(|w| w.to_vec()).collect()),
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }

    // The expected splits were checked against valkey-server 8.0.1 with ECHO.
    #[test]
    fn blanks_and_plain_words() {
        ok(b"", &[]);
        ok(b"   \t ", &[]);
        ok(b"PING", &[b"PING"]);
        ok(b"  SET  k\tv  ", &[b"SET", b"k", b"v"]);
        // \v and \f separate arguments only between them, they do not end a word.
        ok(b"ECHO a\x0bb", &[b"ECHO", b"a\x0bb"]);
        // A CR left in the line ends a word.
        ok(b"PING\r", &[b"PING"]);
        // The line is a C string.
        ok(b"PING\0 x", &[b"PING"]);
        ok(b"\0PING", &[]);
    }

    #[test]
    fn quotes_and_escapes() {
        ok(b"SET k \"a b\\n\" 'c'", &[b"SET", b"k", b"a b\n", b"c"]);
        ok(b"ECHO \"\\x41\\x4\"", &[b"ECHO", b"Ax4"]);
        ok(b"ECHO \"\\xZZ\\n\\a\\b\\t\\r\\q\"", &[b"ECHO", b"xZZ\n\x07\x08\t\rq"]);
        ok(b"ECHO 'a\\'b'", &[b"ECHO", b"a'b"]);
        ok(b"ECHO 'a\\nb'", &[b"ECHO", b"a\\nb"]);
        ok(b"ECHO a\"b c\" x", &[b"ECHO", b"ab c", b"x"]);
        ok(b"ECHO a'b c'", &[b"ECHO", b"ab c"]);
        ok(b"ECHO \"\" ''", &[b"ECHO", b"", b""]);
        // A closing quote followed by any blank, \v included.
        ok(b"ECHO \"a\"\x0bb", &[b"ECHO", b"a", b"b"]);
    }

    #[test]
    fn unbalanced_quotes() {
        for line in [&b"SET \"k"[..], b"SET 'k", b"ECHO \"a\"b", b"ECHO 'a'b", b"ECHO \"a\\\"", b"ECHO \"a\0\""] {
            assert_eq!(words(line), Err(ValkeyCodecError::UnbalancedQuotes), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn counting_allocates_nothing_and_agrees() {
        let mut ends = 0;
        assert_eq!(split(b"SET k \"a b\"", |p| ends += usize::from(p == Piece::End)), Ok(3));
        assert_eq!(ends, 3);
    }
}
