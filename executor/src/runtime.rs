//! Worker cores and the main thread's signal wait.
//!
//! Each worker CPU runs one pinned glommio `LocalExecutor`. It receives its own listening
//! sockets and runs the per-core factory with them. The main thread keeps nothing on the
//! data path: it changes a few shared atomics ([`Workers::stop`], [`Workers::pause_accepting`],
//! [`Workers::shutdown_gradually`] …) and wakes every worker's command watcher, so no worker
//! ever blocks on a channel, and an idle worker has no timer to wake it.

use crate::placement::{Handoff, PlacementMode};
use crate::rt::TcpListener;
use crate::shutdown::{AcceptGate, AcceptState, Shutdown};
use anyhow::{anyhow, Context, Result};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the main thread sleeps between looks at the workers when nothing wakes it (a
/// worker that ends wakes it at once, see [`Running`]).
const MAIN_FALLBACK_POLL: Duration = Duration::from_secs(1);
/// The signal a worker that ends sends to the main thread, blocked in every thread like
/// SIGTERM so that only [`wait_for_signal`] takes it.
const WORKER_ENDED: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;
/// How long a core waits, after shutdown starts, for its connections to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Gradual shutdown closes a chunk of connections this often.
pub const CHUNK_INTERVAL: Duration = Duration::from_millis(200);

/// How the workers are laid out.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// One worker per CPU in this list, pinned to it. `None` entries run unpinned.
    pub worker_cpus: Vec<Option<usize>>,
    /// io_uring registered memory per executor: glommio's floor, 64 KiB. Registering pins the
    /// pages, so all of it is resident for the process's life, and a network proxy has no use
    /// for it: socket receives that wait on io_uring take their buffer from the heap once the
    /// pool is used up. It was 512 KiB, half a MiB of the proxy's RSS.
    pub io_memory: usize,
    /// How long a worker spins before parking when idle; zero never spins.
    pub spin_before_park: Duration,
    /// How new connections are spread over the workers.
    pub placement: PlacementMode,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_cpus: vec![None],
            io_memory: 64 * 1024,
            spin_before_park: Duration::ZERO,
            placement: PlacementMode::default(),
        }
    }
}

/// What one worker core is given.
pub struct WorkerContext {
    /// Worker index, 0-based, in the order of `worker_cpus`.
    pub core: usize,
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// This core's listeners, each with the index of its source. A source may have several
    /// on one core (after a hot reload from an instance with more cores).
    pub listeners: Vec<(usize, TcpListener)>,
    /// Asks the core's connections to drain or close.
    pub shutdown: Shutdown,
    /// Whether the core's accept loops accept.
    pub accept: AcceptGate,
    /// Where the connections this core accepts are served, and the way other cores hand
    /// theirs to it: take it and start it with [`Handoff::start`].
    pub handoff: Option<Handoff>,
    ready: Arc<AtomicUsize>,
    failure: Arc<Mutex<Option<String>>>,
}

impl WorkerContext {
    /// Says that this core is fully set up (chains built, accept loops running).
    pub fn ready(&self) {
        self.ready.fetch_add(1, Ordering::AcqRel);
    }

    /// Says why this core cannot serve; the process then stops with that reason (see
    /// [`Workers::wait_ready`]). The factory's future should return after it.
    pub fn fail(&self, reason: String) {
        if let Ok(mut slot) = self.failure.lock() {
            slot.get_or_insert(reason);
        }
    }
}

/// Builds a worker's main future. Called once on each worker thread; the future should stop
/// accepting when `accept` closes, wait for its connections, and return.
pub type WorkerFactory = Arc<dyn Fn(WorkerContext) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// What the main thread asks of every worker. Changing it bumps `generation` and wakes every
/// worker's watcher (a glommio waker may be woken from any thread).
struct Commands {
    generation: AtomicU64,
    watchers: Mutex<Vec<std::task::Waker>>,
    /// Drain everything and stop (SIGTERM/SIGINT).
    stop: AtomicBool,
    /// 0 accepting, 1 paused, 2 closed.
    accept: AtomicU8,
    /// Non-zero: close every connection over this many milliseconds.
    gradual_ms: AtomicU64,
    /// Where new connections go.
    placement: Arc<crate::placement::Placement>,
}

