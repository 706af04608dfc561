//! The shotover proxy library, and the public API for custom transforms.
//!
//! Layout:
//! - [`message`]: [`message::Message`]: raw bytes, a lazily parsed frame, ids, the modified flag.
//! - [`chain`]: the transform API ([`chain::TransformConfig`], [`chain::Transform`],
//!   [`chain::ChainState`], and [`chain::prelude`] for a transform's imports) and the chain
//!   that runs it.
//! - [`config`]: config.yaml and topology.yaml, parsed then validated with YAML paths.
//! - [`sources`]: accept loops and per-connection loops.
//! - [`sinks`]: upstream connections used by sink transforms.
//! - [`transforms`]: one module per built-in transform, and their registry.
//! - [`tls`]: rustls acceptors and connectors built from the YAML `tls` blocks.
//! - [`observability`]: per-core metrics summed on scrape, `/metrics` and `/filter`.
//! - [`runner`]: startup, the worker cores, and graceful shutdown.
//! - [`cli`]: the command line, for `shotover-proxy` and custom builds with their own transforms.
//!
//! Start at [`runner::run`] for the process, or [`chain`] to write a transform.

pub mod chain;
pub mod cli;
pub mod config;
pub mod cql;
pub mod hot_reload;
pub mod io;
pub mod logging;
pub mod message;
pub mod observability;
pub mod rate_limit;
pub mod runner;
pub mod sinks;
pub mod sources;
pub mod systemd;
pub mod tls;
pub mod transforms;
pub mod websocket;

/// The codecs, for custom transforms that inspect or build frames.
pub use shotover_protocols as protocols;
