//! NullSink (`- NullSink` in topology.yaml): drops every request and answers each with an
//! empty response (a Valkey null, a CQL RESULT Void, a Kafka response of the request's type
//! with its fields at their defaults; none to a Kafka Produce with acks=0). Its
//! configuration is the transform.

use crate::chain::prelude::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullSink {}

impl TransformConfig for NullSink {
    const NAME: &'static str = "NullSink";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn build(&self, _: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        Ok(Box::new(|| NullSink {}))
    }
}

#[async_trait(?Send)]
impl Transform for NullSink {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        Ok(state.requests.iter().filter(|r| r.expects_response()).map(Message::empty_response_to).collect())
    }
}