/// The running worker threads.
pub struct Workers {
    handles: Vec<ExecutorJoinHandle<()>>,
    commands: Arc<Commands>,
    /// Workers still running; each decrements on exit, panics included.
    running: Arc<AtomicUsize>,
    ready: Arc<AtomicUsize>,
    failure: Arc<Mutex<Option<String>>>,
}

impl Commands {
    /// Tells every worker to look at the commands again.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(watchers) = self.watchers.lock() {
            watchers.iter().for_each(|w| w.wake_by_ref());
        }
    }

    /// Waits until the generation differs from `seen`, and returns it.
    async fn next_change(&self, seen: u64) -> u64 {
        std::future::poll_fn(|cx| {
            // Register first, then look: a change after the look finds the waker.
            if let Ok(mut watchers) = self.watchers.lock() {
                if !watchers.iter().any(|w| w.will_wake(cx.waker())) {
                    watchers.push(cx.waker().clone());
                }
            }
            let now = self.generation.load(Ordering::Acquire);
            if now != seen {
                std::task::Poll::Ready(now)
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Set by the panic hook when a thread of a worker core panics. A panic in a connection's
/// task unwinds out of glommio's run loop and ends the core's thread, but the task (and a
/// [`Running`] guard with it) may be leaked rather than dropped: the running count alone
/// would then never show the dead core, whose connections hang. The hook also wakes the
/// main thread.
static WORKER_PANICKED: AtomicBool = AtomicBool::new(false);

/// Installs, once, a panic hook that prints the panic as before and then, on a worker
/// core's thread (glommio names them `worker-<core>-<id>`), records it and wakes the main
/// thread.
fn watch_worker_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if std::thread::current().name().is_some_and(|n| n.starts_with("worker-")) {
                WORKER_PANICKED.store(true, Ordering::Release);
                wake_main();
            }
        }));
    });
}

/// Sends [`WORKER_ENDED`] to the process, where the main thread takes it: only where
/// block_stop_signals ran (this thread inherited its mask), for elsewhere, as in unit tests,
/// the signal's default action would end the process.
fn wake_main() {
    let blocked = nix::sys::signal::SigSet::thread_get_mask().is_ok_and(|mask| mask.contains(WORKER_ENDED));
    if blocked {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), WORKER_ENDED);
    }
}

/// True once a thread of a worker core has panicked.
pub fn a_worker_panicked() -> bool {
    WORKER_PANICKED.load(Ordering::Acquire)
}

/// Decrements the running count when a worker thread ends, however it ends, and wakes the
/// main thread to look.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        wake_main();
    }
}

