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
