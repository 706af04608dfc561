//! Worker cores and the main thread's signal wait.
//!
//! Each worker CPU runs one pinned glommio `LocalExecutor`. It receives its own listening
//! sockets (one per source) and runs the per-core factory with them. The main thread keeps
//! nothing on the data path: it waits for SIGTERM/SIGINT and then raises a stop flag that
//! every worker polls on a timer, so no worker ever blocks on a channel.

use crate::listener::into_glommio;
use crate::shutdown::Shutdown;
use anyhow::{anyhow, Context, Result};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a worker looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// How the workers are laid out.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// One worker per CPU in this list, pinned to it. `None` entries run unpinned.
    pub worker_cpus: Vec<Option<usize>>,
    /// io_uring registered memory per executor. Small, so a non-root service fits the
    /// default memlock limit (glommio needs about 3 × this per executor).
    pub io_memory: usize,
    /// How long a worker spins before parking when idle; zero never spins.
    pub spin_before_park: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { worker_cpus: vec![None], io_memory: 512 * 1024, spin_before_park: Duration::ZERO }
    }
}

/// What one worker core is given.
pub struct WorkerContext {
    /// Worker index, 0-based, in the order of `worker_cpus`.
    pub core: usize,
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// One listener per source, in the order the sources were bound.
    pub listeners: Vec<glommio::net::TcpListener>,
    /// Triggered when the process is asked to stop.
    pub shutdown: Shutdown,
}

/// Builds a worker's main future. Called once on each worker thread; the future should stop
/// accepting when `shutdown` triggers, drain, and return.
pub type WorkerFactory = Arc<dyn Fn(WorkerContext) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// The running worker threads.
pub struct Workers {
    handles: Vec<ExecutorJoinHandle<()>>,
    stop: Arc<AtomicBool>,
    /// Workers still running; each decrements on exit, panics included.
    running: Arc<AtomicUsize>,
}

/// Decrements the running count when a worker thread ends, however it ends.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Workers {
    /// Starts one executor per entry of `config.worker_cpus`; `listeners[core][source]`.
    pub fn start(config: &RuntimeConfig, listeners: Vec<Vec<OwnedFd>>, factory: WorkerFactory) -> Result<Workers> {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for (core, (cpu, fds)) in config.worker_cpus.iter().copied().zip(listeners).enumerate() {
            let placement = match cpu {
                Some(cpu) => Placement::Fixed(cpu),
                None => Placement::Unbound,
            };
            let mut builder = LocalExecutorBuilder::new(placement)
                .name(&format!("worker-{core}"))
                .io_memory(config.io_memory)
                .ring_depth(256);
            if !config.spin_before_park.is_zero() {
                builder = builder.spin_before_park(config.spin_before_park);
            }
            let factory = factory.clone();
            let stop = stop.clone();
            running.fetch_add(1, Ordering::AcqRel);
            let alive = Running(running.clone());
            let handle = builder
                .spawn(move || async move {
                    let _alive = alive;
                    let shutdown = Shutdown::new();
                    let watcher = glommio::spawn_local(watch_stop(stop, shutdown.clone()));
                    let listeners = fds.into_iter().map(into_glommio).collect();
                    factory(WorkerContext { core, cpu, listeners, shutdown }).await;
                    drop(watcher);
                })
                .map_err(|e| anyhow!("cannot start worker {core} on CPU {cpu:?}: {e}"))?;
            handles.push(handle);
        }
        Ok(Workers { handles, stop, running })
    }

    /// Asks every worker to stop accepting and drain.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits for every worker to finish. Returns false if one panicked.
    pub fn join(self) -> bool {
        let mut ok = true;
        for h in self.handles {
            ok &= h.join().is_ok();
        }
        ok
    }

    /// True once every worker thread has ended.
    pub fn all_finished(&self) -> bool {
        self.running.load(Ordering::Acquire) == 0
    }

    /// True once any worker thread has ended (for example after a panic).
    pub fn any_finished(&self) -> bool {
        self.running.load(Ordering::Acquire) < self.handles.len()
    }
}

async fn watch_stop(stop: Arc<AtomicBool>, shutdown: Shutdown) {
    while !stop.load(Ordering::Acquire) {
        glommio::timer::sleep(STOP_POLL).await;
    }
    shutdown.trigger();
}

/// Blocks SIGTERM and SIGINT in the calling thread. Call before starting any thread so that
/// every thread inherits the mask and only [`wait_for_signal`] receives them.
pub fn block_stop_signals() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("cannot block SIGTERM/SIGINT")?;
    Ok(())
}

/// Waits for SIGTERM or SIGINT, polling `give_up` every 100 ms (returns `None` when it
/// says true, e.g. because a worker died).
pub fn wait_for_signal(give_up: impl Fn() -> bool) -> Option<&'static str> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::time::TimeSpec;
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    loop {
        let timeout = TimeSpec::from_duration(Duration::from_millis(100));
        match sigtimedwait(&set, &timeout) {
            Some(Signal::SIGTERM) => return Some("SIGTERM"),
            Some(Signal::SIGINT) => return Some("SIGINT"),
            _ if give_up() => return None,
            _ => {}
        }
    }
}

fn sigtimedwait(
    set: &nix::sys::signal::SigSet,
    timeout: &nix::sys::time::TimeSpec,
) -> Option<nix::sys::signal::Signal> {
    // SAFETY: sigtimedwait is given a valid signal set and timespec owned by the caller and a
    // null siginfo pointer, which the call permits; nix has no wrapper with a timeout.
    let signo = unsafe { nix::libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), timeout.as_ref()) };
    nix::sys::signal::Signal::try_from(signo).ok()
}