impl Workers {
    /// Starts one executor per entry of `config.worker_cpus`; `listeners[core]` holds that
    /// core's (source index, fd) pairs.
    pub fn start(
        config: &RuntimeConfig,
        listeners: Vec<Vec<(usize, OwnedFd)>>,
        factory: WorkerFactory,
    ) -> Result<Workers> {
        watch_worker_panics();
        crate::memory::return_large_frees_to_the_kernel();
        let spread = Arc::new(crate::placement::Placement::new(config.placement, &config.worker_cpus));
        let commands = Arc::new(Commands {
            generation: AtomicU64::new(0),
            watchers: Mutex::default(),
            stop: AtomicBool::new(false),
            accept: AtomicU8::new(0),
            gradual_ms: AtomicU64::new(0),
            placement: spread.clone(),
        });
        let running = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicUsize::new(0));
        let failure = Arc::new(Mutex::new(None));
        let mut handles = Vec::new();
        let handoffs = crate::placement::handoffs(&spread);
        for (core, ((cpu, fds), handoff)) in config.worker_cpus.iter().copied().zip(listeners).zip(handoffs).enumerate()
        {
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
            let commands = commands.clone();
            let ready = ready.clone();
            let failure = failure.clone();
            running.fetch_add(1, Ordering::AcqRel);
            let alive = Running(running.clone());
            let handle = builder
                .spawn(move || async move {
                    let _alive = alive;
                    let shutdown = Shutdown::new();
                    let accept = AcceptGate::default();
                    let watcher = glommio::spawn_local(watch_commands(commands, shutdown.clone(), accept.clone()));
                    let listeners =
                        fds.into_iter().map(|(source, fd)| (source, TcpListener::from_owned_fd(fd))).collect();
                    let handoff = Some(handoff);
                    factory(WorkerContext { core, cpu, listeners, shutdown, accept, handoff, ready, failure }).await;
                    drop(watcher);
                })
                .map_err(|e| anyhow!("cannot start worker {core} on CPU {cpu:?}: {e}"))?;
            handles.push(handle);
        }
        Ok(Workers { handles, commands, running, ready, failure })
    }

    /// Waits until every worker said it is ready. An error, with the reason, if one failed
    /// (see [`WorkerContext::fail`]), ended first, or `timeout` passed.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        while self.ready.load(Ordering::Acquire) < self.handles.len() {
            // A worker records its failure before it ends, so look at the failure after.
            let ended = self.any_finished();
            if let Some(reason) = self.failure.lock().ok().and_then(|f| f.clone()) {
                return Err(anyhow!(reason));
            }
            if ended {
                return Err(anyhow!("a worker core stopped while starting"));
            }
            if Instant::now() >= until {
                return Err(anyhow!("the worker cores did not start within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Asks every worker to stop accepting and drain.
    pub fn stop(&self) {
        self.commands.accept.store(2, Ordering::Release);
        self.commands.stop.store(true, Ordering::Release);
        self.commands.changed();
    }

    /// A handle for other threads (the hot reload server) to command the workers.
    pub fn commands(&self) -> WorkerCommands {
        WorkerCommands(self.commands.clone())
    }

    /// Waits for every worker to finish. Returns false if one panicked.
    pub fn join(self) -> bool {
        let mut ok = true;
        for h in self.handles {
            ok &= h.join().is_ok();
        }
        ok
    }

    /// True once every worker thread has ended, or one panicked (a panicked core may never
    /// be counted as ended; waiting for it would be waiting forever).
    pub fn all_finished(&self) -> bool {
        self.running.load(Ordering::Acquire) == 0 || a_worker_panicked()
    }

    /// True once any worker thread has ended or panicked.
    pub fn any_finished(&self) -> bool {
        self.running.load(Ordering::Acquire) < self.handles.len() || a_worker_panicked()
    }
}

/// Commands for every worker, usable from any thread.
#[derive(Clone)]
pub struct WorkerCommands(Arc<Commands>);

impl WorkerCommands {
    /// Stops accepting but keeps the listeners, so that accepting can resume.
    pub fn pause_accepting(&self) {
        let _ = self.0.accept.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
        self.0.changed();
    }

    /// Keeps every new connection on the core that accepted it while `held` (see
    /// [`crate::placement::Placement::hold`]).
    pub fn hold_placement(&self, held: bool) {
        self.0.placement.hold(held);
    }

    /// Accepts again after [`WorkerCommands::pause_accepting`].
    pub fn resume_accepting(&self) {
        let _ = self.0.accept.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire);
        self.0.changed();
    }

    /// Drops the listeners and closes every connection in chunks spread over `over`.
    pub fn shutdown_gradually(&self, over: Duration) {
        self.0.accept.store(2, Ordering::Release);
        let ms = u64::try_from(over.min(crate::rt::LONGEST_WAIT).as_millis()).unwrap_or(u64::MAX);
        self.0.gradual_ms.store(ms.max(1), Ordering::Release);
        self.0.changed();
    }
}

async fn watch_commands(commands: Arc<Commands>, shutdown: Shutdown, accept: AcceptGate) {
    let mut gradual_started = false;
    let mut seen = commands.generation.load(Ordering::Acquire);
    loop {
        match commands.accept.load(Ordering::Acquire) {
            0 => accept.set(AcceptState::Accepting),
            1 => accept.set(AcceptState::Paused),
            _ => accept.set(AcceptState::Closed),
        }
        if commands.stop.load(Ordering::Acquire) {
            shutdown.trigger(Instant::now() + DRAIN_TIMEOUT);
            return;
        }
        let gradual_ms = commands.gradual_ms.load(Ordering::Acquire);
        if gradual_ms > 0 && !gradual_started {
            gradual_started = true;
            let over = Duration::from_millis(gradual_ms);
            shutdown.set_deadline(Instant::now() + over + DRAIN_TIMEOUT);
            glommio::spawn_local(close_gradually(shutdown.clone(), over)).detach();
        }
        seen = commands.next_change(seen).await;
    }
}

/// Closes this core's connections in equal chunks every [`CHUNK_INTERVAL`] over `over`:
/// with 1000 connections over 60 s, 4 every 200 ms.
async fn close_gradually(shutdown: Shutdown, over: Duration) {
    let chunks = (over.as_millis() / CHUNK_INTERVAL.as_millis()).max(1) as usize;
    let per_chunk = shutdown.open().div_ceil(chunks).max(1);
    tracing::info!("gradual shutdown: closing {} connections, {per_chunk} every {CHUNK_INTERVAL:?}", shutdown.open());
    loop {
        let closed = shutdown.close_some(per_chunk);
        let left = shutdown.open();
        if closed > 0 {
            tracing::info!("gradual shutdown: closed {closed} connections, {left} left on this core");
        }
        if left == 0 {
            return;
        }
        glommio::timer::sleep(CHUNK_INTERVAL).await;
    }
}

/// SIGTERM, SIGINT and [`WORKER_ENDED`].
fn main_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(WORKER_ENDED);
    set
}

