//! QueryTypeFilter: lets through only requests of the allowed query types. A filtered
//! request is never silently dropped: it is answered with an error reply.
//!
//! ```yaml
//! - QueryTypeFilter:
//!     AllowList: [Read]
//! # or
//! - QueryTypeFilter:
//!     DenyList: [Write, ReadWrite, SchemaChange, PubSubMessage]
//! ```
//!
//! Valkey commands are classified by `shotover_protocols::valkey::command::classify`.

use crate::chain::{BuildContext, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::in_order::InOrder;
use crate::message::{Frame, Message, Protocol, ProxyError};
use anyhow::Result;
use async_trait::async_trait;
use serde::Deserialize;
use shotover_protocols::cassandra::classify::{classify as cql_classify, classify_request, query_text};
use shotover_protocols::cassandra::result::ResultBody;
use shotover_protocols::cassandra::{CassandraBody, Opcode, PreparedQueryTypes};
use shotover_protocols::kafka::classify::classify_raw as kafka_classify;
use shotover_protocols::kafka::header as kafka_header;
use shotover_protocols::valkey::command::{classify, QueryType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The error text of a filtered request.
pub const FILTERED: &str = "ERR Message was filtered out by shotover";

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum FilterQueryType {
    Read,
    Write,
    ReadWrite,
    SchemaChange,
    PubSubMessage,
}

impl From<QueryType> for FilterQueryType {
    fn from(q: QueryType) -> Self {
        match q {
            QueryType::Read => FilterQueryType::Read,
            QueryType::Write => FilterQueryType::Write,
            QueryType::ReadWrite => FilterQueryType::ReadWrite,
            QueryType::SchemaChange => FilterQueryType::SchemaChange,
            QueryType::PubSubMessage => FilterQueryType::PubSubMessage,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawQueryTypeFilter")]
pub enum QueryTypeFilterConfig {
    /// Only these types pass.
    AllowList(Vec<FilterQueryType>),
    /// These types are stopped.
    DenyList(Vec<FilterQueryType>),
}

/// The YAML form: exactly one of the two keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueryTypeFilter {
    #[serde(rename = "AllowList")]
    allow_list: Option<Vec<FilterQueryType>>,
    #[serde(rename = "DenyList")]
    deny_list: Option<Vec<FilterQueryType>>,
}

impl TryFrom<RawQueryTypeFilter> for QueryTypeFilterConfig {
    type Error = &'static str;
    fn try_from(raw: RawQueryTypeFilter) -> Result<Self, Self::Error> {
        match (raw.allow_list, raw.deny_list) {
            (Some(list), None) => Ok(QueryTypeFilterConfig::AllowList(list)),
            (None, Some(list)) => Ok(QueryTypeFilterConfig::DenyList(list)),
            _ => Err("give exactly one of AllowList and DenyList"),
        }
    }
}

impl TransformConfig for QueryTypeFilterConfig {
    const NAME: &'static str = "QueryTypeFilter";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let config = self.clone();
        // Shared by the core's connections: drivers prepare a statement on one connection and
        // execute it on any other.
        let prepared: Rc<RefCell<PreparedQueryTypes>> = Rc::default();
        Ok(Box::new(move || QueryTypeFilter {
            config: config.clone(),
            prepared: prepared.clone(),
            preparing: HashMap::new(),
            order: InOrder::default(),
        }))
    }
}

pub struct QueryTypeFilter {
    config: QueryTypeFilterConfig,
    /// CQL: the query type of each statement prepared on this core, for its EXECUTEs.
    prepared: Rc<RefCell<PreparedQueryTypes>>,
    /// CQL: PREPAREs waiting for their answer, by stream id.
    preparing: HashMap<i16, QueryType>,
    /// Valkey and Kafka: filtered requests' errors, kept in request order.
    order: InOrder,
}

impl QueryTypeFilter {
    fn kind(&mut self, request: &mut Message) -> FilterQueryType {
        match request.protocol() {
            Protocol::Cassandra => return self.cql_kind(request).into(),
            // By api key, read from the header; unreadable requests count as writes.
            Protocol::Kafka => {
                return match request.raw().and_then(|r| kafka_header::request_ids(r).ok()) {
                    Some(ids) => kafka_classify(ids.api_key).into(),
                    None => FilterQueryType::Write,
                }
            }
            Protocol::Valkey => {}
        }
        let mut buf = [0u8; 32];
        match request.valkey_request().and_then(|v| v.upper(&mut buf).map(classify)) {
            Some(kind) => kind.into(),
            // Unnamed or over-long commands are unknown, so treated as writes.
            None => FilterQueryType::Write,
        }
    }

    fn cql_kind(&mut self, request: &mut Message) -> QueryType {
        let Some(header) = request.cql_header() else { return QueryType::Write };
        let kind = match header.opcode {
            // The handshake: every driver sends these, and they touch no data.
            Opcode::Startup | Opcode::Options | Opcode::Register | Opcode::AuthResponse => return QueryType::Read,
            Opcode::Query | Opcode::Prepare if request.raw().and_then(|r| query_text(r)).is_some() => {
                request.raw().and_then(|r| query_text(r)).map(cql_classify).unwrap_or(QueryType::Write)
            }
            _ => match request.frame() {
                Ok(Frame::Cassandra(frame)) => classify_request(frame, &self.prepared.borrow()),
                _ => QueryType::Write,
            },
        };
        if header.opcode == Opcode::Prepare {
            self.preparing.insert(header.stream_id, kind);
        }
        kind
    }

    /// Records the ids that PREPARE answers carry, for later EXECUTEs.
    fn learn_prepared(&mut self, responses: &mut [Message]) {
        if self.preparing.is_empty() {
            return;
        }
        for response in responses {
            let Some(header) = response.cql_header() else { continue };
            let Some(kind) = self.preparing.remove(&header.stream_id) else { continue };
            if let Ok(Frame::Cassandra(frame)) = response.frame() {
                if let CassandraBody::Result(ResultBody::Prepared(prepared)) = &frame.body {
                    self.prepared.borrow_mut().insert(prepared.id.clone(), kind);
                }
            }
        }
    }

    fn allows(&mut self, request: &mut Message) -> bool {
        let kind = self.kind(request);
        match &self.config {
            QueryTypeFilterConfig::AllowList(list) => list.contains(&kind),
            QueryTypeFilterConfig::DenyList(list) => !list.contains(&kind),
        }
    }
}

#[async_trait(?Send)]
impl Transform for QueryTypeFilter {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        // The common case, every request allowed and no error waiting for its turn,
        // allocates nothing.
        let mut requests = std::mem::take(&mut state.requests);
        let cql = requests.first().is_some_and(|r| r.protocol() == Protocol::Cassandra);
        if self.order.is_idle() && requests.iter_mut().all(|r| self.allows(r)) {
            if !cql {
                // Counted, so that a later error of ours waits for these answers.
                requests.iter().for_each(|r| self.order.passed_down(r));
            }
            state.requests = requests;
            let mut responses = self.order.run_below(state).await?;
            self.learn_prepared(&mut responses);
            return Ok(if cql { responses } else { self.order.merge(responses) });
        }
        // Classifying again is cheap and has no effect a second time (a PREPARE's stream id
        // is recorded once either way).
        let allowed: Vec<bool> = requests.iter_mut().map(|r| self.allows(r)).collect();
        // CQL answers carry their stream id, so a filtered request's error goes up at once;
        // Valkey and Kafka answers keep request order (InOrder).
        let mut cql_errors = Vec::new();
        for (request, allowed) in requests.into_iter().zip(allowed) {
            if allowed {
                if !cql {
                    self.order.passed_down(&request);
                }
                state.requests.push(request);
            } else if request.expects_response() {
                let error = Message::error_to(&request, ProxyError::Refused, FILTERED.trim_start_matches("ERR "));
                if cql {
                    cql_errors.push(error);
                } else {
                    self.order.answered_here(error);
                }
            } else {
                // Kafka Produce with acks=0: the client asked for no answer, so none is sent.
                tracing::debug!("filtered a request that expects no response");
            }
        }
        // An empty batch still goes down when answers are due from below: for CQL always
        // (the sink may have read some), otherwise when earlier requests wait there.
        let mut from_below = if state.requests.is_empty() && !cql && !self.order.waits_below() {
            Vec::new()
        } else {
            let mut responses = self.order.run_below(state).await?;
            self.learn_prepared(&mut responses);
            responses
        };
        if cql {
            from_below.append(&mut cql_errors);
            return Ok(from_below);
        }
        Ok(self.order.merge(from_below))
    }
}
