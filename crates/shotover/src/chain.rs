//! The transform API and the chain that runs it.
//!
//! Order of the phases for one batch (requests down, responses up):
//!
//! ```text
//! source ──requests──▶ T1.transform ──call_next_transform──▶ T2 … ──▶ sink (terminating)
//! source ◀─responses── T1 returns  ◀────────────────────────  T2 … ◀── sink returns
//! ```
//!
//! - A [`TransformConfig`] is the parsed YAML of one transform, and declares it: its
//!   [`NAME`](TransformConfig::NAME) in topology.yaml, whether it is
//!   [`TERMINATING`](TransformConfig::TERMINATING), and its [`PROTOCOLS`](TransformConfig::PROTOCOLS).
//!   The registry registers it by type: `registry.register::<MyConfig>()`.
//! - [`TransformConfig::validate`] runs once at load, before any core starts: it checks the
//!   fields and keeps what it resolves (addresses, TLS connectors; see [`Resolved`] and
//!   [`crate::sinks::settings`]). The configuration is then shared by all cores.
//! - [`TransformConfig::build`] runs once per worker core and returns a [`TransformBuilder`]:
//!   a closure that owns what the core shares between connections.
//! - The closure runs once per client connection and returns the [`Transform`] that serves
//!   it. Nothing here is `Send`: a transform lives on one core.
//!
//! A whole transform (`use shotover::chain::prelude::*` brings what it needs):
//!
//! ```
//! use shotover::chain::prelude::*;
//!
//! #[derive(Debug, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct CountConfig {}
//!
//! impl TransformConfig for CountConfig {
//!     const NAME: &'static str = "Count";
//!     const TERMINATING: bool = false;
//!     const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
//!     fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
//!         // Shared by the core's connections.
//!         let total = std::rc::Rc::new(std::cell::Cell::new(0u64));
//!         Ok(Box::new(move || Count { total: total.clone() }))
//!     }
//! }
//!
//! pub struct Count {
//!     total: std::rc::Rc<std::cell::Cell<u64>>,
//! }
//!
//! #[async_trait(?Send)]
//! impl Transform for Count {
//!     async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
//!         self.total.set(self.total.get() + state.requests.len() as u64);
//!         state.call_next_transform().await
//!     }
//! }
//!
//! let mut registry = shotover::transforms::registry();
//! registry.register::<CountConfig>();
//! ```
//! - [`Transform::transform`] gets the batch in [`ChainState::requests`], may change it,
//!   calls [`ChainState::call_next_transform`] (unless it terminates the chain) and returns
//!   responses, then any unsolicited messages:
//!   - Valkey: one response per request, in request order. A transform may hold requests
//!     back (Coalesce) and answer them in a later call, still in order.
//!   - Kafka: as Valkey. KafkaSinkSingle returns what the broker has answered so far and
//!     the rest through [`Transform::poll_pushed`], so a client's pipelined requests reach
//!     the broker without waiting for the answers before them.
//!   - Cassandra: each response carries its request's stream id and may come in any later
//!     call (a sink returns what its node has answered so far and the rest through
//!     [`Transform::poll_pushed`]).
//!
//!   A call with an empty batch asks every transform to deliver what it holds. A call with
//!   [`ChainState::complete`] set asks for every request of the batch to be answered
//!   before it returns: transforms that pair answers with requests batch by batch (Tee
//!   comparing, ParallelMap) set it.
//! - [`Transform::poll_pushed`] lets a sink say that its upstream sent something nobody
//!   asked for (pub/sub messages). The source then runs the chain with an empty batch and
//!   the sink returns those messages as responses.
//! - A run fails with a [`ChainError`] ([`ChainResult`] is `Result<Vec<Message>, ChainError>`):
//!   which [`Side`] failed (the client's request, the upstream, or the proxy itself), whether
//!   a [`Retry`] of the failed requests is safe (nothing was written upstream) or not (they
//!   may have been applied; the default), whether the client connection must close
//!   ([`ChainError::close_connection`], for state the proxy cannot restore), and a message
//!   with its causes. The source answers every request still waiting with the error's text
//!   (`-ERR shotover: <text>` for Valkey), logs `chain failed: <text>`, and closes the
//!   connection if asked to. `?` turns an `std::io::Error` into an upstream failure and an
//!   `anyhow::Error` or [`CodecError`](crate::message::CodecError) into one of the proxy,
//!   all retry-unsafe; say more where the code knows more:
//!
//!   ```ignore
//!   conn.connect().await.map_err(|e| ChainError::upstream("cannot connect").caused_by(e).retry_safe())?;
//!   ```
//!
//!   A sink that can answer each request with an error of its protocol does so instead
//!   (`-ERR`, an ERROR frame, REQUEST_TIMED_OUT) and returns `Ok`: the connection and the
//!   rest of the batch carry on. [`TransformConfig::validate`] and [`TransformConfig::build`]
//!   are not chain runs: their errors are `anyhow` errors, reported at startup.

