//! NullSink: drops every request and answers each with an empty response (a Valkey null,
//! a CQL RESULT Void).
//!
//! ```yaml
//! - NullSink
//! ```

use crate::chain::{BuildContext, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {}

impl TransformConfig for NullSinkConfig {
    const NAME: &'static str = "NullSink";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra];
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        Ok(Box::new(NullSinkBuilder))
    }
}

struct NullSinkBuilder;

impl TransformBuilder for NullSinkBuilder {
    fn build(&self) -> Box<dyn Transform> {
        Box::new(NullSink)
    }
}

pub struct NullSink;

#[async_trait(?Send)]
impl Transform for NullSink {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> Result<Vec<Message>> {
        Ok(state.requests.iter().map(Message::empty_response_to).collect())
    }
}
