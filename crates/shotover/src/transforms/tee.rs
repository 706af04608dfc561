//! Tee: sends every request to a sub-chain as well as down the chain, and compares.
//!
//! ```yaml
//! - Tee:
//!     behavior: Ignore              # or FailOnMismatch, LogWarningOnMismatch,
//!                                   # or SubchainOnMismatch: [<chain>]
//!     timeout_micros: 1000          # wait for room in the buffer; default: as long as it takes
//!     buffer_size: 5                # batches waiting for the sub-chain; default 5
//!     http_api_port: 1234           # also `switch_port`; default: no HTTP API
//!     chain:
//!       - ValkeySinkSingle:
//!           remote_address: "127.0.0.1:6380"
//! ```
//!
//! - Every client connection has its own instance of the sub-chain, run by a task of its own
//!   that takes batches from a buffer of `buffer_size` batches.
//! - `Ignore` does not wait for the sub-chain. When the buffer is full the batch is not
//!   teed, and its requests count in `tee_dropped_messages{chain="Tee"}`.
//! - The other behaviours wait for both chains and compare the responses one by one (by
//!   their bytes). A sub-chain that fails, or whose batch found no room in the buffer within
//!   `timeout_micros`, counts as a mismatch for every request of the batch.
//! - The result source says which chain's responses the client gets. The HTTP API on
//!   `127.0.0.1:<http_api_port>` reads it (`GET /transform/tee/result-source`) and sets it
//!   (`PUT` with body `regular-chain` or `tee-chain`) for every core at once. While it is
//!   `tee-chain`, Tee always waits for both chains.

use crate::chain::{
    AnyTransformConfig, BuildContext, Chain, ChainBuilder, ChainError, ChainResult, ChainState, Retry, Transform,
    TransformBuilder, TransformConfig,
};
use crate::config::topology::ParseContext;
use crate::config::ConfigError;
use crate::message::{Message, Protocol, ProxyError};
use crate::rt::local_channel::{self, Receiver as LocalReceiver, Sender as LocalSender};
use anyhow::Result;
use async_trait::async_trait;
use bytes::BytesMut;
use prometheus::IntCounter;
use serde::Deserialize;
use serde_yaml_ng::Value;
use shotover_executor::control::{HttpHandler, HttpResponse};
use shotover_executor::ControlHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What Tee does when the two chains answer differently.
#[derive(Debug)]
pub enum Behavior {
    Ignore,
    FailOnMismatch,
    LogWarningOnMismatch,
    SubchainOnMismatch(Vec<Box<dyn AnyTransformConfig>>),
}

