//! DebugPrinter: logs every request and response at INFO, then passes them on.
//!
//! ```yaml
//! - DebugPrinter
//! ```

use crate::chain::{BuildContext, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugPrinterConfig {}

impl TransformConfig for DebugPrinterConfig {
    fn name(&self) -> &'static str {
        "DebugPrinter"
    }
    fn is_terminating(&self) -> bool {
        false
    }
    fn protocols(&self) -> &'static [Protocol] {
        &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka]
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        Ok(Box::new(DebugPrinterBuilder))
    }
}

struct DebugPrinterBuilder;

impl TransformBuilder for DebugPrinterBuilder {
    fn build(&self) -> Box<dyn Transform> {
        Box::new(DebugPrinter)
    }
}

pub struct DebugPrinter;

fn describe(m: &mut Message) -> String {
    match m.frame() {
        Ok(frame) => format!("{frame:?}"),
        Err(e) => format!("<unparseable: {e}>"),
    }
}

#[async_trait(?Send)]
impl Transform for DebugPrinter {
    fn name(&self) -> &'static str {
        "DebugPrinter"
    }

    async fn transform(&mut self, state: &mut ChainState<'_>) -> Result<Vec<Message>> {
        for request in &mut state.requests {
            tracing::info!("Request: {}", describe(request));
        }
        let mut responses = state.call_next_transform().await?;
        for response in &mut responses {
            tracing::info!("Response: {}", describe(response));
        }
        Ok(responses)
    }
}
