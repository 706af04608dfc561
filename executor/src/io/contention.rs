//! Whether a busy core may spin, and how: flat out, sharing its CPU, or not at all (see
//! [`SpinMode`] and the module above).

use super::{
    BUSY_WINDOW, CONTENDED_SHARE, CONTENTION_BACKOFF, CONTENTION_CHECK, SLOW_YIELD, SLOW_YIELDS_TO_PARK,
    SLOW_YIELD_WINDOW,
};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

thread_local! {
    /// When a socket on this core last received data.
    static LAST_DATA: Cell<Option<Instant>> = const { Cell::new(None) };
    static CONTENTION: Cell<Contention> = const { Cell::new(Contention::new()) };
    /// This thread's `/proc/thread-self/schedstat`, opened on first use (`None` if it cannot be).
    static SCHEDSTAT: RefCell<Option<Option<std::fs::File>>> = const { RefCell::new(None) };
}

/// Whether this core may spin: it received data within [`BUSY_WINDOW`] and is not parked
/// (see [`SpinMode`]).
pub(super) fn may_spin() -> bool {
    let Some(last_data) = LAST_DATA.with(|t| t.get()) else { return false };
    let now = Instant::now();
    if now.saturating_duration_since(last_data) >= BUSY_WINDOW {
        return false;
    }
    CONTENTION.with(|c| {
        let mut state = c.get();
        let mode = state.mode(now, cpu_wait_ns);
        c.set(state);
        mode != SpinMode::Park
    })
}

/// Gives the CPU to the threads waiting for it, when the core shares its CPU; parks the core
/// if that took long. `now` is the time of the call; returns the time after it (the clock
/// costs about 25 ns a reading on these machines, and this runs every few microseconds).
pub(super) fn share_cpu(now: Instant) -> Instant {
    // The mode the last `may_spin` found (it reads the clock, this need not).
    if CONTENTION.with(|c| c.get().mode) != SpinMode::Share {
        return now;
    }
    std::thread::yield_now();
    let after = Instant::now();
    CONTENTION.with(|c| {
        let mut state = c.get();
        state.yielded(after, after.saturating_duration_since(now));
        c.set(state);
    });
    after
}

pub(super) fn data_arrived() {
    LAST_DATA.with(|t| t.set(Some(Instant::now())));
}

/// When this core last received data on any socket, if it ever did: a clock reading that
/// costs nothing, for whoever needs the time a reply it just read arrived (a latency
/// metric's start) and would otherwise read the clock once per message.
pub fn last_arrival() -> Option<Instant> {
    LAST_DATA.with(|t| t.get())
}

