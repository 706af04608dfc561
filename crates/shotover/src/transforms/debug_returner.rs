//! DebugReturner: drops every request and answers each with a configured response, or
//! fails the chain on purpose.
//!
//! ```yaml
//! - DebugReturner:
//!     Valkey: "42"      # every request gets the bulk string "42"
//! - DebugReturner: Fail # every batch fails; clients get error replies
//! ```

use crate::chain::{BuildContext, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Frame, Message, Protocol};
use anyhow::{bail, Result};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use shotover_protocols::valkey;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DebugReturnerConfig {
    /// Answer with this bulk string.
    Valkey(String),
    /// Fail every batch.
    Fail,
}

impl TransformConfig for DebugReturnerConfig {
    fn name(&self) -> &'static str {
        "DebugReturner"
    }
    fn is_terminating(&self) -> bool {
        true
    }
    fn protocols(&self) -> &'static [Protocol] {
        &[Protocol::Valkey]
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        Ok(Box::new(self.clone()))
    }
}

impl TransformBuilder for DebugReturnerConfig {
    fn build(&self) -> Box<dyn Transform> {
        Box::new(DebugReturner {
            reply: match self {
                DebugReturnerConfig::Valkey(s) => Some(Bytes::from(s.clone())),
                DebugReturnerConfig::Fail => None,
            },
        })
    }
}

pub struct DebugReturner {
    reply: Option<Bytes>,
}

#[async_trait(?Send)]
impl Transform for DebugReturner {
    fn name(&self) -> &'static str {
        "DebugReturner"
    }

    async fn transform(&mut self, state: &mut ChainState<'_>) -> Result<Vec<Message>> {
        let Some(reply) = &self.reply else {
            bail!("Intentional fail");
        };
        Ok(state
            .requests
            .iter()
            .map(|r| Message::response_to(r, Frame::Valkey(valkey::frame::bulk(reply.clone()))))
            .collect())
    }
}