/// Blocks SIGTERM, SIGINT and [`WORKER_ENDED`] in the calling thread. Call before starting any
/// thread so that every thread inherits the mask and only [`wait_for_signal`] receives them.
pub fn block_stop_signals() -> Result<()> {
    main_signals().thread_block().context("cannot block SIGTERM/SIGINT")?;
    Ok(())
}

/// Waits for SIGTERM or SIGINT. Returns `None` when `give_up` says true, e.g. because a
/// worker died: it is asked whenever a worker ends, and every [`MAIN_FALLBACK_POLL`].
pub fn wait_for_signal(give_up: impl Fn() -> bool) -> Option<&'static str> {
    use nix::sys::signal::Signal;
    use nix::sys::time::TimeSpec;
    let set = main_signals();
    loop {
        let timeout = TimeSpec::from_duration(MAIN_FALLBACK_POLL);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn two_cores(factory: WorkerFactory) -> Workers {
        let config = RuntimeConfig { worker_cpus: vec![None, None], ..Default::default() };
        Workers::start(&config, vec![Vec::new(), Vec::new()], factory).unwrap()
    }

    #[test]
    fn a_core_that_fails_to_start_fails_the_start_with_its_reason() {
        let factory: WorkerFactory = Arc::new(|ctx: WorkerContext| {
            Box::pin(async move {
                if ctx.core == 1 {
                    ctx.fail("core 1 cannot build its chains".into());
                    return;
                }
                ctx.ready();
                let handle = ctx.shutdown.register();
                std::future::poll_fn(|cx| handle.poll(cx)).await;
            })
        });
        let workers = two_cores(factory);
        let err = workers.wait_ready(Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.to_string(), "core 1 cannot build its chains");
        workers.stop();
        assert!(workers.join());
    }

    #[test]
    fn every_core_ready_is_ready() {
        let factory: WorkerFactory = Arc::new(|ctx: WorkerContext| {
            Box::pin(async move {
                ctx.ready();
                let handle = ctx.shutdown.register();
                std::future::poll_fn(|cx| handle.poll(cx)).await;
            })
        });
        let workers = two_cores(factory);
        workers.wait_ready(Duration::from_secs(10)).unwrap();
        workers.stop();
        assert!(workers.join());
    }

    /// A panic in a connection's task (here, a task the core spawned) ends the core: the
    /// main thread must see it, or the core's connections hang while the process looks fine.
    #[test]
    fn a_panic_in_a_task_of_a_core_is_seen() {
        let factory: WorkerFactory = Arc::new(|ctx: WorkerContext| {
            Box::pin(async move {
                ctx.ready();
                if ctx.core == 1 {
                    glommio::spawn_local(async { panic!("a bug in a connection task") }).detach();
                }
                let handle = ctx.shutdown.register();
                std::future::poll_fn(|cx| handle.poll(cx)).await;
            })
        });
        let workers = two_cores(factory);
        workers.wait_ready(Duration::from_secs(10)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !workers.any_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(workers.any_finished(), "the panicked core went unnoticed");
        assert!(a_worker_panicked());
        workers.stop();
        assert!(!workers.join(), "join reports the panic");
    }
}
