//! QueryCounter: counts requests by command in the `query_count{name, query}` metric.
//!
//! The `query` label is the Valkey command name, the Kafka api key (`Produce`, `Fetch`, …), or for CQL the statement's leading keyword
//! (`SELECT`, `INSERT`, …) for QUERY and PREPARE, and the opcode (`EXECUTE`, `BATCH`,
//! `STARTUP`, …) for other requests. Unknown names count as `OTHER`.
//!
//! ```yaml
//! - QueryCounter:
//!     name: "DR chain"
//! ```

use crate::chain::{BuildContext, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Frame, Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use prometheus::{IntCounter, IntCounterVec};
use serde::Deserialize;
use shotover_protocols::cassandra::classify::{query_text, statement_keyword};
use shotover_protocols::cassandra::{CassandraBody, Opcode};
use shotover_protocols::kafka::header::request_ids;
use shotover_protocols::kafka::ApiKey;
use shotover_protocols::valkey::command::is_known;
use std::collections::HashMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryCounterConfig {
    /// The `name` label of the counter.
    pub name: String,
}

impl TransformConfig for QueryCounterConfig {
    const NAME: &'static str = "QueryCounter";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let (name, counter) = (self.name.clone(), ctx.metrics.query_count.clone());
        Ok(Box::new(move || QueryCounter {
            name: name.clone(),
            counter: counter.clone(),
            cache: HashMap::new(),
            kafka: HashMap::new(),
        }))
    }
}

/// Label for commands the proxy does not know (keeps label cardinality bounded).
const OTHER: &str = "OTHER";

/// The CQL labels besides statement keywords: one per request opcode.
const CQL_LABELS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "BEGIN",
    "TRUNCATE",
    "USE",
    "CREATE",
    "ALTER",
    "DROP",
    "GRANT",
    "REVOKE",
    "LIST",
    "DESCRIBE",
    "EXECUTE",
    "BATCH",
    "STARTUP",
    "OPTIONS",
    "REGISTER",
    "AUTH_RESPONSE",
];

/// The `query` label of a CQL request.
fn cql_label(request: &mut Message) -> &'static str {
    let Some(header) = request.cql_header() else { return OTHER };
    match header.opcode {
        Opcode::Query | Opcode::Prepare => {
            if let Some(text) = request.raw().and_then(|raw| query_text(raw)) {
                return statement_keyword(text);
            }
            match request.frame() {
                Ok(Frame::Cassandra(f)) => match &f.body {
                    CassandraBody::Query(q) => statement_keyword(&q.query),
                    CassandraBody::Prepare(p) => statement_keyword(&p.query),
                    _ => OTHER,
                },
                _ => OTHER,
            }
        }
        Opcode::Execute => "EXECUTE",
        Opcode::Batch => "BATCH",
        Opcode::Startup => "STARTUP",
        Opcode::Options => "OPTIONS",
        Opcode::Register => "REGISTER",
        Opcode::AuthResponse => "AUTH_RESPONSE",
        _ => OTHER,
    }
}

pub struct QueryCounter {
    name: String,
    counter: IntCounterVec,
    /// Upper-cased command name → its counter, so a repeated command costs one lookup.
    cache: HashMap<Vec<u8>, IntCounter>,
    /// Kafka api key (-1 for any the proxy does not know) → its counter.
    kafka: HashMap<i16, IntCounter>,
}

impl QueryCounter {
    /// Counts a Kafka request under its api key's name (`Produce`, `Fetch`, …), read from
    /// the header; api keys the proxy does not know count as `OTHER`. The name is formatted
    /// once per api key, not per request.
    fn count_kafka(&mut self, request: &Message) {
        let key =
            request.raw().and_then(|raw| request_ids(raw).ok()).and_then(|ids| ApiKey::try_from(ids.api_key).ok());
        let id = key.map_or(-1, |k| k as i16);
        if let Some(c) = self.kafka.get(&id) {
            c.inc();
            return;
        }
        let label = key.map_or_else(|| OTHER.to_string(), |k| format!("{k:?}"));
        let counter = self.counter.with_label_values(&[self.name.as_str(), &label]);
        counter.inc();
        self.kafka.insert(id, counter);
    }

    fn count(&mut self, upper: &[u8]) {
        if let Some(c) = self.cache.get(upper) {
            c.inc();
            return;
        }
        // Only known commands get a label (and a cache entry) of their own, so neither the
        // metric's series nor this cache can grow with what clients send.
        let label = if is_known(upper) || CQL_LABELS.iter().any(|l| l.as_bytes() == upper) {
            std::str::from_utf8(upper).unwrap_or(OTHER)
        } else {
            OTHER
        };
        let counter = self.counter.with_label_values(&[self.name.as_str(), label]);
        counter.inc();
        if label != OTHER {
            self.cache.insert(upper.to_vec(), counter);
        }
    }
}

#[async_trait(?Send)]
impl Transform for QueryCounter {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        for request in &mut state.requests {
            match request.protocol() {
                Protocol::Cassandra => {
                    let label = cql_label(request);
                    self.count(label.as_bytes());
                    continue;
                }
                Protocol::Kafka => {
                    self.count_kafka(request);
                    continue;
                }
                Protocol::Valkey => {}
            }
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
