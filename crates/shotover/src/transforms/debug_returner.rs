//! DebugReturner: drops every request and answers each with a configured response, or
//! fails the chain on purpose.
//!
//! ```yaml
//! - DebugReturner:
//!     Valkey: "42"      # every request gets the bulk string "42"
//! - DebugReturner: Fail # every batch fails; clients get error replies
//! ```

use crate::chain::{BuildContext, ChainError, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Frame, Message, Protocol};
use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use shotover_protocols::valkey;

#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawDebugReturner")]
pub enum DebugReturnerConfig {
    /// Answer with this bulk string.
    Valkey(String),
    /// Fail every batch.
    Fail,
}

/// The YAML forms: `Fail`, or a map with one protocol key. (The YAML library reads enums
/// only from `!Tag` syntax, so the guide's `Valkey: "42"` form is read here.)
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDebugReturner {
    Name(String),
    Map(std::collections::BTreeMap<String, String>),
}

impl TryFrom<RawDebugReturner> for DebugReturnerConfig {
    type Error = String;
    fn try_from(raw: RawDebugReturner) -> Result<Self, String> {
        const EXPECTED: &str = "expected `Fail` or `Valkey: <response>`";
        match raw {
            RawDebugReturner::Name(name) if name == "Fail" => Ok(DebugReturnerConfig::Fail),
            RawDebugReturner::Name(name) => Err(format!("unknown variant `{name}`, {EXPECTED}")),
            RawDebugReturner::Map(map) if map.len() == 1 => match map.into_iter().next() {
                Some((key, value)) if key == "Valkey" => Ok(DebugReturnerConfig::Valkey(value)),
                Some((key, _)) => Err(format!("unknown variant `{key}`, {EXPECTED}")),
                None => Err(EXPECTED.into()),
            },
            RawDebugReturner::Map(_) => Err(EXPECTED.into()),
        }
    }
}

impl TransformConfig for DebugReturnerConfig {
    const NAME: &'static str = "DebugReturner";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    /// `Valkey: <text>` answers with a Valkey bulk string, so only Valkey chains may use it.
    fn protocols(&self) -> &'static [Protocol] {
        match self {
            DebugReturnerConfig::Valkey(_) => &[Protocol::Valkey],
            // A failed chain gets each protocol's own error answer from its source.
            DebugReturnerConfig::Fail => Self::PROTOCOLS,
        }
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let reply = match self {
            DebugReturnerConfig::Valkey(s) => Some(Bytes::from(s.clone())),
            DebugReturnerConfig::Fail => None,
        };
        Ok(Box::new(move || DebugReturner { reply: reply.clone() }))
    }
}

pub struct DebugReturner {
    reply: Option<Bytes>,
}

#[async_trait(?Send)]
impl Transform for DebugReturner {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        let Some(reply) = &self.reply else {
            // Nothing goes upstream from here: the client may send the requests again.
            return Err(ChainError::proxy("Intentional fail").retry_safe());
        };
        Ok(state
            .requests
            .iter()
            .map(|r| Message::response_to(r, Frame::Valkey(valkey::frame::bulk(reply.clone()))))
            .collect())
    }
}
