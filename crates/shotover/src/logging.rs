//! Logging: tracing with a filter that `/filter` can change while running.

use crate::observability::http::FilterSetter;
use anyhow::{anyhow, Result};
use std::io::IsTerminal;
use std::sync::Arc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Parses a filter, allowing spaces around the commas (`info, shotover=debug`) as the
/// user guide writes them.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    let normalized: Vec<&str> = filter.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    EnvFilter::try_new(normalized.join(",")).map_err(|e| e.to_string())
}

/// Installs the global subscriber with `filter` (env_filter syntax) and returns the
/// function `/filter` uses to replace it.
pub fn init(filter: &str, format: LogFormat) -> Result<FilterSetter> {
    let filter = parse_filter(filter).map_err(|e| anyhow!("invalid main_log_level {filter:?}: {e}"))?;
    let (filter_layer, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter_layer);
    let result = match format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stdout().is_terminal())
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stdout)).try_init()
        }
    };
    result.map_err(|e| anyhow!("cannot install the logger: {e}"))?;
    Ok(Arc::new(move |new: &str| {
        let filter = parse_filter(new)?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// One log line a second, at most, from one call site on one core: for warnings that come at
/// request rate when an upstream is down (every request of every client fails to connect),
/// which would otherwise write hundreds of thousands of lines a minute. The first line after
/// a pause carries `suppressed`, the number of lines left out since the last one.
pub struct RateLimit {
    last: std::cell::Cell<Option<std::time::Instant>>,
    suppressed: std::cell::Cell<u64>,
}

impl RateLimit {
    pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    pub const fn new() -> Self {
        RateLimit { last: std::cell::Cell::new(None), suppressed: std::cell::Cell::new(0) }
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.saturating_duration_since(last) < Self::INTERVAL => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// `tracing::warn!`, limited by a [`RateLimit`] of its own call site and core.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        ::std::thread_local! {
            static LIMIT: $crate::logging::RateLimit = const { $crate::logging::RateLimit::new() };
        }
        match LIMIT.with(|l| l.admit(::std::time::Instant::now())) {
            Some(0) => ::tracing::warn!($($arg)+),
            Some(suppressed) => ::tracing::warn!(suppressed, $($arg)+),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::RateLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn one_line_a_second_then_the_count_of_those_left_out() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        assert_eq!(limit.admit(t0), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(limit.admit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.admit(t0 + Duration::from_millis(1000)), Some(4));
        assert_eq!(limit.admit(t0 + Duration::from_millis(1001)), None);
        assert_eq!(limit.admit(t0 + Duration::from_secs(5)), Some(1));
    }
}