/// Nanoseconds the calling thread has spent runnable but waiting for a CPU, so far; 0 where
/// the kernel does not say (then a core never counts as contended).
pub(super) fn cpu_wait_ns() -> u64 {
    use std::os::unix::fs::FileExt;
    SCHEDSTAT.with(|f| {
        let mut f = f.borrow_mut();
        let file = f.get_or_insert_with(|| std::fs::File::open("/proc/thread-self/schedstat").ok());
        let Some(file) = file.as_ref() else { return 0 };
        let mut buf = [0u8; 96];
        let Ok(n) = file.read_at(&mut buf, 0) else { return 0 };
        let text = buf.get(..n).unwrap_or_default();
        text.split(|b| *b == b' ')
            .nth(1)
            .and_then(|w| std::str::from_utf8(w).ok())
            .and_then(|w| w.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// How a busy core waits for data on its sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpinMode {
    /// Poll flat out: nobody else wants the CPU.
    Spin,
    /// Poll, but yield the CPU before each busy-poller refresh: other threads want it, and
    /// each gives it back soon.
    Share,
    /// Do not poll: every read waits for readiness. A thread that keeps the CPU wants it.
    Park,
}

/// What a core knows about other threads wanting its CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Contention {
    /// When the wait time was last read (`None`: never).
    checked_at: Option<Instant>,
    /// The wait time then, in nanoseconds.
    waited: u64,
    /// [`SpinMode::Share`] or [`SpinMode::Park`] until `until`; [`SpinMode::Spin`] otherwise.
    mode: SpinMode,
    until: Option<Instant>,
    /// Yields that took over [`SLOW_YIELD`] since `first_slow_yield`.
    slow_yields: u8,
    first_slow_yield: Option<Instant>,
}

impl Contention {
    const fn new() -> Self {
        Contention {
            checked_at: None,
            waited: 0,
            mode: SpinMode::Spin,
            until: None,
            slow_yields: 0,
            first_slow_yield: None,
        }
    }

    /// How the core should wait now. Reads the thread's CPU wait time (through `read`, in
    /// nanoseconds) at most every [`CONTENTION_CHECK`].
    fn mode(&mut self, now: Instant, read: impl FnOnce() -> u64) -> SpinMode {
        if let Some(until) = self.until {
            if now < until {
                return self.mode;
            }
            // Start afresh: waiting while sharing or parked says nothing about spinning.
            self.until = None;
            self.mode = SpinMode::Spin;
            self.checked_at = None;
        }
        match self.checked_at {
            Some(at) if now.saturating_duration_since(at) < CONTENTION_CHECK => SpinMode::Spin,
            Some(at) => {
                let waited = read();
                let share =
                    waited.saturating_sub(self.waited) as f64 / now.saturating_duration_since(at).as_nanos() as f64;
                self.waited = waited;
                self.checked_at = Some(now);
                if share > CONTENDED_SHARE {
                    self.mode = SpinMode::Share;
                    self.until = Some(now + CONTENTION_BACKOFF);
                }
                self.mode
            }
            None => {
                self.waited = read();
                self.checked_at = Some(now);
                SpinMode::Spin
            }
        }
    }

    /// A yield of the CPU took `took`. The [`SLOW_YIELDS_TO_PARK`]th over [`SLOW_YIELD`]
    /// within [`SLOW_YIELD_WINDOW`] parks the core for the backoff.
    fn yielded(&mut self, now: Instant, took: Duration) {
        if took <= SLOW_YIELD {
            return;
        }
        match self.first_slow_yield {
            Some(first) if now.saturating_duration_since(first) <= SLOW_YIELD_WINDOW => {}
            _ => {
                self.first_slow_yield = Some(now);
                self.slow_yields = 0;
            }
        }
        self.slow_yields = self.slow_yields.saturating_add(1);
        if self.slow_yields >= SLOW_YIELDS_TO_PARK {
            self.slow_yields = 0;
            self.mode = SpinMode::Park;
            self.until = Some(now + CONTENTION_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_that_waits_for_its_cpu_shares_it_for_the_backoff_then_looks_afresh() {
        use SpinMode::{Share, Spin};
        let ms = |n: u64| n * 1_000_000;
        let start = Instant::now();
        let mut c = Contention::new();
        assert_eq!(c.mode(start, || ms(7)), Spin, "the first look only takes the wait time");
        assert_eq!(c.mode(start + CONTENTION_CHECK / 2, || panic!("read before CONTENTION_CHECK")), Spin);
        // 2 ms later, 0.1 ms more waiting: 5 %, a kernel thread now and then. Spin on.
        let t1 = start + Duration::from_millis(2);
        assert_eq!(c.mode(t1, || ms(7) + 100_000), Spin);
        // 2 ms later, 1 ms more waiting: half the time, another thread wants this CPU.
        let t2 = t1 + Duration::from_millis(2);
        assert_eq!(c.mode(t2, || ms(8) + 100_000), Share);
        assert_eq!(c.mode(t2 + CONTENTION_BACKOFF / 2, || panic!("no reads while sharing")), Share);
        // Quick yields (the other thread ran a moment and waited again) keep it sharing.
        c.yielded(t2 + CONTENTION_BACKOFF / 2, Duration::from_micros(80));
        assert_eq!(c.mode(t2 + CONTENTION_BACKOFF / 2, || panic!("no reads while sharing")), Share);
        let after = t2 + CONTENTION_BACKOFF;
        // Waiting while sharing does not count: the wait time is taken afresh.
        assert_eq!(c.mode(after, || ms(90)), Spin);
        assert_eq!(c.mode(after + Duration::from_millis(2), || ms(90)), Spin);
        assert_eq!(c.mode(after + Duration::from_millis(4), || ms(91)), Share);
    }

    #[test]
    fn a_core_whose_yield_went_to_a_thread_that_kept_the_cpu_parks_for_the_backoff() {
        use SpinMode::{Park, Share, Spin};
        let ms = |n: u64| n * 1_000_000;
        let start = Instant::now();
        let mut c = Contention::new();
        c.mode(start, || 0);
        let t1 = start + CONTENTION_CHECK;
        assert_eq!(c.mode(t1, || ms(1)), Share);
        let slow = SLOW_YIELD + Duration::from_micros(1);
        // The server and the clients keep the CPU long now and then: no reason to park.
        let mut t = t1;
        for _ in 0..3 {
            c.yielded(t, slow);
            c.yielded(t, Duration::from_micros(50));
            t += SLOW_YIELD_WINDOW + Duration::from_millis(1);
        }
        assert_eq!(c.mode(t, || panic!("no reads while sharing")), Share);
        // A batch job takes a whole time slice at every other yield.
        for _ in 0..SLOW_YIELDS_TO_PARK {
            c.yielded(t, slow);
            c.yielded(t, Duration::from_micros(20));
            t += Duration::from_millis(2);
        }
        assert_eq!(c.mode(t, || panic!("no reads while parked")), Park);
        let t1 = t;
        assert_eq!(c.mode(t1 + CONTENTION_BACKOFF / 2, || panic!("no reads while parked")), Park);
        // Then it looks afresh, from spinning.
        assert_eq!(c.mode(t1 + CONTENTION_BACKOFF, || ms(50)), Spin);
    }

    #[test]
    fn this_threads_cpu_wait_time_can_be_read() {
        let first = cpu_wait_ns();
        std::thread::sleep(Duration::from_millis(1));
        assert!(cpu_wait_ns() >= first);
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
        assert_eq!(text.split(' ').count(), 3, "{text}");
    }
}
