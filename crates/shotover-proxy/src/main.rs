//! The `shotover-proxy` binary: command line, then [`shotover::runner::run`].

use clap::{Parser, ValueEnum};
use shotover::logging::LogFormat;
use shotover::runner::{run, Options};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

/// A thread-per-core L7 proxy for Valkey/Redis.
#[derive(Debug, Parser)]
#[command(name = "shotover-proxy", version, about)]
struct Cli {
    /// Path of the topology file: sources and their transform chains.
    #[arg(long, default_value = "config/topology.yaml")]
    topology_file: PathBuf,
    /// Path of the configuration file: logging, observability, cores.
    #[arg(long, default_value = "config/config.yaml")]
    config_file: PathBuf,
    /// Log line format.
    #[arg(long, value_enum, default_value = "human")]
    log_format: Format,
    /// CPUs that run worker cores, e.g. `0`, `0-3` or `0,2`. Default: every available CPU.
    #[arg(long)]
    worker_cores: Option<String>,
    /// CPU for the control thread, which serves the observability interface. Default: unpinned.
    #[arg(long)]
    control_core: Option<usize>,
}

fn main() {
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
    };
    std::process::exit(run(options, shotover::transforms::registry()));
}
