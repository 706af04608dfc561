//! Which core serves a new connection.
//!
//! The kernel spreads new connections over the cores' SO_REUSEPORT listeners by a hash of
//! their addresses, blind to what else runs on the box. On a box shared with the server and
//! the clients, a core whose CPU they keep busy serves its connections slowly, and every core
//! that serves any connection polls and splits the traffic into smaller batches: two workers
//! on a 2-CPU box shared with Valkey and valkey-benchmark did 0.79–0.97 of one worker, where
//! the same two with every connection on one of them did as well as one.
//!
//! So with [`PlacementMode::Adaptive`] (the default) a core that accepts a connection asks
//! [`Placement::place`] where it should run: the cores whose CPUs have the most room, as many
//! as the box has CPUs to spare. The room is measured, at most every [`SAMPLE_EVERY`] and only
//! when connections arrive (an idle proxy reads nothing), from the kernel's busy time of each
//! worker's CPU (`/proc/stat`) minus the worker thread's own CPU time
//! (`/proc/self/task/<tid>/stat`): what the other threads of the box took. A spinning worker
//! takes all of its CPU, so its own time must not count against it.
//!
//! A connection already placed stays on its core for its life: its chain, its upstream
//! connections and its buffers are the core's own.

use crate::rt::{AcceptedStream, TcpStream};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shortest time over which the room of the CPUs is measured: the kernel counts CPU time
/// in ticks of 10 ms, so a shorter window would be mostly rounding.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// How new connections are spread over the worker cores (config.yaml's
/// `connection_placement`: `adaptive` or `kernel`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementMode {
    /// Connections run on the cores whose CPUs the rest of the box leaves room on.
    #[default]
    Adaptive,
    /// Each connection runs on the core whose listener the kernel gave it to.
    Kernel,
}

/// Connections one core may have waiting to be taken up by another; past it, a core serves
/// what it accepted itself. glommio writes every slot of a channel (24 bytes each) and there
/// is a channel for each ordered pair of cores, so this stays small.
const HANDOVER_QUEUE: usize = 64;

/// A connection one core hands to another: the index of its source and its socket.
pub struct Handover {
    pub source: usize,
    pub stream: AcceptedStream,
}

/// One core's ends of the channels between every pair of cores, before they are connected.
pub struct Handoff {
    core: usize,
    placement: Arc<Placement>,
    /// To each core (`None` for this one).
    to: Vec<Option<SharedSender<Handover>>>,
    /// From each other core.
    from: Vec<SharedReceiver<Handover>>,
}

/// Every core's [`Handoff`], in core order: a channel from each core to each other (none with
/// one core or [`PlacementMode::Kernel`], where no connection moves).
pub fn handoffs(placement: &Arc<Placement>) -> Vec<Handoff> {
    let n = placement.cores.len();
    let moves = placement.mode == PlacementMode::Adaptive && n > 1;
    let mut all: Vec<Handoff> = (0..n)
        .map(|core| Handoff {
            core,
            placement: placement.clone(),
            to: (0..n).map(|_| None).collect(),
            from: Vec::new(),
        })
        .collect();
    for from in (0..n).filter(|_| moves) {
        for to in (0..n).filter(|to| *to != from) {
            let (sender, receiver) = shared_channel::new_bounded(HANDOVER_QUEUE);
            if let Some(slot) = all.get_mut(from).and_then(|h| h.to.get_mut(to)) {
                *slot = Some(sender);
            }
            if let Some(h) = all.get_mut(to) {
                h.from.push(receiver);
            }
        }
    }
    all
}

impl Handoff {
    /// Connects this core's ends (on its own thread). `arrived` is called, on this core,
    /// with each connection another core hands over. A channel whose other core never
    /// connects (it failed to start) stays unused: connections for it are served here.
    ///
    /// At shutdown, drop the [`Placer`] once this core's accept loops have ended (that closes
    /// its channels to the other cores), then await [`Arrivals::finish`]: it returns once every
    /// other core has done the same, so no connection is left in a channel.
    pub fn start(self, arrived: impl Fn(Handover) + 'static) -> (Placer, Arrivals) {
        self.placement.register_thread(self.core);
        let senders: Rc<RefCell<Vec<Option<ConnectedSender<Handover>>>>> =
            Rc::new(RefCell::new((0..self.to.len()).map(|_| None).collect()));
        for (core, sender) in self.to.into_iter().enumerate() {
            let Some(sender) = sender else { continue };
            let senders = senders.clone();
            glommio::spawn_local(async move {
                let connected = sender.connect().await;
                if let Some(slot) = senders.borrow_mut().get_mut(core) {
                    *slot = Some(connected);
                }
            })
            .detach();
        }
        let arrived = Rc::new(arrived);
        let tasks = (self.from.into_iter())
            .map(|receiver| {
                let arrived = arrived.clone();
                glommio::spawn_local(async move {
                    let receiver = receiver.connect().await;
                    while let Some(handover) = receiver.recv().await {
                        arrived(handover);
                    }
                })
            })
            .collect();
        (Placer { core: self.core, placement: self.placement, senders }, Arrivals(tasks))
    }
}

