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

use crate::chain::{BuildContext, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use serde::Deserialize;
use shotover_protocols::valkey::command::{classify, QueryType};

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
    fn name(&self) -> &'static str {
        "QueryTypeFilter"
    }
    fn is_terminating(&self) -> bool {
        false
    }
    fn protocols(&self) -> &'static [Protocol] {
        &[Protocol::Valkey]
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        Ok(Box::new(self.clone()))
    }
}

impl TransformBuilder for QueryTypeFilterConfig {
    fn build(&self) -> Box<dyn Transform> {
        Box::new(QueryTypeFilter { config: self.clone() })
    }
}

pub struct QueryTypeFilter {
    config: QueryTypeFilterConfig,
}

impl QueryTypeFilter {
    fn allows(&self, request: &Message) -> bool {
        let mut buf = [0u8; 32];
        let kind: FilterQueryType = match request.valkey_request().and_then(|v| v.upper(&mut buf).map(classify)) {
            Some(kind) => kind.into(),
            // Unnamed or over-long commands are unknown, so treated as writes.
            None => FilterQueryType::Write,
        };
        match &self.config {
            QueryTypeFilterConfig::AllowList(list) => list.contains(&kind),
            QueryTypeFilterConfig::DenyList(list) => !list.contains(&kind),
        }
    }
}

#[async_trait(?Send)]
impl Transform for QueryTypeFilter {
    fn name(&self) -> &'static str {
        "QueryTypeFilter"
    }

    async fn transform(&mut self, state: &mut ChainState<'_>) -> Result<Vec<Message>> {
        if state.requests.iter().all(|r| self.allows(r)) {
            return state.call_next_transform().await;
        }
        // Keep each filtered request's error reply at its position.
        let requests = std::mem::take(&mut state.requests);
        let mut slots: Vec<Option<Message>> = Vec::with_capacity(requests.len());
        for request in requests {
            if self.allows(&request) {
                slots.push(None);
                state.requests.push(request);
            } else {
                slots.push(Some(Message::valkey_error_to(&request, FILTERED)));
            }
        }
        let mut downstream = if state.requests.is_empty() {
            Vec::new().into_iter()
        } else {
            state.call_next_transform().await?.into_iter()
        };
        let mut responses = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Some(error) => responses.push(error),
                None => responses.extend(downstream.next()),
            }
        }
        // Unsolicited messages follow the responses.
        responses.extend(downstream);
        Ok(responses)
    }
}
