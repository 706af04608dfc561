//! Valkey/Redis wire protocol: RESP2, RESP3 and inline commands.
//!
//! - [`framing`]: finds message boundaries without allocating: [`framing::Scanner::scan`] for
//!   replies, [`framing::Scanner::scan_request`] for what a client sends, read the way Valkey
//!   reads it.
//! - [`inline`]: splits an inline request into arguments with Valkey's quoting rules.
//! - [`frame`]: parses one whole message into a [`ValkeyFrame`] and encodes it back.
//! - [`command`]: reads the command name of a request cheaply and classifies it.
//! - [`commands`]: Valkey's command table (`COMMAND`): key positions and cluster routing tips.

pub mod command;
pub mod commands;
pub mod frame;
pub mod framing;
pub mod inline;
pub mod special;

pub use frame::{RespVersion, ValkeyFrame};

/// Why bytes could not be read as Valkey protocol.
///
/// The request errors carry Valkey 8's own texts (clients and tests match on them), and
/// [`ValkeyCodecError::client_reply`] gives the exact bytes Valkey writes before it closes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValkeyCodecError {
    #[error("Protocol error: invalid type byte {0:?}")]
    InvalidType(char),
    #[error("Protocol error: invalid length {0:?}")]
    InvalidLength(String),
    #[error("Protocol error: expected CRLF after a bulk string")]
    MissingCrlf,
    #[error("Protocol error: line too long ({0} bytes without CRLF)")]
    LineTooLong(usize),
    /// A message is (or promises to be) `len` bytes, over the limit of `max`: for a client,
    /// the source's `max_request_bytes`.
    #[error("Protocol error: message of at least {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("Protocol error: streamed RESP3 aggregates are not supported")]
    Streamed,
    /// An inline request Valkey's `sdssplitargs` refuses: a quote left open, or a closing
    /// quote followed by something other than a space.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A request's `*<count>` is not a number or is over `i32::MAX`.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// An element of a request array is not a bulk string.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    /// A request's `$<len>` is not a number, negative, or over `proto-max-bulk-len`.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// Over 64 KiB of an inline request without its newline.
    #[error("Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// Over 64 KiB of a request's `*<count>` line without its CR.
    #[error("Protocol error: too big mbulk count string")]
    TooBigMbulkCount,
    /// Over 64 KiB of a request's `$<len>` line without its CR.
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: {0}")]
    Parse(String),
}

impl ValkeyCodecError {
    /// The bytes Valkey writes to a client whose input fails so, just before it closes the
    /// connection: `-ERR <text>\r\n`, with the offending byte as it is (`expected '$', got
    /// '\xff'`) and CR or LF inside the text as spaces, as Valkey's `addReplyErrorFormat`
    /// writes them. [`ValkeyCodecError::TooLarge`] is the proxy's own limit, and says so
    /// (Valkey closes a client over its query buffer limit without a word, which leaves the
    /// user guessing).
    pub fn client_reply(&self) -> Vec<u8> {
        let mut reply = b"-ERR ".to_vec();
        match self {
            ValkeyCodecError::ExpectedDollar(got) => {
                reply.extend_from_slice(b"Protocol error: expected '$', got '");
                reply.push(*got);
                reply.push(b'\'');
            }
            other => reply.extend_from_slice(other.to_string().as_bytes()),
        }
        for b in &mut reply {
            if matches!(*b, b'\r' | b'\n') {
                *b = b' ';
            }
        }
        reply.extend_from_slice(b"\r\n");
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::ValkeyCodecError as E;

    #[test]
    fn client_replies_are_valkeys_bytes() {
        assert_eq!(E::InvalidMultibulkLength.client_reply(), b"-ERR Protocol error: invalid multibulk length\r\n");
        assert_eq!(E::ExpectedDollar(b'f').client_reply(), b"-ERR Protocol error: expected '$', got 'f'\r\n");
        // Valkey writes the byte raw, and a CR or LF as a space.
        assert_eq!(E::ExpectedDollar(0xff).client_reply(), b"-ERR Protocol error: expected '$', got '\xff'\r\n");
        assert_eq!(E::ExpectedDollar(b'\r').client_reply(), b"-ERR Protocol error: expected '$', got ' '\r\n");
        assert_eq!(E::ExpectedDollar(b'\n').client_reply(), b"-ERR Protocol error: expected '$', got ' '\r\n");
        assert_eq!(E::InvalidBulkLength.client_reply(), b"-ERR Protocol error: invalid bulk length\r\n");
        assert_eq!(E::UnbalancedQuotes.client_reply(), b"-ERR Protocol error: unbalanced quotes in request\r\n");
        assert_eq!(E::TooBigInlineRequest.client_reply(), b"-ERR Protocol error: too big inline request\r\n");
        assert_eq!(E::TooBigMbulkCount.client_reply(), b"-ERR Protocol error: too big mbulk count string\r\n");
        assert_eq!(E::TooBigBulkCount.client_reply(), b"-ERR Protocol error: too big bulk count string\r\n");
        assert_eq!(
            E::TooLarge { len: 1 << 30, max: 1 << 29 }.client_reply(),
            b"-ERR Protocol error: message of at least 1073741824 bytes is over the limit of 536870912 bytes\r\n"
        );
        assert_eq!(E::Parse("a\r\nb".into()).client_reply(), b"-ERR Protocol error: a  b\r\n");
    }
}
