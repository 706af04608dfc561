//! Startup and shutdown of the whole process. [`run`] reads the files; `start` runs the
//! phases, one function each:
//!
//! 0. Read config.yaml, start logging, read topology.yaml: any error exits 1.
//! 1. `choose_cores`: the worker CPUs and the control CPU.
//! 2. `take_over`: with `--hotreload-socket`, the listeners of the instance running there.
//! 3. Bind every other source's listeners (one per worker core), then `source_states`.
//! 4. Start the control core (tick jobs, `/metrics`, `/filter`), then `start_workers`: a
//!    core that cannot build its chains makes the whole start fail, with the reason.
//! 5. `serve_hot_reload`: after a hot reload, tell the old instance to shut down gradually;
//!    then serve the hot reload socket for the next instance, on the control core.
//! 6. `wait_and_stop`: SIGTERM/SIGINT (drain, exit 0), or the end of our own gradual
//!    shutdown after a newer instance took over (exit 0).

use crate::chain::{BuildContext, ChainBuilder};
use crate::config::topology::TransformRegistry;
use crate::config::{Config, Topology};
use crate::hot_reload::{self, HandedOver};
use crate::logging::{self, LogFormat};
use crate::observability::{http, CoreMetrics, MetricsHub};
use crate::sources::{accept_loop, drain, SourceOnCore, SourceShared};
use crate::systemd;
use anyhow::{anyhow, Context, Result};
use shotover_executor::fd_handoff::{self, ListenerMap};
use shotover_executor::placement::PlacementMode;
use shotover_executor::{control, cores, runtime, ControlHandle, RuntimeConfig, WorkerContext, WorkerFactory, Workers};
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
    /// Unix socket for hot reload: take over from the instance there, then serve it.
    pub hotreload_socket: Option<PathBuf>,
    /// How long the old instance takes to close its connections after a hot reload.
    pub hotreload_gradual_shutdown: Duration,
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
    let (cpus, control_core) = choose_cores(&options, &config)?;
    runtime::block_stop_signals()?;
    let (previous, inherited) = take_over(&options);
    let listeners = hot_reload::assemble(
        &topology.sources.iter().map(|s| s.listen_addr()).collect::<Vec<_>>(),
        cpus.len(),
        inherited,
        options.hotreload_socket.is_some(),
    )?;
    let shared = source_states(&topology, &listeners.addrs)?;
    let hub = MetricsHub::new();
    add_connection_gauge(&hub, shared.clone());
    let control = control::start(control_core).context("cannot start the control core")?;
    if let Some(addr) = &config.observability_interface {
        let addr = addr.parse().map_err(|e| anyhow!("observability_interface {addr:?}: {e}"))?;
        http::start(addr, hub.clone(), set_filter, &control, previous.is_some())?;
    }
    let workers = start_workers(
        &cpus,
        config.connection_placement,
        listeners.per_core,
        Arc::new(topology),
        shared,
        hub,
        &control,
    )?;
    tracing::info!("shotover started with {} worker cores on CPUs {cpus:?}", cpus.len());
    let handed_over = HandedOver::default();
    serve_hot_reload(&options, previous, listeners.handover, &workers, &handed_over, &control);
    Ok(wait_and_stop(&options, workers, &handed_over))
}

/// Phase 1: the worker CPUs and the control CPU, from the command line or config.yaml.
fn choose_cores(options: &Options, config: &Config) -> Result<(Vec<usize>, Option<usize>)> {
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
    Ok((cpus, control_core))
}

/// Phase 2: with `--hotreload-socket`, the running instance there hands us its listeners.
fn take_over(options: &Options) -> (Option<fd_handoff::Client>, ListenerMap) {
    let Some(path) = &options.hotreload_socket else { return (None, ListenerMap::new()) };
    match fd_handoff::connect_to(path) {
        Ok(None) => (None, ListenerMap::new()),
        Ok(Some(client)) => match client.request_listeners() {
            Ok(map) => {
                tracing::info!("hot reload: received {} listening sockets", map.values().map(Vec::len).sum::<usize>());
                (Some(client), map)
            }
            Err(e) => {
                tracing::warn!("hot reload: the running instance did not hand over its listeners: {e:#}");
                (None, ListenerMap::new())
            }
        },
        Err(e) => {
            tracing::warn!("hot reload: {e:#}; starting without taking over");
            (None, ListenerMap::new())
        }
    }
}