mod error;

pub use error::{ChainError, ChainResult, Retry, Side};

use crate::message::{Message, Protocol};
use crate::observability::distribution::Distribution;
use crate::observability::CoreMetrics;
use anyhow::Result;
use async_trait::async_trait;
use prometheus::IntCounter;
use std::fmt::Debug;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

pub use shotover_executor::ControlHandle;

/// A transform, declared once: its name, whether it ends a chain, the protocols it serves,
/// and how it is built. Implemented by the transform's configuration, the struct its YAML
/// body deserializes into:
///
/// ```ignore
/// impl TransformConfig for NullSinkConfig {
///     const NAME: &'static str = "NullSink";
///     const TERMINATING: bool = true;
///     const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra];
///     fn build(&self, _: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
///         Ok(Box::new(|| NullSink))
///     }
/// }
/// ```
///
/// Register it with [`TransformRegistry::register`](crate::config::topology::TransformRegistry::register).
/// Chains hold configurations as [`AnyTransformConfig`], which every `TransformConfig` is.
pub trait TransformConfig: Debug + Send + Sync + 'static {
    /// The name used in topology.yaml, in metric labels and in errors.
    const NAME: &'static str;
    /// True for transforms that answer requests themselves (sinks, NullSink, DebugReturner):
    /// such a transform must be the last of its chain.
    const TERMINATING: bool;
    /// The source protocols this transform can serve.
    const PROTOCOLS: &'static [Protocol];

    /// The protocols this configuration serves: [`Self::PROTOCOLS`], unless they depend on
    /// the fields (DebugReturner).
    fn protocols(&self) -> &'static [Protocol] {
        Self::PROTOCOLS
    }

    /// Runs once when the topology is loaded, before any core starts: checks the fields
    /// beyond what parsing checks, and resolves what every core's [`build`](Self::build)
    /// uses (addresses, TLS connectors, durations), keeping it in the configuration. An
    /// error becomes a startup error at the transform's YAML path; name the field in it.
    fn validate(&mut self) -> Result<()> {
        Ok(())
    }

    /// Runs once per worker core and returns what makes the transform of each client
    /// connection: usually a closure, `Ok(Box::new(move || MyTransform { .. }))`, that owns
    /// what the core's connections share (metrics handles, rate limiters, connection pools,
    /// an `Rc` of settings). Nothing here may block: no DNS or file I/O.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>>;
}

/// A parsed transform of a chain: the object-safe face of [`TransformConfig`], implemented
/// for every `TransformConfig`.
pub trait AnyTransformConfig: Debug + Send + Sync {
    /// [`TransformConfig::NAME`].
    fn name(&self) -> &'static str;
    /// [`TransformConfig::TERMINATING`].
    fn is_terminating(&self) -> bool;
    /// [`TransformConfig::protocols`].
    fn protocols(&self) -> &'static [Protocol];
    /// [`TransformConfig::validate`].
    fn validate(&mut self) -> Result<()>;
    /// [`TransformConfig::build`].
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>>;
}