#[derive(Debug)]
pub struct TeeConfig {
    pub behavior: Behavior,
    /// How long to wait for room in the buffer, in microseconds. Default: no limit.
    pub timeout_micros: Option<u64>,
    /// Batches that may wait for the sub-chain. Default 5.
    pub buffer_size: usize,
    /// The sub-chain every request is copied to.
    pub chain: Vec<Box<dyn AnyTransformConfig>>,
    /// Port of the result-source HTTP API on 127.0.0.1. Default: none.
    pub http_api_port: Option<u16>,
    /// Which chain answers the client, shared by every core.
    result_source: Arc<ResultSource>,
    /// Set once the HTTP API has been started by the first core that builds this Tee.
    api_started: OnceLock<()>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTee {
    #[serde(default)]
    behavior: Option<Value>,
    #[serde(default)]
    timeout_micros: Option<u64>,
    #[serde(default = "default_buffer_size")]
    buffer_size: usize,
    chain: Value,
    #[serde(default)]
    http_api_port: Option<u16>,
    #[serde(default)]
    switch_port: Option<u16>,
}

fn default_buffer_size() -> usize {
    5
}

impl TeeConfig {
    /// The parser registered for `Tee`: its chains are parsed like a source's.
    pub fn parse(ctx: &ParseContext<'_>, path: &str, body: Value) -> Result<Self, ConfigError> {
        let raw: RawTee = ctx.from_value(path, body)?;
        let behavior_path = ctx.join(path, "behavior");
        let behavior = match raw.behavior {
            None => Behavior::Ignore,
            Some(Value::String(s)) => match s.as_str() {
                "Ignore" => Behavior::Ignore,
                "FailOnMismatch" => Behavior::FailOnMismatch,
                "LogWarningOnMismatch" => Behavior::LogWarningOnMismatch,
                other => {
                    return Err(ctx.error(
                        &behavior_path,
                        format!("unknown behavior {other:?}: expected Ignore, FailOnMismatch, LogWarningOnMismatch or SubchainOnMismatch"),
                    ))
                }
            },
            Some(Value::Mapping(map)) if map.len() == 1 => match map.into_iter().next() {
                Some((Value::String(k), chain)) if k == "SubchainOnMismatch" => {
                    Behavior::SubchainOnMismatch(ctx.parse_chain(&ctx.join(&behavior_path, &k), chain)?)
                }
                _ => return Err(ctx.error(&behavior_path, "expected `SubchainOnMismatch: [<transforms>]`")),
            },
            Some(_) => {
                return Err(ctx.error(
                    &behavior_path,
                    "expected Ignore, FailOnMismatch, LogWarningOnMismatch or `SubchainOnMismatch: [<transforms>]`",
                ))
            }
        };
        if raw.buffer_size == 0 {
            return Err(ctx.error(&ctx.join(path, "buffer_size"), "must be at least 1"));
        }
        if raw.http_api_port.is_some() && raw.switch_port.is_some() {
            return Err(ctx.error(path, "set http_api_port or its older name switch_port, not both"));
        }
        let chain = ctx.parse_chain(&ctx.join(path, "chain"), raw.chain)?;
        Ok(TeeConfig {
            behavior,
            timeout_micros: raw.timeout_micros,
            buffer_size: raw.buffer_size,
            chain,
            http_api_port: raw.http_api_port.or(raw.switch_port),
            result_source: Arc::new(ResultSource::default()),
            api_started: OnceLock::new(),
        })
    }
}

/// Which chain's responses go back to the client.
#[derive(Debug, Default)]
pub struct ResultSource {
    tee_chain: AtomicBool,
}

impl ResultSource {
    fn is_tee_chain(&self) -> bool {
        self.tee_chain.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        if self.is_tee_chain() {
            "tee-chain"
        } else {
            "regular-chain"
        }
    }

    fn set(&self, name: &str) -> Result<(), String> {
        match name {
            "regular-chain" => self.tee_chain.store(false, Ordering::Relaxed),
            "tee-chain" => self.tee_chain.store(true, Ordering::Relaxed),
            other => return Err(format!("unknown result source {other:?}: expected regular-chain or tee-chain")),
        }
        Ok(())
    }
}

impl TransformConfig for TeeConfig {
    const NAME: &'static str = "Tee";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        if let Some(port) = self.http_api_port {
            // One API for all cores: the first core to build this Tee starts it.
            self.api_started.get_or_init(|| start_api(port, self.result_source.clone(), &ctx.control));
        }
        let mismatch = match &self.behavior {
            Behavior::SubchainOnMismatch(chain) => Some(ChainBuilder::new("mismatch_chain", chain, ctx)?),
            _ => None,
        };
        let chain = ChainBuilder::new("tee_chain", &self.chain, ctx)?;
        let compare = match self.behavior {
            Behavior::Ignore => Compare::Ignore,
            Behavior::FailOnMismatch => Compare::Fail,
            Behavior::LogWarningOnMismatch => Compare::LogWarning,
            Behavior::SubchainOnMismatch(_) => Compare::Subchain,
        };
        let (timeout, buffer_size) = (self.timeout_micros.map(Duration::from_micros), self.buffer_size);
        let result_source = self.result_source.clone();
        let dropped = ctx.metrics.tee_dropped_messages.with_label_values(&["Tee"]);
        Ok(Box::new(move || Tee {
            tee_chain: Some(chain.build()),
            sender: None,
            mismatch: mismatch.as_ref().map(ChainBuilder::build),
            compare,
            timeout,
            buffer_size,
            result_source: result_source.clone(),
            dropped: dropped.clone(),
        }))
    }
}