/// Phase 3: what every core's accept loops share about each source, once its listeners are
/// bound (a port in use is a startup error before any core runs).
fn source_states(topology: &Topology, addrs: &[std::net::SocketAddr]) -> Result<Vec<Arc<SourceShared>>> {
    let mut shared = Vec::new();
    for (v, addr) in topology.sources.iter().zip(addrs) {
        tracing::info!("{} source {:?} listening on {addr}", v.protocol, v.name);
        shared.push(Arc::new(SourceShared {
            listen_addr: *addr,
            protocol: v.protocol,
            transport: v.transport,
            name: v.name.clone(),
            connection_limit: v.connection_limit,
            hard_connection_limit: v.hard_connection_limit,
            idle_timeout: v.timeout.map(Duration::from_secs),
            max_request_bytes: v.max_request_bytes,
            max_reply_backlog_bytes: v.max_reply_backlog_bytes,
            tls: v.tls.as_ref().map(|t| t.build()).transpose().with_context(|| format!("source {:?}: tls", v.name))?,
            open: AtomicUsize::new(0),
        }));
    }
    Ok(shared)
}

fn add_connection_gauge(hub: &MetricsHub, sources: Vec<Arc<SourceShared>>) {
    hub.add_gauge(
        "shotover_available_connections_count",
        "How many more connections the source accepts before new ones are rejected or wait",
        &["source"],
        Box::new(move || {
            // Sources may share a name (the guide's own example does): their values add up.
            let mut by_name: Vec<(Vec<String>, i64)> = Vec::new();
            for s in &sources {
                let available = s.connection_limit.saturating_sub(s.open.load(Ordering::Acquire)) as i64;
                match by_name.iter_mut().find(|(name, _)| name.first() == Some(&s.name)) {
                    Some((_, total)) => *total += available,
                    None => by_name.push((vec![s.name.clone()], available)),
                }
            }
            by_name
        }),
    );
}

/// Phase 4: one pinned worker per CPU. Any core that cannot build its chains makes this a
/// startup error, with the reason.
fn start_workers(
    cpus: &[usize],
    placement: PlacementMode,
    listeners: Vec<Vec<(usize, std::os::fd::OwnedFd)>>,
    topology: Arc<Topology>,
    shared: Vec<Arc<SourceShared>>,
    hub: Arc<MetricsHub>,
    control: &ControlHandle,
) -> Result<Workers> {
    let control = control.clone();
    let factory: WorkerFactory = Arc::new(move |ctx: WorkerContext| {
        Box::pin(run_worker(ctx, topology.clone(), shared.clone(), hub.clone(), control.clone()))
    });
    let runtime_config =
        RuntimeConfig { worker_cpus: cpus.iter().map(|c| Some(*c)).collect(), placement, ..Default::default() };
    let workers = Workers::start(&runtime_config, listeners, factory)?;
    if let Err(e) = workers.wait_ready(Duration::from_secs(60)) {
        workers.stop();
        workers.join();
        return Err(e);
    }
    Ok(workers)
}

/// Phase 5: after a hot reload, tell the instance we took over to close its connections,
/// and serve the socket for the next instance once that one has gone.
fn serve_hot_reload(
    options: &Options,
    previous: Option<fd_handoff::Client>,
    handover: ListenerMap,
    workers: &Workers,
    handed_over: &HandedOver,
    control: &ControlHandle,
) {
    let Some(path) = options.hotreload_socket.clone() else {
        systemd::notify("READY=1");
        return;
    };
    if let Ok(mut slot) = handed_over.listeners.lock() {
        *slot = Some(handover);
    }
    let (commands, slot) = (workers.commands(), handed_over.clone());
    match previous {
        Some(client) => {
            // Until the old instance exits, its workers share our CPUs: placement would take
            // them for the rest of the box (released in serve_after_exit).
            commands.hold_placement(true);
            let seconds = options.hotreload_gradual_shutdown.as_secs();
            if let Err(e) = client.request_gradual_shutdown(seconds) {
                tracing::warn!("hot reload: the old instance did not accept the shutdown request: {e:#}");
            }
            systemd::notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
            hot_reload::serve_after_exit(client, path, commands, slot, control);
        }
        None => {
            hot_reload::start_server(&path, commands, slot, control);
            systemd::notify("READY=1");
        }
    }
}

/// The exit code after a worker core stopped or panicked while serving: not 1 (bad
/// configuration, which a restart would not cure), so that systemd's `Restart=on-failure`
/// with `RestartPreventExitStatus=1` starts the service again.
const EXIT_CORE_FAILED: i32 = 3;