impl<C: TransformConfig> AnyTransformConfig for C {
    fn name(&self) -> &'static str {
        C::NAME
    }
    fn is_terminating(&self) -> bool {
        C::TERMINATING
    }
    fn protocols(&self) -> &'static [Protocol] {
        TransformConfig::protocols(self)
    }
    fn validate(&mut self) -> Result<()> {
        TransformConfig::validate(self)
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        TransformConfig::build(self, ctx)
    }
}

/// What [`TransformConfig::validate`] resolved once, for every core's
/// [`TransformConfig::build`]: a `#[serde(skip)]` field of the configuration.
pub struct Resolved<T>(Option<T>);

impl<T> Resolved<T> {
    /// Keeps what `validate` resolved.
    pub fn set(&mut self, value: T) {
        self.0 = Some(value);
    }

    /// What `validate` resolved; an error if it has not run.
    pub fn get(&self) -> Result<&T> {
        self.0.as_ref().ok_or_else(|| anyhow::anyhow!("the configuration was not validated before it was built"))
    }
}

impl<T> Default for Resolved<T> {
    fn default() -> Self {
        Resolved(None)
    }
}

impl<T> Debug for Resolved<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Resolved" } else { "Unresolved" })
    }
}

/// What a transform is built with on a worker core.
#[derive(Clone)]
pub struct BuildContext {
    /// The name of the chain (its source's name), for metric labels.
    pub chain_name: String,
    /// The core's metrics.
    pub metrics: CoreMetrics,
    /// Registers periodic jobs on the control core (global state such as rate shares).
    pub control: shotover_executor::ControlHandle,
    /// Where the chain's source listens (None outside a source, e.g. in benchmarks).
    pub listen_addr: Option<std::net::SocketAddr>,
}

impl BuildContext {
    pub fn new(metrics: CoreMetrics, control: shotover_executor::ControlHandle) -> Self {
        BuildContext { chain_name: String::new(), metrics, control, listen_addr: None }
    }
}

/// Makes the transform of each client connection on one core. Any closure returning a
/// [`Transform`] is one.
pub trait TransformBuilder {
    fn build(&self) -> Box<dyn Transform>;
}

impl<F, T> TransformBuilder for F
where
    F: Fn() -> T,
    T: Transform + 'static,
{
    fn build(&self) -> Box<dyn Transform> {
        Box::new(self())
    }
}

/// A transform serving one client connection.
#[async_trait(?Send)]
pub trait Transform {
    /// Handles one batch: see the module documentation for the contract.
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult;

    /// Ready when this transform has unsolicited messages to deliver. Polled while the
    /// connection is idle; must not lose data when it returns `Pending`.
    fn poll_pushed(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// What a transform's file needs: `use shotover::chain::prelude::*;`.
pub mod prelude {
    pub use super::{
        BuildContext, ChainError, ChainResult, ChainState, Resolved, Retry, Side, Transform, TransformBuilder,
        TransformConfig,
    };
    pub use crate::message::{Message, Protocol};
    /// For [`TransformConfig::validate`] and [`TransformConfig::build`]: configuration
    /// errors are `anyhow` errors.
    pub use anyhow::Result;
    pub use async_trait::async_trait;
    pub use serde::Deserialize;
}

/// A transform with its metrics.
struct Slot {
    transform: Box<dyn Transform>,
    total: IntCounter,
    failures: IntCounter,
    latency: Distribution,
}

/// The batch in flight and the transforms still to run.
pub struct ChainState<'a> {
    /// The requests, as the previous transform left them.
    pub requests: Vec<Message>,
    /// Set when this batch must be answered in full before the run returns: no transform
    /// may hold a request of it for a later run.
    pub complete: bool,
    remaining: &'a mut [Slot],
}

impl ChainState<'static> {
    /// The state a terminating transform (a sink) gets as the last of its chain: for unit
    /// tests that run one transform by itself.
    #[cfg(test)]
    pub(crate) fn last(requests: Vec<Message>) -> Self {
        ChainState { requests, complete: false, remaining: &mut [] }
    }
}

