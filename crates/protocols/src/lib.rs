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
//! - [`kafka`]: length-prefix framing ([`kafka::framing`]), cheap header reads, per-connection
//!   request tracking ([`kafka::InFlightRequests`]), lazy parsing with `kafka-protocol`
//!   ([`kafka::KafkaFrame`]), broker rewriting and synthesized error responses.
//! - [`cassandra`]: CQL native protocol v3-v5 framing ([`cassandra::framing`]), v5 segments
//!   ([`cassandra::segment`]), lazy parsing and encoding ([`cassandra::frame`]) and
//!   statement classification ([`mod@cassandra::classify`]).
//!
//! Start at [`valkey::framing::message_len`].

pub mod cassandra;
pub mod fuzz;
pub mod kafka;
pub mod valkey;