/// Phase 6: wait for SIGTERM/SIGINT (drain, exit 0), or for our own gradual shutdown to
/// finish after a newer instance took over (exit 0). Returns the exit code.
fn wait_and_stop(options: &Options, workers: Workers, handed_over: &HandedOver) -> i32 {
    // After a hand-over the cores finish one by one as their connections close: wait for
    // all of them. Otherwise a core that ends means something went wrong.
    let handed = || handed_over.handed_over.lock().is_ok_and(|h| h.is_some());
    let signal = runtime::wait_for_signal(|| if handed() { workers.all_finished() } else { workers.any_finished() });
    workers.stop();
    // Close our copies of the listeners too, so that the ports stop listening now.
    if let Ok(mut copies) = handed_over.listeners.lock() {
        copies.take();
    }
    let handed = handed_over.handed_over.lock().ok().and_then(|mut h| h.take());
    if handed.is_none() {
        // Not after a hand-over: the new instance is the service now, and systemd follows it.
        systemd::notify("STOPPING=1");
    }
    match (signal, handed) {
        (None, Some((path, peer))) => {
            let clean = workers.join();
            tracing::info!("hot reload: every connection is closed; exiting");
            // Remove the socket file, then close the connection the new instance waits on.
            let _ = std::fs::remove_file(path);
            drop(peer);
            if clean {
                0
            } else {
                EXIT_CORE_FAILED
            }
        }
        (Some(name), handed) => {
            tracing::info!("received {name}: no longer accepting, draining connections");
            // A second signal while draining means "stop now".
            if let Some(again) = runtime::wait_for_signal(|| workers.all_finished()) {
                tracing::warn!("received {again} while draining: exiting without waiting for connections");
                return 1;
            }
            let clean = workers.join();
            if let Some((path, peer)) = handed {
                let _ = std::fs::remove_file(path);
                drop(peer);
            }
            if let Some(path) =
                options.hotreload_socket.as_ref().filter(|_| handed_over.serving.load(Ordering::Acquire))
            {
                let _ = std::fs::remove_file(path);
            }
            tracing::info!("shotover stopped");
            if clean {
                0
            } else {
                EXIT_CORE_FAILED
            }
        }
        (None, None) => {
            tracing::error!("a worker core stopped unexpectedly (see the panic above, if any); shutting down");
            workers.join();
            EXIT_CORE_FAILED
        }
    }
}

async fn run_worker(
    mut ctx: WorkerContext,
    topology: Arc<Topology>,
    shared: Vec<Arc<SourceShared>>,
    hub: Arc<MetricsHub>,
    control: ControlHandle,
) {
    let metrics = CoreMetrics::new(ctx.core, &hub.core_registry());
    let base = BuildContext::new(metrics.clone(), control);
    let mut tasks = Vec::new();
    let mut chains = Vec::with_capacity(topology.sources.len());
    for (source, shared) in topology.sources.iter().zip(&shared) {
        let v = source;
        // The address actually bound (the port chosen, for port 0).
        let base = BuildContext { listen_addr: Some(shared.listen_addr), ..base.clone() };
        match ChainBuilder::new(&v.name, &v.chain, &base) {
            Ok(c) => chains.push(Rc::new(c)),
            Err(e) => {
                ctx.fail(format!("cannot build the chain of source {:?} on core {}: {e:#}", v.name, ctx.core));
                return;
            }
        }
    }
    let on_core: Vec<Rc<SourceOnCore>> = chains
        .iter()
        .zip(&shared)
        .map(|(chain, shared)| {
            Rc::new(SourceOnCore::new(shared.clone(), chain.clone(), metrics.clone(), ctx.shutdown.clone()))
        })
        .collect();
    let Some(handoff) = ctx.handoff.take() else {
        ctx.fail(format!("core {} was started without its handoff channels", ctx.core));
        return;
    };
    let sources = on_core.clone();
    let (placer, arrivals) = handoff.start(move |handed| match sources.get(handed.source) {
        Some(on) => on.serve(handed.stream.bind()),
        // Every core has every source: not reached.
        None => drop(handed.stream.bind()),
    });
    let placer = Rc::new(placer);
    for (index, listener) in std::mem::take(&mut ctx.listeners) {
        let Some(on) = on_core.get(index) else { continue };
        tasks.push(crate::rt::spawn_local(accept_loop(
            listener,
            index,
            on.clone(),
            placer.clone(),
            ctx.accept.clone(),
        )));
    }
    ctx.ready();
    for task in tasks {
        task.await;
    }
    // This core accepts no more: close its channels to the other cores, serve what they
    // still hand over until they have closed theirs, then drain every connection here.
    drop(placer);
    arrivals.finish().await;
    drain(&on_core, &ctx.shutdown).await;
}
