//! Startup and shutdown of the whole process.
//!
//! 1. Read config.yaml, start logging, read topology.yaml: any error exits 1.
//! 2. Bind every source's listeners (one per worker core) before anything runs.
//! 3. Start the control core (observability HTTP) and the worker cores.
//! 4. Wait for SIGTERM/SIGINT, then let the cores drain and exit 0.

use crate::chain::ChainBuilder;
use crate::config::topology::TransformRegistry;
use crate::config::{Config, SourceConfig, Topology};
use crate::logging::{self, LogFormat};
use crate::observability::{http, CoreMetrics, MetricsHub};
use crate::sources::{accept_loop, SourceShared};
use anyhow::{anyhow, Context, Result};
use shotover_executor::{cores, listener, runtime, RuntimeConfig, WorkerContext, WorkerFactory, Workers};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the command line chose.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_file: PathBuf,
    pub topology_file: PathBuf,
    pub log_format: LogFormat,
    /// Overrides `worker_cores` of config.yaml.
    pub worker_cores: Option<String>,
    /// Overrides `control_core` of config.yaml.
    pub control_core: Option<usize>,
}

/// Runs the proxy until a stop signal; returns the process exit code.
pub fn run(options: Options, registry: TransformRegistry) -> i32 {
    let config = match Config::load(&options.config_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return 1;
        }
    };
    let set_filter = match logging::init(&config.main_log_level, options.log_format) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let topology = match Topology::load(&options.topology_file, &registry) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("invalid topology: {e}");
            eprintln!("error: invalid topology: {e}");
            return 1;
        }
    };
    match start(options, config, topology, set_filter) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn start(options: Options, config: Config, topology: Topology, set_filter: http::FilterSetter) -> Result<i32> {
    let cpus = match options.worker_cores.as_ref().or(config.worker_cores.as_ref()) {
        Some(list) => {
            let cpus = cores::parse_cpu_list(list).context("invalid worker cores")?;
            cores::check_available(&cpus).context("invalid worker cores")?;
            cpus
        }
        None => cores::available_cpus(),
    };
    let control_core = options.control_core.or(config.control_core);
    if let Some(cpu) = control_core {
        cores::check_available(&[cpu]).context("invalid control core")?;
    }
    runtime::block_stop_signals()?;

    // Bind everything first: a port in use is a startup error, before any core runs.
    let mut per_core: Vec<Vec<_>> = cpus.iter().map(|_| Vec::new()).collect();
    let mut shared = Vec::new();
    for source in &topology.sources {
        let (addr, fds) = listener::bind_reuseport(source.listen_addr(), cpus.len())
            .with_context(|| format!("source {:?}", source.name()))?;
        for (core, fd) in per_core.iter_mut().zip(fds) {
            core.push(fd);
        }
        let SourceConfig::Valkey(v) = source;
        tracing::info!("source {:?} listening on {addr}", v.name);
        shared.push(Arc::new(SourceShared {
            name: v.name.clone(),
            connection_limit: v.connection_limit,
            hard_connection_limit: v.hard_connection_limit,
            idle_timeout: v.timeout.map(Duration::from_secs),
            tls: v.tls.as_ref().map(|t| t.build()).transpose().with_context(|| format!("source {:?}: tls", v.name))?,
            open: AtomicUsize::new(0),
        }));
    }

    let hub = MetricsHub::new();
    let gauge_sources = shared.clone();
    hub.add_gauge(
        "shotover_available_connections_count",
        "How many more connections the source accepts before new ones are rejected or wait",
        &["source"],
        Box::new(move || {
            // Sources may share a name (the guide's own example does): their values add up.
            let mut by_name: Vec<(Vec<String>, i64)> = Vec::new();
            for s in &gauge_sources {
                let available = s.connection_limit.saturating_sub(s.open.load(Ordering::Acquire)) as i64;
                match by_name.iter_mut().find(|(name, _)| name.first() == Some(&s.name)) {
                    Some((_, total)) => *total += available,
                    None => by_name.push((vec![s.name.clone()], available)),
                }
            }
            by_name
        }),
    );
    if let Some(addr) = &config.observability_interface {
        let addr = addr.parse().map_err(|e| anyhow!("observability_interface {addr:?}: {e}"))?;
        http::start(addr, hub.clone(), set_filter, control_core)?;
        tracing::info!("observability interface on http://{addr}/metrics");
    }

    let topology = Arc::new(topology);
    let factory_hub = hub.clone();
    let factory: WorkerFactory = Arc::new(move |ctx: WorkerContext| {
        let topology = topology.clone();
        let shared = shared.clone();
        let hub = factory_hub.clone();
        Box::pin(run_worker(ctx, topology, shared, hub))
    });
    let runtime_config = RuntimeConfig { worker_cpus: cpus.iter().map(|c| Some(*c)).collect(), ..Default::default() };
    let workers = Workers::start(&runtime_config, per_core, factory)?;
    tracing::info!("shotover started with {} worker cores on CPUs {cpus:?}", cpus.len());

    let signal = runtime::wait_for_signal(|| workers.any_finished());
    workers.stop();
    match signal {
        Some(name) => {
            tracing::info!("received {name}: no longer accepting, draining connections");
            // A second signal while draining means "stop now".
            if let Some(again) = runtime::wait_for_signal(|| workers.all_finished()) {
                tracing::warn!("received {again} while draining: exiting without waiting for connections");
                return Ok(1);
            }
            let clean = workers.join();
            tracing::info!("shotover stopped");
            Ok(if clean { 0 } else { 1 })
        }
        None => {
            tracing::error!("a worker core stopped unexpectedly; shutting down");
            workers.join();
            Ok(1)
        }
    }
}

async fn run_worker(ctx: WorkerContext, topology: Arc<Topology>, shared: Vec<Arc<SourceShared>>, hub: Arc<MetricsHub>) {
    let metrics = CoreMetrics::new(ctx.core, &hub.core_registry());
    let mut tasks = Vec::new();
    for ((source, listener), shared) in topology.sources.iter().zip(ctx.listeners).zip(shared) {
        let SourceConfig::Valkey(v) = source;
        let chain = match ChainBuilder::new(&v.name, &v.chain, &metrics) {
            Ok(c) => Rc::new(c),
            Err(e) => {
                tracing::error!("cannot build the chain of source {:?} on core {}: {e:#}", v.name, ctx.core);
                std::process::exit(1);
            }
        };
        tasks.push(glommio::spawn_local(accept_loop(listener, shared, chain, metrics.clone(), ctx.shutdown.clone())));
    }
    for task in tasks {
        task.await;
    }
}