/// Serves the result-source API on the control core. If the port is taken (for example by
/// the instance this one hot-reloads from, until it exits), it keeps trying.
fn start_api(port: u16, source: Arc<ResultSource>, control: &ControlHandle) {
    const PATH: &str = "/transform/tee/result-source";
    let handler: HttpHandler = Arc::new(move |request| match (request.method.as_str(), request.path.as_str()) {
        ("GET", PATH) => HttpResponse::text(200, source.name()),
        ("PUT", PATH) => {
            let body = String::from_utf8_lossy(&request.body);
            match source.set(body.trim()) {
                Ok(()) => {
                    tracing::info!("Tee: result source set to {}", body.trim());
                    HttpResponse::text(200, source.name())
                }
                Err(e) => HttpResponse::text(400, e),
            }
        }
        _ => HttpResponse::text(404, "not found: try GET or PUT /transform/tee/result-source"),
    });
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = control.serve_http(addr, "Tee result-source API", true, handler) {
        tracing::error!("Tee: cannot serve the result-source API: {e:#}");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Ignore,
    Fail,
    LogWarning,
    Subchain,
}

/// A batch for the sub-chain, and where to send its responses when someone waits for them.
struct Job {
    requests: Vec<Message>,
    reply: Option<LocalSender<ChainResult>>,
}

pub struct Tee {
    /// The sub-chain until its task starts; the task owns it from then on.
    tee_chain: Option<Chain>,
    sender: Option<LocalSender<Job>>,
    mismatch: Option<Chain>,
    compare: Compare,
    timeout: Option<Duration>,
    buffer_size: usize,
    result_source: Arc<ResultSource>,
    dropped: IntCounter,
}

/// Runs the sub-chain's batches one after another until the connection's Tee is gone.
async fn run_tee_chain(mut chain: Chain, jobs: LocalReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        // In full: a waiting Tee pairs these answers with the main chain's, and answers a
        // sub-chain sink held back would otherwise pile up unread.
        let result = chain.process_complete(job.requests).await;
        match job.reply {
            Some(reply) => {
                let _ = reply.try_send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::debug!("Tee sub-chain failed: {e}");
                }
            }
        }
    }
}

impl Tee {
    /// The buffer to the sub-chain's task, started on first use (on the worker core).
    fn sender(&mut self) -> &LocalSender<Job> {
        if self.sender.is_none() {
            let (sender, receiver) = local_channel::bounded(self.buffer_size);
            if let Some(chain) = self.tee_chain.take() {
                crate::rt::spawn_local(run_tee_chain(chain, receiver)).detach();
            }
            self.sender = Some(sender);
        }
        self.sender.get_or_insert_with(|| local_channel::bounded(1).0)
    }

    /// Queues a batch for the sub-chain and waits for its responses.
    async fn tee_and_wait(&mut self, requests: Vec<Message>) -> ChainResult {
        let count = requests.len() as u64;
        let (reply, responses) = local_channel::bounded(1);
        let job = Job { requests, reply: Some(reply) };
        let timeout = self.timeout;
        let dropped = self.dropped.clone();
        let sender = self.sender();
        let queued = match timeout {
            None => sender.send(job).await.is_ok(),
            Some(limit) => {
                futures_lite::future::or(async { sender.send(job).await.is_ok() }, async {
                    crate::rt::sleep(limit).await;
                    false
                })
                .await
            }
        };
        if !queued {
            dropped.inc_by(count);
            // The sub-chain never got the batch.
            return Err(ChainError::proxy("the Tee buffer stayed full").retry_safe());
        }
        responses.recv().await.unwrap_or_else(|| Err(ChainError::proxy("the Tee sub-chain stopped")))
    }
}

/// The other chain's answer to the request `answer` (at `index` of its batch) answers: the
/// one for the same request, since a chain may answer in any order (a Cassandra node answers
/// by stream id, not in request order); by position for answers tied to no request.
fn partner<'a>(answer: &Message, index: usize, other: &'a [Message]) -> Option<&'a Message> {
    match answer.request_id() {
        Some(id) => other.iter().find(|b| b.request_id() == Some(id)),
        None => other.get(index),
    }
}

