//! The shotover proxy library, and the public API for custom transforms.
//!
//! Layout:
//! - [`message`]: [`message::Message`]: raw bytes, a lazily parsed frame, ids, the modified flag.
//! - [`chain`]: the transform API ([`chain::TransformConfig`], [`chain::Transform`],
//!   [`chain::ChainState`], and [`chain::prelude`] for a transform's imports) and the chain
//!   that runs it.
//! - [`config`]: config.yaml and topology.yaml, parsed then validated with YAML paths.
//! - [`sources`]: accept loops, the connection loop, and each protocol's source codec.
//! - [`sinks`]: upstream connections used by sink transforms.
//! - [`transforms`]: one module per built-in transform, and their registry.
//! - [`in_order`]: keeps the answers a transform makes itself in request order among the
//!   answers from further down the chain.
//! - [`stream`]: a connection's socket (plain, TLS or WebSocket) and its read buffer.
//! - [`websocket`]: the WebSocket transport of Cassandra sources.
//! - [`tls`]: rustls acceptors and connectors built from the YAML `tls` blocks.
//! - [`rate_limit`]: RequestThrottling's per-core limiter and the control core's share job.
//! - [`observability`]: per-core metrics summed on scrape, `/metrics` and `/filter`.
//! - [`logging`]: the tracing subscriber, and the log filter `/filter` changes.
//! - [`hot_reload`]: which listeners a new instance takes over, and handing them on.
//! - [`systemd`]: readiness notifications (`Type=notify`).
//! - [`runner`]: startup in phases, the worker cores, and graceful shutdown.
//! - [`cli`]: the command line, for `shotover-proxy` and custom builds with their own transforms.
//! - [`rt`]: the runtime facade (tasks, timers, TCP, a local channel), re-exported from
//!   `shotover-executor`, which is the only crate that knows glommio.
//!
//! Start at [`runner::run`] for the process, or [`chain`] to write a transform.

pub mod chain;
pub mod cli;
pub mod config;
pub mod hot_reload;
pub mod in_order;
pub mod logging;
pub mod message;
pub mod observability;
pub mod rate_limit;
pub mod runner;
pub mod sinks;
pub mod sources;
pub mod stream;
pub mod systemd;
pub mod tls;
pub mod transforms;
pub mod websocket;

/// The codecs, for custom transforms that inspect or build frames.
pub use shotover_protocols as protocols;

/// The runtime facade (tasks, timers, TCP, a local channel), for custom transforms too.
pub use shotover_executor::rt;