/// The tasks that take the connections other cores hand to this one.
pub struct Arrivals(Vec<glommio::Task<()>>);

impl Arrivals {
    /// Returns once every other core has closed its channel to this one and every connection
    /// in them was taken.
    pub async fn finish(self) {
        for task in self.0 {
            task.await;
        }
    }
}

/// Places the connections one core accepts.
pub struct Placer {
    core: usize,
    placement: Arc<Placement>,
    senders: Rc<RefCell<Vec<Option<ConnectedSender<Handover>>>>>,
}

impl Placer {
    /// The connection to serve on this core, or `None` if another core took it.
    pub fn place(&self, source: usize, stream: AcceptedStream) -> Option<TcpStream> {
        let core = self.placement.place(self.core);
        if core == self.core {
            return Some(stream.bind());
        }
        let senders = self.senders.borrow();
        let Some(sender) = senders.get(core).and_then(Option::as_ref) else { return Some(stream.bind()) };
        use glommio::{GlommioError, ResourceType};
        match sender.try_send(Handover { source, stream }) {
            Ok(()) => None,
            // That core's queue is full or it has stopped: serve it here.
            Err(
                GlommioError::WouldBlock(ResourceType::Channel(h)) | GlommioError::Closed(ResourceType::Channel(h)),
            ) => Some(h.stream.bind()),
            // glommio 0.9's try_send fails only as above. Any other error would hold no
            // connection to give back (it would be lost): a bug to hear of.
            Err(e) => {
                tracing::error!("a connection could not be handed to core {core}: {e}");
                None
            }
        }
    }
}

/// What the placement knows of one worker core.
struct Core {
    /// The CPU the core is pinned to; `None`: unpinned, so its room cannot be measured.
    cpu: Option<usize>,
    /// The worker thread's id, once it has started (0 before).
    tid: AtomicI32,
    /// Whether new connections may run here.
    open: AtomicBool,
}

/// CPU times at one moment, in clock ticks.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    /// Busy ticks of each worker's CPU (`None`: unknown).
    busy: Vec<Option<u64>>,
    /// Ticks each worker thread has run.
    own: Vec<Option<u64>>,
}

/// Shared by every worker core: where new connections go.
pub struct Placement {
    mode: PlacementMode,
    cores: Vec<Core>,
    last: Mutex<Option<Sample>>,
    /// Turns over the open cores for connections accepted by a core that is not open.
    next: AtomicUsize,
    /// Worker threads registered so far; the first measure is taken when all are.
    registered: AtomicUsize,
    /// While set, every connection stays where it was accepted (see [`Placement::hold`]).
    held: AtomicBool,
    ticks_per_second: f64,
}

impl Placement {
    /// One entry per worker core, with the CPU it is pinned to.
    pub fn new(mode: PlacementMode, cpus: &[Option<usize>]) -> Self {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
        Placement {
            mode,
            cores: cpus
                .iter()
                .map(|cpu| Core { cpu: *cpu, tid: AtomicI32::new(0), open: AtomicBool::new(true) })
                .collect(),
            last: Mutex::new(None),
            next: AtomicUsize::new(0),
            registered: AtomicUsize::new(0),
            held: AtomicBool::new(false),
            ticks_per_second: ticks.max(1) as f64,
        }
    }

    /// Called on worker `core`'s own thread when it starts. The last one takes the first
    /// measure, so that the first connections are placed on a measure of their own.
    pub fn register_thread(&self, core: usize) {
        if let Some(c) = self.cores.get(core) {
            c.tid.store(nix::unistd::gettid().as_raw(), Ordering::Release);
        }
        if self.registered.fetch_add(1, Ordering::AcqRel) + 1 == self.cores.len() && self.moves() {
            self.refresh(Instant::now());
        }
    }

