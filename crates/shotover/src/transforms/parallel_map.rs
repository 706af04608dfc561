//! ParallelMap: spreads each batch over several copies of a sub-chain and runs them at once.
//!
//! ```yaml
//! - ParallelMap:
//!     parallelism: 3
//!     ordered_results: true
//!     chain:
//!       - ValkeySinkSingle:
//!           remote_address: "127.0.0.1:6379"
//! ```
//!
//! Every client connection gets `parallelism` instances of the chain. Requests are dealt
//! round-robin: with three instances, the 1st, 4th, 7th… request of a batch go to the
//! first. With `ordered_results` the responses come back in request order; without it they
//! come back instance by instance, as each instance finishes. ParallelMap ends its chain.

use crate::chain::{
    AnyTransformConfig, BuildContext, Chain, ChainBuilder, ChainError, ChainResult, ChainState, Transform,
    TransformBuilder, TransformConfig,
};
use crate::config::topology::ParseContext;
use crate::config::ConfigError;
use crate::message::{Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;

#[derive(Debug)]
pub struct ParallelMapConfig {
    /// Instances of the chain per connection. Must be at least 1.
    pub parallelism: u32,
    /// Return responses in request order. Default true.
    pub ordered_results: bool,
    /// The sub-chain; it must end with a terminating transform.
    pub chain: Vec<Box<dyn AnyTransformConfig>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParallelMap {
    parallelism: u32,
    #[serde(default = "default_true")]
    ordered_results: bool,
    chain: Value,
}

fn default_true() -> bool {
    true
}

impl ParallelMapConfig {
    /// The parser registered for `ParallelMap`: the sub-chain is parsed like a source's.
    pub fn parse(ctx: &ParseContext<'_>, path: &str, body: Value) -> Result<Self, ConfigError> {
        let raw: RawParallelMap = ctx.from_value(path, body)?;
        if raw.parallelism == 0 {
            return Err(ctx.error(&ctx.join(path, "parallelism"), "must be at least 1"));
        }
        if !raw.ordered_results && matches!(ctx.protocol(), Protocol::Valkey | Protocol::Kafka) {
            return Err(ctx.error(
                &ctx.join(path, "ordered_results"),
                format!(
                    "must be true in a {} chain: its clients read responses in request order, so they would read them against the wrong requests",
                    ctx.protocol()
                ),
            ));
        }
        let chain = ctx.parse_chain(&ctx.join(path, "chain"), raw.chain)?;
        Ok(ParallelMapConfig { parallelism: raw.parallelism, ordered_results: raw.ordered_results, chain })
    }
}

impl TransformConfig for ParallelMapConfig {
    const NAME: &'static str = "ParallelMap";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let chain = ChainBuilder::new("parallel_map_chain", &self.chain, ctx)?;
        let (parallelism, ordered) = (self.parallelism as usize, self.ordered_results);
        Ok(Box::new(move || ParallelMap { chains: (0..parallelism).map(|_| chain.build()).collect(), ordered }))
    }
}

pub struct ParallelMap {
    chains: Vec<Chain>,
    ordered: bool,
}

type Running<'a> = Pin<Box<dyn Future<Output = ChainResult> + 'a>>;

/// True for a CQL request that sets up its connection's session (STARTUP, AUTH_RESPONSE,
/// REGISTER, `USE`): every instance needs it, since each has its own node connection.
fn sets_up_session(request: &Message) -> bool {
    use shotover_protocols::cassandra::{classify, Opcode};
    let Some(header) = request.cql_header() else { return false };
    match header.opcode {
        Opcode::Startup | Opcode::AuthResponse | Opcode::Register => true,
        Opcode::Query => request
            .raw()
            .and_then(|raw| classify::query_text(raw))
            .is_some_and(|q| q.trim_start().get(..4).is_some_and(|w| w.eq_ignore_ascii_case("use "))),
        _ => false,
    }
}

impl ParallelMap {
    /// Runs a session request on every instance, in turn, and answers with the first one's.
    async fn broadcast(&mut self, request: Message) -> ChainResult {
        let mut answer = None;
        for (i, chain) in self.chains.iter_mut().enumerate() {
            let responses = chain.process_complete(vec![request.clone()]).await?;
            if i == 0 {
                answer = Some(responses);
            }
        }
        Ok(answer.unwrap_or_default())
    }
}

#[async_trait(?Send)]
impl Transform for ParallelMap {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        // CQL session set-up goes to every instance first (clients wait for its answer before
        // they send more, so it is first in its batch anyway).
        let mut session_answers = Vec::new();
        if self.chains.len() > 1 && state.requests.iter().any(sets_up_session) {
            let (session, rest): (Vec<Message>, Vec<Message>) =
                std::mem::take(&mut state.requests).into_iter().partition(sets_up_session);
            state.requests = rest;
            for request in session {
                session_answers.extend(self.broadcast(request).await?);
            }
        }
        let mut answers = self.deal(state).await?;
        if !session_answers.is_empty() {
            session_answers.append(&mut answers);
            answers = session_answers;
        }
        Ok(answers)
    }

    fn poll_pushed(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        for chain in &mut self.chains {
            if chain.poll_pushed(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl ParallelMap {
    /// Deals the batch round robin over the instances and gathers their answers.
    async fn deal(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        let n = self.chains.len().max(1);
        let total = state.requests.len();
        let mut batches: Vec<Vec<Message>> = (0..n).map(|_| Vec::with_capacity(total / n + 1)).collect();
        for (i, request) in state.requests.drain(..).enumerate() {
            if let Some(batch) = batches.get_mut(i % n) {
                batch.push(request);
            }
        }
        let ordered = self.ordered;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        // An empty batch still reaches every instance: it carries their pushed messages.
        let mut running: Vec<Option<Running<'_>>> = self
            .chains
            .iter_mut()
            .zip(batches)
            .map(|(chain, batch)| {
                // Ordered results are dealt back batch by batch, so each instance must answer
                // its share in full.
                let run = if ordered {
                    Box::pin(chain.process_complete(batch)) as Running<'_>
                } else {
                    Box::pin(chain.process(batch))
                };
                Some(run)
            })
            .collect();
        let mut results: Vec<Option<Vec<Message>>> = (0..n).map(|_| None).collect();
        let mut unordered = Vec::with_capacity(total);
        let mut failure = None;
        poll_fn(|cx| {
            let mut pending = false;
            for (i, slot) in running.iter_mut().enumerate() {
                let Some(fut) = slot else { continue };
                match fut.as_mut().poll(cx) {
                    Poll::Pending => pending = true,
                    Poll::Ready(result) => {
                        *slot = None;
                        match result {
                            Ok(responses) if ordered => {
                                if let Some(r) = results.get_mut(i) {
                                    *r = Some(responses);
                                }
                            }
                            Ok(mut responses) => unordered.append(&mut responses),
                            Err(e) => failure = failure.take().or(Some(e)),
                        }
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        drop(running);
        if let Some(e) = failure {
            return Err(e);
        }
        if !ordered {
            return Ok(unordered);
        }
        // Deal the responses back in the order their requests were dealt.
        let mut per_chain: Vec<std::vec::IntoIter<Message>> = Vec::with_capacity(n);
        for (i, (responses, size)) in results.into_iter().zip(&sizes).enumerate() {
            let responses = responses.unwrap_or_default();
            if responses.len() < *size {
                // A sub-chain that broke the contract: its requests went down and may have
                // been applied.
                return Err(ChainError::proxy(format!(
                    "instance {i} of the ParallelMap chain returned {} responses for {size} requests",
                    responses.len()
                )));
            }
            per_chain.push(responses.into_iter());
        }
        let mut out = Vec::with_capacity(total);
        for i in 0..total {
            if let Some(next) = per_chain.get_mut(i % n).and_then(Iterator::next) {
                out.push(next);
            }
        }
        // Anything an instance returned beyond its answers is unsolicited: it goes last.
        for rest in per_chain {
            out.extend(rest);
        }
        Ok(out)
    }
}