impl ChainState<'_> {
    /// Runs the rest of the chain on `self.requests` and returns its responses.
    pub async fn call_next_transform(&mut self) -> ChainResult {
        let remaining = std::mem::take(&mut self.remaining);
        let Some((slot, rest)) = remaining.split_first_mut() else {
            return Err(ChainError::proxy("the chain ended without a terminating transform"));
        };
        self.remaining = rest;
        let start = Instant::now();
        let result = slot.transform.transform(self).await;
        slot.total.inc();
        if result.is_err() {
            slot.failures.inc();
        }
        slot.latency.observe(start.elapsed().as_secs_f64());
        result
    }
}

/// The per-core recipe for a chain: its name and one builder per transform.
pub struct ChainBuilder {
    name: Rc<str>,
    builders: Vec<(&'static str, Box<dyn TransformBuilder>)>,
    metrics: CoreMetrics,
}

impl ChainBuilder {
    /// Builds chain `name` on this core; `base` gives the core's metrics and control handle.
    pub fn new(name: &str, configs: &[Box<dyn AnyTransformConfig>], base: &BuildContext) -> Result<Self> {
        let ctx = BuildContext { chain_name: name.to_string(), ..base.clone() };
        let builders = configs.iter().map(|c| Ok((c.name(), c.build(&ctx)?))).collect::<Result<_>>()?;
        Ok(ChainBuilder { name: name.into(), builders, metrics: base.metrics.clone() })
    }

    /// A chain instance for one connection.
    pub fn build(&self) -> Chain {
        let slots = self
            .builders
            .iter()
            .map(|(name, b)| Slot {
                transform: b.build(),
                total: self.metrics.transform_total.with_label_values(&[name]),
                failures: self.metrics.transform_failures.with_label_values(&[name]),
                latency: self.metrics.transform_latency.with_label_values(&[name]),
            })
            .collect();
        let name = &*self.name;
        Chain {
            slots,
            total: self.metrics.chain_total.with_label_values(&[name]),
            failures: self.metrics.chain_failures.with_label_values(&[name]),
            latency: self.metrics.chain_latency.with_label_values(&[name]),
            request_batch: self.metrics.chain_requests_batch.with_label_values(&[name]),
            response_batch: self.metrics.chain_responses_batch.with_label_values(&[name]),
        }
    }
}

/// The transforms serving one connection.
pub struct Chain {
    slots: Vec<Slot>,
    total: IntCounter,
    failures: IntCounter,
    latency: Distribution,
    request_batch: Distribution,
    response_batch: Distribution,
}

impl Chain {
    /// Runs one batch through the whole chain. Some answers may come in later runs.
    pub async fn process(&mut self, requests: Vec<Message>) -> ChainResult {
        self.run(requests, false).await
    }

    /// Runs one batch through the whole chain and returns only once every request of it
    /// has been answered (see [`ChainState::complete`]).
    pub async fn process_complete(&mut self, requests: Vec<Message>) -> ChainResult {
        self.run(requests, true).await
    }

    async fn run(&mut self, requests: Vec<Message>, complete: bool) -> ChainResult {
        let start = Instant::now();
        self.request_batch.observe(requests.len() as f64);
        let mut state = ChainState { requests, complete, remaining: &mut self.slots };
        let result = state.call_next_transform().await;
        self.total.inc();
        match &result {
            Ok(responses) => self.response_batch.observe(responses.len() as f64),
            Err(_) => self.failures.inc(),
        }
        self.latency.observe(start.elapsed().as_secs_f64());
        result
    }

    /// Ready when any transform has unsolicited messages to deliver.
    pub fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for slot in &mut self.slots {
            if slot.transform.poll_pushed(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
