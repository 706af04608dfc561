//! Valkey/Redis wire protocol: RESP2, RESP3 and inline commands.
//!
//! - [`framing`]: finds message boundaries without allocating.
//! - [`frame`]: parses one whole message into a [`ValkeyFrame`] and encodes it back.
//! - [`command`]: reads the command name of a request cheaply and classifies it.

pub mod command;
pub mod frame;
pub mod framing;

pub use frame::{RespVersion, ValkeyFrame};

/// Why bytes could not be read as Valkey protocol.
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
    #[error("Protocol error: message of over {0} bytes is too large")]
    TooLarge(usize),
    #[error("Protocol error: streamed RESP3 aggregates are not supported")]
    Streamed,
    #[error("Protocol error: unbalanced quotes in inline request")]
    UnbalancedQuotes,
    #[error("Protocol error: {0}")]
    Parse(String),
}