    /// Keeps every connection on the core that accepted it while `held`: after a hot reload
    /// the previous instance's workers run on the same CPUs until it exits, and would count
    /// as the rest of the box.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::Release);
    }

    fn moves(&self) -> bool {
        self.mode == PlacementMode::Adaptive && self.cores.len() > 1
    }

    /// The core that should serve a connection worker `me` just accepted.
    pub fn place(&self, me: usize) -> usize {
        if !self.moves() || self.held.load(Ordering::Acquire) {
            return me;
        }
        self.refresh(Instant::now());
        if self.cores.get(me).is_some_and(|c| c.open.load(Ordering::Acquire)) {
            return me;
        }
        let open = || (0..self.cores.len()).filter(|i| self.cores[*i].open.load(Ordering::Acquire));
        match open().count() {
            0 => me,
            n => open().nth(self.next.fetch_add(1, Ordering::Relaxed) % n).unwrap_or(me),
        }
    }

    /// Measures the CPUs' room again if the last measure is [`SAMPLE_EVERY`] old, and opens
    /// the cores that have it. One core measures at a time; the others keep the last answer.
    fn refresh(&self, now: Instant) {
        let Ok(mut last) = self.last.try_lock() else { return };
        if last.as_ref().is_some_and(|s| now.saturating_duration_since(s.at) < SAMPLE_EVERY) {
            return;
        }
        let sample = self.sample(now);
        if let Some(before) = last.as_ref() {
            let seconds = now.saturating_duration_since(before.at).as_secs_f64() * self.ticks_per_second;
            let others: Vec<Option<f64>> = (0..self.cores.len())
                .map(|i| {
                    let busy = sample.busy.get(i)?.as_ref()?.checked_sub((*before.busy.get(i)?)?)?;
                    let own = sample.own.get(i)?.as_ref()?.saturating_sub((*before.own.get(i)?)?);
                    Some(busy.saturating_sub(own) as f64 / seconds)
                })
                .collect();
            for (core, open) in self.cores.iter().zip(open_cores(&others)) {
                core.open.store(open, Ordering::Release);
            }
        }
        *last = Some(sample);
    }

    fn sample(&self, at: Instant) -> Sample {
        let per_cpu = std::fs::read_to_string("/proc/stat").map(|t| busy_ticks(&t)).unwrap_or_default();
        let busy = self
            .cores
            .iter()
            .map(|c| c.cpu.and_then(|cpu| per_cpu.iter().find(|(n, _)| *n == cpu)).map(|(_, b)| *b))
            .collect();
        let own = self
            .cores
            .iter()
            .map(|c| match c.tid.load(Ordering::Acquire) {
                0 => None,
                tid => {
                    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok().and_then(|t| thread_ticks(&t))
                }
            })
            .collect();
        Sample { at, busy, own }
    }
}

/// Which cores take new connections, given what the rest of the box took of each core's CPU
/// (in CPUs, 0 to 1; `None`: unknown). As many cores as there are CPUs to spare (rounded,
/// at least one), those with the most room first; every core when anything is unknown.
fn open_cores(others: &[Option<f64>]) -> Vec<bool> {
    let Some(others) = others.iter().copied().collect::<Option<Vec<f64>>>() else {
        return vec![true; others.len()];
    };
    let spare: f64 = others.iter().map(|o| (1.0 - o).clamp(0.0, 1.0)).sum();
    let wanted = (spare.round() as usize).clamp(1, others.len().max(1));
    let mut by_room: Vec<usize> = (0..others.len()).collect();
    by_room.sort_by(|a, b| others[*a].total_cmp(&others[*b]).then(a.cmp(b)));
    let mut open = vec![false; others.len()];
    for i in by_room.into_iter().take(wanted) {
        open[i] = true;
    }
    open
}

/// Busy ticks of each CPU in the text of `/proc/stat`: every field of its `cpuN` line but
/// idle and iowait (user, nice, system, irq, softirq, steal; guest time is within user).
pub fn busy_ticks(stat: &str) -> Vec<(usize, u64)> {
    stat.lines()
        .filter_map(|line| {
            let mut words = line.split_ascii_whitespace();
            let cpu: usize = words.next()?.strip_prefix("cpu")?.parse().ok()?;
            let t: Vec<u64> = words.take(8).map(|w| w.parse().unwrap_or(0)).collect();
            let field = |i: usize| t.get(i).copied().unwrap_or(0);
            Some((cpu, field(0) + field(1) + field(2) + field(5) + field(6) + field(7)))
        })
        .collect()
}

