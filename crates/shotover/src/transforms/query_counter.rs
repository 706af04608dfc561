//! QueryCounter: counts requests by command in the `query_count{name, query}` metric.
//!
//! ```yaml
//! - QueryCounter:
//!     name: "DR chain"
//! ```

use crate::chain::{BuildContext, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use prometheus::{IntCounter, IntCounterVec};
use serde::Deserialize;
use shotover_protocols::valkey::command::is_known;
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryCounterConfig {
    /// The `name` label of the counter.
    pub name: String,
}

impl TransformConfig for QueryCounterConfig {
    fn name(&self) -> &'static str {
        "QueryCounter"
    }
    fn is_terminating(&self) -> bool {
        false
    }
    fn protocols(&self) -> &'static [Protocol] {
        &[Protocol::Valkey]
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        Ok(Box::new(QueryCounterBuilder { name: self.name.clone(), counter: ctx.metrics.query_count.clone() }))
    }
}

struct QueryCounterBuilder {
    name: String,
    counter: IntCounterVec,
}

impl TransformBuilder for QueryCounterBuilder {
    fn build(&self) -> Box<dyn Transform> {
        Box::new(QueryCounter { name: self.name.clone(), counter: self.counter.clone(), cache: HashMap::new() })
    }
}

/// Label for commands the proxy does not know (keeps label cardinality bounded).
const OTHER: &str = "OTHER";

pub struct QueryCounter {
    name: String,
    counter: IntCounterVec,
    /// Upper-cased command name → its counter, so a repeated command costs one lookup.
    cache: HashMap<Vec<u8>, IntCounter>,
}

impl QueryCounter {
    fn count(&mut self, upper: &[u8]) {
        if let Some(c) = self.cache.get(upper) {
            c.inc();
            return;
        }
        // Only known commands get a label (and a cache entry) of their own, so neither the
        // metric's series nor this cache can grow with what clients send.
        let label = if is_known(upper) { std::str::from_utf8(upper).unwrap_or(OTHER) } else { OTHER };
        let counter = self.counter.with_label_values(&[self.name.as_str(), label]);
        counter.inc();
        if label != OTHER {
            self.cache.insert(upper.to_vec(), counter);
        }
    }
}

#[async_trait(?Send)]
impl Transform for QueryCounter {
    fn name(&self) -> &'static str {
        "QueryCounter"
    }

    async fn transform(&mut self, state: &mut ChainState<'_>) -> Result<Vec<Message>> {
        for request in &state.requests {
            let mut buf = [0u8; 32];
            let upper = request.valkey_request().and_then(|v| v.upper(&mut buf).map(|u| u.len()));
            match upper {
                Some(len) => self.count(&buf[..len]),
                None => self.count(OTHER.as_bytes()),
            }
        }
        state.call_next_transform().await
    }
}
