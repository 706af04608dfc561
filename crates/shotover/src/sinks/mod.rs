//! Upstream connections used by sink transforms.
//!
//! - [`valkey`]: one connection to a Valkey server that reads whole RESP messages.

pub mod valkey;
pub mod valkey_cluster;