/// The request `answer` answers, among the batch's `requests`.
fn request_of<'a>(answer: &Message, index: usize, requests: &'a [Message]) -> Option<&'a Message> {
    match answer.request_id() {
        Some(id) => requests.iter().find(|r| r.id() == id),
        None => requests.get(index),
    }
}

/// True when two responses are the same bytes on the wire.
fn same(a: &Message, b: &Message) -> bool {
    if let (Some(x), Some(y)) = (a.raw(), b.raw()) {
        return x == y;
    }
    let (mut x, mut y) = (BytesMut::new(), BytesMut::new());
    a.encode_into(&mut x).is_ok() && b.encode_into(&mut y).is_ok() && x == y
}

#[async_trait(?Send)]
impl Transform for Tee {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        if state.requests.is_empty() {
            return state.call_next_transform().await;
        }
        let tee_answers = self.result_source.is_tee_chain();
        let copy = state.requests.clone();
        if self.compare == Compare::Ignore && !tee_answers {
            let count = copy.len() as u64;
            if self.sender().try_send(Job { requests: copy, reply: None }).is_err() {
                self.dropped.inc_by(count);
            }
            return state.call_next_transform().await;
        }
        // The requests themselves, for the mismatch sub-chain and for error answers (which
        // each protocol builds from its request).
        let originals = matches!(self.compare, Compare::Subchain | Compare::Fail).then(|| state.requests.clone());
        // The two chains' answers are paired batch by batch.
        state.complete = true;
        let (tee, regular) = futures_lite::future::zip(self.tee_and_wait(copy), state.call_next_transform()).await;
        let regular = regular?;
        let (mut answer, other) = match tee {
            Ok(tee) if tee_answers => (tee, Ok(regular)),
            // The down-chain ran the batch too: whatever the sub-chain says, the requests may
            // have been applied.
            Err(e) if tee_answers => return Err(e.context("Tee sub-chain").with_retry(Retry::Unsafe)),
            tee => (regular, tee),
        };
        if self.compare == Compare::Ignore {
            return Ok(answer);
        }
        let mismatched: Vec<usize> = match &other {
            Err(_) => (0..answer.len()).collect(),
            Ok(other) => (0..answer.len())
                .filter(|&i| match answer.get(i).map(|a| (a, partner(a, i, other))) {
                    Some((a, Some(b))) => !same(a, b),
                    _ => true,
                })
                .collect(),
        };
        if mismatched.is_empty() {
            return Ok(answer);
        }
        match self.compare {
            Compare::Fail => {
                for &i in &mismatched {
                    let request = originals.as_deref().and_then(|o| request_of(answer.get(i)?, i, o));
                    if let (Some(slot), Some(request)) = (answer.get_mut(i), request) {
                        *slot = Message::error_to(
                            request,
                            ProxyError::Refused,
                            "The responses from the Tee subchain and down-chain did not match and behavior is set to fail on mismatch",
                        );
                    }
                }
            }
            Compare::LogWarning => match &other {
                Err(e) => tracing::warn!("Tee: the sub-chain gave no responses to compare: {e}"),
                Ok(other) => {
                    for &i in &mismatched {
                        let mine = answer.get(i);
                        tracing::warn!(
                            "Tee: responses differ: down-chain {:?}, sub-chain {:?}",
                            mine.and_then(|m| m.raw()),
                            mine.and_then(|m| partner(m, i, other)).and_then(|m| m.raw())
                        );
                    }
                }
            },
            Compare::Subchain => {
                if let (Some(chain), Some(originals)) = (&mut self.mismatch, originals) {
                    let requests: Vec<Message> =
                        mismatched.iter().filter_map(|&i| request_of(answer.get(i)?, i, &originals).cloned()).collect();
                    if let Err(e) = chain.process_complete(requests).await {
                        tracing::warn!("Tee: the SubchainOnMismatch chain failed: {e}");
                    }
                }
            }
            Compare::Ignore => {}
        }
        Ok(answer)
    }
}
