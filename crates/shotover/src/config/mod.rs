//! Configuration: `config.yaml` (process settings) and `topology.yaml` (sources and chains).
//!
//! Both are parsed, then validated. Every error names the file, the YAML path (for example
//! `sources[0].Valkey.chain[2]`) and what is wrong, and startup stops with exit code 1.
//!
//! - [`Config`] reads config.yaml.
//! - [`topology`] reads topology.yaml, with the transform registry that custom builds extend.

pub mod topology;
mod yaml;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use shotover_executor::placement::PlacementMode;
use std::fmt;
use std::path::Path;

pub use topology::{SourceConfig, Topology, ValkeySourceConfig};

/// A configuration error: file, YAML path and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Joins YAML path segments: `sources[0]` + `Valkey` → `sources[0].Valkey`.
pub(crate) fn join_path(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => base.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

/// Deserializes `value` as `T`, reporting errors at `base` + the path inside `value`.
pub(crate) fn from_value<T: DeserializeOwned>(
    file: &str,
    base: &str,
    value: serde_yaml_ng::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| ConfigError {
        file: file.into(),
        path: join_path(base, &e.path().to_string()),
        reason: e.inner().to_string(),
    })
}

/// Reads a YAML file into a generic value; syntax errors carry the line and column.
/// `is_transform` names the transforms the topology's repair applies to (see [`yaml`]).
pub(crate) fn read_yaml(path: &Path, is_transform: &dyn Fn(&str) -> bool) -> Result<serde_yaml_ng::Value, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        path: String::new(),
        reason: format!("cannot read the file: {e}"),
    })?;
    yaml::parse(&file, &text, is_transform)
}

/// config.yaml: settings of the whole process.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log filter in env_filter syntax, e.g. `info, shotover=debug`. Default `info`.
    #[serde(default = "default_log_level")]
    pub main_log_level: String,
    /// `IP:port` of the metrics and `/filter` HTTP interface. Absent: no interface.
    #[serde(default)]
    pub observability_interface: Option<String>,
    /// CPUs that run worker cores, as a list such as `0-3` or `0,2`. Default: every CPU
    /// this process may use. `--worker-cores` overrides it.
    #[serde(default)]
    pub worker_cores: Option<String>,
    /// CPU for the control core (metrics, signals). Default: unpinned.
    /// `--control-core` overrides it.
    #[serde(default)]
    pub control_core: Option<usize>,
    /// Which worker core serves a new connection: `adaptive` (default), the cores whose CPUs
    /// the rest of the box leaves room on; `kernel`, the core whose listener the kernel's
    /// SO_REUSEPORT hash chose.
    #[serde(default)]
    pub connection_placement: PlacementMode,
}

fn default_log_level() -> String {
    "info".into()
}

impl Config {
    /// Reads and validates config.yaml.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let value = read_yaml(path, &|_| false)?;
        let value = match value {
            // An empty file means every default.
            serde_yaml_ng::Value::Null => serde_yaml_ng::Value::Mapping(Default::default()),
            v => v,
        };
        let config: Config = from_value(&file, "", value)?;
        if let Some(addr) = &config.observability_interface {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError {
                    file,
                    path: "observability_interface".into(),
                    reason: format!("{addr:?} is not an IP:port address such as 127.0.0.1:9001 or [::1]:9001"),
                });
            }
        }
        if let Err(e) = crate::logging::parse_filter(&config.main_log_level) {
            return Err(ConfigError {
                file,
                path: "main_log_level".into(),
                reason: format!("invalid log filter: {e}"),
            });
        }
        Ok(config)
    }
}