/// User plus system ticks of a thread, from the text of its `stat` file. The command name
/// (field 2) may hold spaces and parentheses, so the fields are counted after its last `)`.
fn thread_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut words = rest.split_ascii_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = words.nth(11)?.parse().ok()?;
    let stime: u64 = words.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_open_as_many_as_the_box_has_cpus_to_spare_roomiest_first() {
        let open = |o: &[f64]| open_cores(&o.iter().map(|x| Some(*x)).collect::<Vec<_>>());
        // Nothing else runs: every core.
        assert_eq!(open(&[0.0, 0.05]), vec![true, true]);
        // The server and the clients pinned to CPU 0: only the core on CPU 1.
        assert_eq!(open(&[1.0, 0.02]), vec![false, true]);
        // They float over both CPUs and take 1.3 of them: one core, the roomier.
        assert_eq!(open(&[0.7, 0.6]), vec![false, true]);
        // Both CPUs full: still one core, never none.
        assert_eq!(open(&[1.0, 1.0]), vec![true, false]);
        // Four CPUs, a batch job on two: two cores.
        assert_eq!(open(&[1.0, 0.1, 0.95, 0.0]), vec![false, true, false, true]);
        // A CPU whose room is unknown: the kernel's spread.
        assert_eq!(open_cores(&[Some(1.0), None]), vec![true, true]);
    }

    #[test]
    fn proc_stat_busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  10 0 10 500 5 0 0 0 0 0\ncpu0 1 2 3 400 50 6 7 8 9 10\ncpu1 0 0 0 9 0 0 0 0 0 0\nintr 1 2\n";
        assert_eq!(busy_ticks(stat), vec![(0, 1 + 2 + 3 + 6 + 7 + 8), (1, 0)]);
    }

    #[test]
    fn a_threads_ticks_are_read_after_its_name_whatever_the_name_holds() {
        let stat = "4242 (worker) 0) x) S 1 2 3 4 5 6 7 8 9 10 120 30 0 0 20 0 1 0";
        assert_eq!(thread_ticks(stat), Some(150));
        assert_eq!(thread_ticks("garbage"), None);
        let own = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        assert!(thread_ticks(&own).is_some(), "{own}");
        let cpus = busy_ticks(&std::fs::read_to_string("/proc/stat").expect("stat"));
        assert!(cpus.iter().any(|(cpu, _)| *cpu == 0), "{cpus:?}");
    }

    #[test]
    fn the_kernel_mode_and_a_single_core_keep_every_connection_where_it_was_accepted() {
        let kernel = Placement::new(PlacementMode::Kernel, &[Some(0), Some(1)]);
        kernel.cores[0].open.store(false, Ordering::Release);
        assert_eq!(kernel.place(0), 0);
        let one = Placement::new(PlacementMode::Adaptive, &[Some(0)]);
        assert_eq!(one.place(0), 0);
        // No channels where no connection moves.
        assert!(handoffs(&Arc::new(kernel)).iter().all(|h| h.from.is_empty() && h.to.iter().all(Option::is_none)));
        let two = handoffs(&Arc::new(Placement::new(PlacementMode::Adaptive, &[Some(0), Some(1)])));
        assert!(two.iter().all(|h| h.from.len() == 1 && h.to.iter().filter(|s| s.is_some()).count() == 1));
    }

    #[test]
    fn a_held_placement_keeps_connections_where_they_were_accepted() {
        let p = Placement::new(PlacementMode::Adaptive, &[None, None]);
        p.cores[0].open.store(false, Ordering::Release);
        *p.last.lock().expect("lock") = Some(Sample { at: Instant::now(), busy: vec![], own: vec![] });
        p.hold(true);
        assert_eq!(p.place(0), 0);
        p.hold(false);
        assert_eq!(p.place(0), 1);
    }

    #[test]
    fn a_core_that_is_not_open_hands_its_connections_to_the_open_ones_in_turn() {
        let p = Placement::new(PlacementMode::Adaptive, &[None, None, None]);
        // Unpinned cores: room unknown, so every core stays open.
        assert_eq!((p.place(0), p.place(1), p.place(2)), (0, 1, 2));
        p.cores[0].open.store(false, Ordering::Release);
        *p.last.lock().expect("lock") = Some(Sample { at: Instant::now(), busy: vec![], own: vec![] });
        let placed: Vec<usize> = (0..4).map(|_| p.place(0)).collect();
        assert_eq!(placed, vec![1, 2, 1, 2]);
        assert_eq!(p.place(2), 2);
    }
}
