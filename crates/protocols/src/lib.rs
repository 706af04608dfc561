//! Sans-IO codecs for the protocols shotover speaks.
//!
//! This crate does no I/O and imports no async runtime: it takes bytes and returns typed
//! frames. Each protocol separates two questions:
//! - *framing*: is a whole message buffered, and how long is it? Cheap, allocation free, and
//!   "incomplete" is an ordinary `Ok(None)`, never an error;
//! - *parsing*: turn one whole message into a frame, only when a transform asks for it.
//!
//! Layout:
//! - [`valkey`]: RESP2/RESP3 framing ([`valkey::framing`]), lazy parsing and encoding
//!   ([`valkey::frame`]) and command classification ([`valkey::command`]).
//!
//! Start at [`valkey::framing::message_len`].

pub mod valkey;
