//! RequestThrottling: admits at most `max_requests_per_second` requests, over every
//! connection and every worker core of the process.
//!
//! ```yaml
//! - RequestThrottling:
//!     max_requests_per_second: 20000
//! ```
//!
//! The limit is split between the cores by the control core ([`crate::rate_limit`]); each
//! core applies its share with a Generic Cell Rate Algorithm. A request over the limit is
//! not sent on: it gets the protocol's overload answer (for Valkey an error reply), in its
//! place among the batch's responses. The minimum of 50 lets drivers finish their startup.

use crate::chain::{BuildContext, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::in_order::InOrder;
use crate::message::{Frame, Message, Protocol, ProxyError};
use crate::rate_limit::{Gcra, GlobalRate};
use anyhow::{bail, Result};
use async_trait::async_trait;
use prometheus::IntCounter;
use serde::Deserialize;
use shotover_protocols::cassandra::{CassandraBody, Opcode};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestThrottlingConfig {
    /// The global limit, in requests per second. At least 50.
    pub max_requests_per_second: u32,
    /// The limit shared by every core; made by the first core that builds this transform.
    #[serde(skip)]
    global: OnceLock<Arc<GlobalRate>>,
}

impl std::fmt::Debug for GlobalRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GlobalRate({}/s)", self.limit())
    }
}

impl TransformConfig for RequestThrottlingConfig {
    const NAME: &'static str = "RequestThrottling";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn validate(&mut self) -> Result<()> {
        if self.max_requests_per_second < 50 {
            bail!(
                "max_requests_per_second is {}, but must be at least 50 so that drivers can finish their startup",
                self.max_requests_per_second
            );
        }
        Ok(())
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let global = self.global.get_or_init(|| {
            let global = GlobalRate::new(f64::from(self.max_requests_per_second));
            let ticked = global.clone();
            ctx.control.every_tick(Box::new(move |elapsed| ticked.rebalance(elapsed)));
            global
        });
        // This core's share of the limit, for all its connections.
        let gcra = Rc::new(Gcra::new(global.join()));
        let throttled = ctx.metrics.throttled_requests.with_label_values(&[&ctx.chain_name]);
        Ok(Box::new(move || RequestThrottling {
            gcra: gcra.clone(),
            order: InOrder::default(),
            throttled: throttled.clone(),
        }))
    }
}

pub struct RequestThrottling {
    gcra: Rc<Gcra>,
    /// Valkey and Kafka: refusals, kept in request order.
    order: InOrder,
    /// `throttled_requests{chain}`.
    throttled: IntCounter,
}

/// How many requests a message counts for: a Cassandra BATCH counts each statement (up to
/// what one burst admits, [`Gcra::max_cost`], or a large BATCH would never pass).
fn cost(request: &Message) -> u64 {
    if request.protocol() != Protocol::Cassandra || request.cql_header().map(|h| h.opcode) != Some(Opcode::Batch) {
        return 1;
    }
    // Only BATCH frames are parsed; a clone keeps the request's own bytes untouched.
    let mut copy = request.clone();
    match copy.frame() {
        Ok(Frame::Cassandra(frame)) => match &frame.body {
            CassandraBody::Batch(batch) => batch.statements.len().max(1) as u64,
            _ => 1,
        },
        _ => 1,
    }
}

/// The answer to a request over the limit: the protocol's overload answer.
impl RequestThrottling {
    fn cost(&self, request: &Message) -> u64 {
        cost(request).min(self.gcra.max_cost())
    }

    /// The overload answer to a refused request. Kafka clients also get `throttle_time_ms`:
    /// how long until this core would admit the request, so they back off that long.
    fn overloaded(&self, request: &Message, now: Instant) -> Message {
        self.throttled.inc();
        let text = "shotover: too many requests, RequestThrottling limit reached";
        match request.protocol() {
            Protocol::Kafka => Message::kafka_throttled_to(request, text, self.gcra.wait_for(now, self.cost(request))),
            _ => Message::error_to(request, ProxyError::Overloaded, text),
        }
    }
}

#[async_trait(?Send)]
impl Transform for RequestThrottling {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        let cql = state.requests.first().is_some_and(|r| r.protocol() == Protocol::Cassandra);
        let now = state.requests.first().and_then(Message::received_at).unwrap_or_else(Instant::now);
        let total: u64 = state.requests.iter().map(cost).sum();
        if total > 0 {
            self.gcra.record_demand(total);
        }
        // Below the limit a whole batch is admitted with one check.
        if self.order.is_idle() && self.gcra.try_admit(now, total) {
            if !cql {
                // Counted, so that a later refusal waits for these answers.
                state.requests.iter().for_each(|r| self.order.passed_down(r));
            }
            let responses = self.order.run_below(state).await?;
            return Ok(if cql { responses } else { self.order.merge(responses) });
        }
        // CQL answers carry their stream id, so a refusal goes up at once; Valkey and Kafka
        // answers keep request order (InOrder).
        let mut cql_refusals = Vec::new();
        let mut admitted = Vec::with_capacity(state.requests.len());
        for request in std::mem::take(&mut state.requests) {
            let cost = self.cost(&request);
            if self.gcra.try_admit(now, cost) {
                if !cql {
                    self.order.passed_down(&request);
                }
                admitted.push(request);
            } else if request.expects_response() {
                if cql {
                    cql_refusals.push(self.overloaded(&request, now));
                } else {
                    let refusal = self.overloaded(&request, now);
                    self.order.answered_here(refusal);
                }
            } else {
                // A Kafka Produce with acks=0 cannot be told it was refused: it waits for
                // its turn instead (backpressure), so nothing is dropped unseen.
                while !self.gcra.try_admit(Instant::now(), cost) {
                    crate::rt::sleep(std::time::Duration::from_millis(1)).await;
                }
                admitted.push(request);
            }
        }
        // An empty batch still goes down when answers are due from below: for CQL always
        // (the sink may have read some), otherwise when earlier requests wait there.
        let mut from_below = if admitted.is_empty() && !cql && !self.order.waits_below() {
            Vec::new()
        } else {
            state.requests = admitted;
            self.order.run_below(state).await?
        };
        if cql {
            from_below.append(&mut cql_refusals);
            return Ok(from_below);
        }
        Ok(self.order.merge(from_below))
    }
}
