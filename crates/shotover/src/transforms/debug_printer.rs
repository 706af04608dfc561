//! DebugPrinter: logs every request and response at INFO, then passes them on.
//!
//! ```yaml
//! - DebugPrinter
//! ```

use crate::chain::{BuildContext, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use serde::Deserialize;
use shotover_protocols::kafka::header::request_ids;
use shotover_protocols::kafka::ApiKey;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugPrinterConfig {}

impl TransformConfig for DebugPrinterConfig {
    const NAME: &'static str = "DebugPrinter";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        Ok(Box::new(|| DebugPrinter))
    }
}

pub struct DebugPrinter;

/// A message for the log. Kafka messages are summed up from their header alone: decoding a
/// whole message with `kafka-protocol` trusts its counts, and a crafted one could make it
/// allocate until the process aborts.
fn describe(m: &mut Message, response: bool) -> String {
    if m.protocol() == Protocol::Kafka {
        let raw = m.raw().map(|r| r.as_ref()).unwrap_or_default();
        let correlation = raw.get(4..8).and_then(|b| b.try_into().ok()).map(i32::from_be_bytes);
        return match (response, request_ids(raw)) {
            (false, Ok(ids)) => {
                let key = ApiKey::try_from(ids.api_key).map_or_else(|_| ids.api_key.to_string(), |k| format!("{k:?}"));
                format!(
                    "Kafka {key} v{} request, correlation id {}, {} bytes",
                    ids.api_version,
                    ids.correlation_id,
                    raw.len()
                )
            }
            _ => format!("Kafka response, correlation id {}, {} bytes", correlation.unwrap_or(-1), raw.len()),
        };
    }
    match m.frame() {
        Ok(frame) => format!("{frame:?}"),
        Err(e) => format!("<unparseable: {e}>"),
    }
}

#[async_trait(?Send)]
impl Transform for DebugPrinter {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        for request in &mut state.requests {
            tracing::info!("Request: {}", describe(request, false));
        }
        let mut responses = state.call_next_transform().await?;
        for response in &mut responses {
            tracing::info!("Response: {}", describe(response, true));
        }
        Ok(responses)
    }
}
