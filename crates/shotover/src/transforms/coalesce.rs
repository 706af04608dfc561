//! Coalesce: holds requests back and sends them down the chain in larger batches.
//!
//! ```yaml
//! - Coalesce:
//!     flush_when_buffered_message_count: 2000
//!     flush_when_millis_since_last_flush: 10000
//! ```
//!
//! A flush happens when the buffer holds `flush_when_buffered_message_count` requests, or
//! when a request arrives `flush_when_millis_since_last_flush` after the last flush. So that
//! no request waits forever, the buffer is also flushed when that time passes with no new
//! request, and whenever the connection runs the chain with an empty batch (pushed
//! messages, or the connection closing). Held requests are answered later, in order.
//! With only the count set, a client that waits for each reply before sending the next
//! request waits until enough other requests arrive on its connection.

use crate::chain::{BuildContext, ChainResult, ChainState, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol};
use crate::rt::Timer;
use anyhow::{bail, Result};
use async_trait::async_trait;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceConfig {
    /// Flush once this many requests are held. Default: no count limit.
    #[serde(default)]
    pub flush_when_buffered_message_count: Option<usize>,
    /// Flush once this many milliseconds have passed since the last flush. Default: no
    /// time limit.
    #[serde(default)]
    pub flush_when_millis_since_last_flush: Option<u64>,
}

impl TransformConfig for CoalesceConfig {
    const NAME: &'static str = "Coalesce";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Valkey, Protocol::Cassandra, Protocol::Kafka];
    fn validate(&mut self) -> Result<()> {
        match (self.flush_when_buffered_message_count, self.flush_when_millis_since_last_flush) {
            (None, None) => bail!(
                "set flush_when_buffered_message_count, flush_when_millis_since_last_flush or both: without either Coalesce would never flush"
            ),
            (Some(0), _) => bail!("flush_when_buffered_message_count must be at least 1"),
            (_, Some(0)) => bail!("flush_when_millis_since_last_flush must be at least 1"),
            _ => Ok(()),
        }
    }
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let count = self.flush_when_buffered_message_count;
        let interval = self.flush_when_millis_since_last_flush.map(Duration::from_millis);
        Ok(Box::new(move || Coalesce { count, interval, buffer: Vec::new(), last_flush: Instant::now(), timer: None }))
    }
}

pub struct Coalesce {
    count: Option<usize>,
    interval: Option<Duration>,
    buffer: Vec<Message>,
    last_flush: Instant,
    /// Armed while requests are held and a time limit is set: fires at the flush deadline.
    timer: Option<Timer>,
}

impl Coalesce {
    fn due(&self) -> bool {
        self.count.is_some_and(|c| self.buffer.len() >= c)
            || self.interval.is_some_and(|i| self.last_flush.elapsed() >= i)
    }
}

#[async_trait(?Send)]
impl Transform for Coalesce {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        // An empty batch asks for everything held (and carries pushed messages up); so does
        // a batch that must be answered in full.
        let flush_all = state.requests.is_empty() || state.complete;
        self.buffer.append(&mut state.requests);
        if !flush_all && !self.due() {
            if let (Some(interval), None) = (self.interval, &self.timer) {
                self.timer = Some(Timer::new(interval.saturating_sub(self.last_flush.elapsed())));
            }
            return Ok(Vec::new());
        }
        state.requests = std::mem::take(&mut self.buffer);
        self.last_flush = Instant::now();
        self.timer = None;
        state.call_next_transform().await
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.timer {
            Some(timer) if !self.buffer.is_empty() => Pin::new(timer).poll(cx).map(|_| ()),
            _ => Poll::Pending,
        }
    }
}
