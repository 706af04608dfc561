//! The command line shared by `shotover-proxy` and custom builds of it.
//!
//! A custom build registers its own transforms and hands over to [`run_main`]:
//!
//! ```no_run
//! let mut registry = shotover::transforms::registry();
//! // registry.register::<my_crate::MyTransformConfig>();
//! shotover::cli::run_main(registry);
//! ```

use crate::config::topology::TransformRegistry;
use crate::logging::LogFormat;
use crate::runner::{run, Options};
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// A thread-per-core L7 proxy for Valkey/Redis, Cassandra and Kafka.
#[derive(Debug, Parser)]
#[command(
    name = "shotover-proxy",
    version,
    about = "A thread-per-core L7 data-layer proxy for Valkey/Redis, Cassandra and Kafka, configured by topology.yaml and config.yaml"
)]
pub struct Cli {
    /// Path of the topology file: sources and their transform chains.
    #[arg(long, default_value = "config/topology.yaml")]
    pub topology_file: PathBuf,
    /// Path of the configuration file: logging, observability, cores.
    #[arg(long, default_value = "config/config.yaml")]
    pub config_file: PathBuf,
    /// Log line format.
    #[arg(long, value_enum, default_value = "human")]
    pub log_format: Format,
    /// CPUs that run worker cores, e.g. `0`, `0-3` or `0,2`. Default: every available CPU.
    #[arg(long)]
    pub worker_cores: Option<String>,
    /// CPU for the control thread, which serves the observability interface. Default: unpinned.
    #[arg(long)]
    pub control_core: Option<usize>,
    /// Unix socket path for hot reload. If an instance serves this path, take over its
    /// listening sockets and ask it to shut down gradually; then serve the path ourselves.
    #[arg(long)]
    pub hotreload_socket: Option<PathBuf>,
    /// Seconds over which the old instance closes its connections after a hot reload.
    #[arg(long, default_value_t = 60)]
    pub hotreload_gradual_shutdown_seconds: u64,
}

/// Parses the command line, runs the proxy with `registry` and exits with its exit code.
pub fn run_main(registry: TransformRegistry) -> ! {
    let cli = Cli::parse();
    let options = Options {
        config_file: cli.config_file,
        topology_file: cli.topology_file,
        log_format: match cli.log_format {
            Format::Human => LogFormat::Human,
            Format::Json => LogFormat::Json,
        },
        worker_cores: cli.worker_cores,
        control_core: cli.control_core,
        hotreload_socket: cli.hotreload_socket,
        hotreload_gradual_shutdown: std::time::Duration::from_secs(cli.hotreload_gradual_shutdown_seconds),
    };
    std::process::exit(run(options, registry));
}

/// Registers a custom transform: `import_transform!(registry, MyConfig)` makes
/// `- <MyConfig::NAME>: {...}` in topology.yaml deserialize into `MyConfig`. The same as
/// `registry.register::<MyConfig>()`.
#[macro_export]
macro_rules! import_transform {
    ($registry:expr, $config:ty) => {
        $registry.register::<$config>()
    };
}
