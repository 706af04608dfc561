//! Reading into a growing buffer without losing bytes, with busy polling on busy cores.
//!
//! [`ReadBuffer::poll_fill`] reads straight into the connection's own buffer, so a poll that
//! returns `Pending` (because the other side of a select won) has consumed nothing: no read
//! future is ever dropped holding data.
//!
//! Why busy polling: glommio waits for socket readiness with io_uring poll requests, and each
//! completion of one is delivered to the worker thread by an inter-processor interrupt,
//! which on virtual machines costs more than the request itself (measured: 64 µs of CPU per
//! proxied request against HAProxy's 27 µs). So while the core is busy, a read that finds
//! no data yields to the core's other tasks and tries again with a plain non-blocking
//! `recv`, up to [`SPIN_READS`] times; only then, or when the core has gone quiet, does it
//! arm a glommio readiness wait. An idle core therefore sleeps as before.
//!
//! Trying `recv` on every spinning socket costs a syscall each (measured: 7.5 empty reads
//! per proxied request at `-c 50 -P 1`). So after its first empty try, a spinning socket
//! asks the core's [`BusyPoller`] instead: one edge-triggered `epoll_wait(0)` over every
//! spinning socket of the core, refreshed at most every [`REFRESH_AFTER`], says which of
//! them received data since they last found none. An epoll readiness change only sets a
//! flag: it sends no interrupt. Edge-triggered, because a level-triggered set reports every
//! socket that still holds unread data on every call: with 50 clients answering at once
//! while the core sends replies, each `epoll_wait` walked up to 50 sockets again (15 % of
//! the core's time at `-P 1`).
//!
//! Spinning flat out only pays on a CPU nobody else wants. On a shared box (the server, the
//! clients or a second worker on the same CPU) every spin steals time from a thread that has
//! real work. So a spinning core asks the kernel, at most every [`CONTENTION_CHECK`], how long
//! it sat runnable but waiting for its CPU (the second field of
//! `/proc/thread-self/schedstat`). Over [`CONTENDED_SHARE`] of the time since the last look
//! means another thread wants this CPU for real. (Counting preemptions instead is misleading:
//! on a CPU of its own a worker is still preempted some hundred times a second, for
//! microseconds each, by kernel threads.)
//!
//! A contended core then **shares** ([`SpinMode::Share`]) for [`CONTENTION_BACKOFF`]: it
//! still polls, but gives the CPU away (`sched_yield`) before each busy-poller refresh. The
//! threads that want the CPU on a proxy's box are mostly the server and the clients, which
//! each run a moment and wait again; a yield hands them the CPU at once, and the core gets it
//! back without the wake-up interrupt that parking costs. (Parking on every read instead, as
//! this proxy did first, made two workers on a 2-CPU box shared with Valkey and the client
//! 0.64–0.82 of one worker.) But a thread that keeps the CPU (a batch job) takes a whole time
//! slice at every other yield: [`SLOW_YIELDS_TO_PARK`] yields within [`SLOW_YIELD_WINDOW`]
//! that each take over [`SLOW_YIELD`] **park** the core ([`SpinMode::Park`]: no spinning,
//! every read waits for readiness) for the backoff.

use crate::rt::TcpStream;
use bytes::BytesMut;
use futures_lite::io::AsyncRead;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{recv, MsgFlags};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Bytes read by one call: the size of the per-core scratch buffer.
const READ_SIZE: usize = 64 * 1024;
/// The capacity an empty buffer may keep: glibc's mmap threshold (see [`crate::memory`]), so
/// a larger buffer, once dropped, goes straight back to the kernel.
pub const KEEP_CAPACITY: usize = 128 * 1024;
/// Empty non-blocking reads a connection makes before it arms a readiness wait.
pub const SPIN_READS: u32 = 256;
/// A core counts as busy when any of its sockets received data this recently.
pub const BUSY_WINDOW: Duration = Duration::from_micros(200);
/// How old the busy poller's readiness list may be before it is asked again.
pub const REFRESH_AFTER: Duration = Duration::from_micros(5);
/// How often a spinning core checks whether another thread wants its CPU.
pub const CONTENTION_CHECK: Duration = Duration::from_millis(2);
/// The share of wall time spent waiting for the CPU above which a core stops spinning.
pub const CONTENDED_SHARE: f64 = 0.10;
/// How long a contended core shares its CPU or parks before it looks afresh.
pub const CONTENTION_BACKOFF: Duration = Duration::from_millis(100);
/// A yield that gives the CPU away for longer than this may have gone to a thread that
/// keeps it (a time slice is at least 0.75 ms).
pub const SLOW_YIELD: Duration = Duration::from_millis(1);
/// Slow yields within [`SLOW_YIELD_WINDOW`] that park a sharing core. Measured with a
/// CPU-bound thread on the core's CPU, every second yield took a whole 4 ms tick; with
/// Valkey and the client there, a few in a thousand took over 1 ms, and never two close
/// together.
pub const SLOW_YIELDS_TO_PARK: u8 = 3;
/// See [`SLOW_YIELDS_TO_PARK`].
pub const SLOW_YIELD_WINDOW: Duration = Duration::from_millis(30);

thread_local! {
    /// When a socket on this core last received data.
    static LAST_DATA: Cell<Option<Instant>> = const { Cell::new(None) };
    static POLLER: RefCell<Option<BusyPoller>> = const { RefCell::new(None) };
    /// Every read lands here first and is then appended to its connection's buffer, so
    /// no buffer is zero-filled before a read that may find nothing.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
    static CONTENTION: Cell<Contention> = const { Cell::new(Contention::new()) };
    /// This thread's `/proc/thread-self/schedstat`, opened on first use (`None` if it cannot be).
    static SCHEDSTAT: RefCell<Option<Option<std::fs::File>>> = const { RefCell::new(None) };
}

/// Whether this core may spin: it received data within [`BUSY_WINDOW`] and is not parked
/// (see [`SpinMode`]).
fn may_spin() -> bool {
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
/// if that took long.
fn share_cpu() {
    // The mode the last `may_spin` found (it reads the clock, this need not).
    if CONTENTION.with(|c| c.get().mode) != SpinMode::Share {
        return;
    }
    let before = Instant::now();
    std::thread::yield_now();
    let now = Instant::now();
    CONTENTION.with(|c| {
        let mut state = c.get();
        state.yielded(now, now.saturating_duration_since(before));
        c.set(state);
    });
}

fn data_arrived() {
    LAST_DATA.with(|t| t.set(Some(Instant::now())));
}

/// Nanoseconds the calling thread has spent runnable but waiting for a CPU, so far; 0 where
/// the kernel does not say (then a core never counts as contended).
fn cpu_wait_ns() -> u64 {
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

/// Readiness of a core's spinning sockets, from one `epoll_wait(0)` for all of them.
pub struct BusyPoller {
    epoll: Epoll,
    /// Bit `fd` is set when `fd` received data since its reader last asked (edge-triggered:
    /// a bit stays set until [`BusyPoller::clear`], as epoll reports each arrival once).
    ready: Vec<u64>,
    refreshed_at: Instant,
    events: Vec<EpollEvent>,
}

impl BusyPoller {
    fn new() -> Option<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).ok()?;
        Some(BusyPoller {
            epoll,
            ready: Vec::new(),
            refreshed_at: Instant::now(),
            events: vec![EpollEvent::empty(); 256],
        })
    }

    /// Adds `fd`, edge-triggered. Its caller has just found it empty, so any later arrival
    /// is an edge (and data that came in between is reported too: adding a socket that has
    /// data queues it as ready). A closed fd leaves the set by itself.
    fn register(&self, fd: RawFd) -> bool {
        // SAFETY: `fd` belongs to a socket its caller holds open for the whole call; epoll
        // keeps no borrow of it, only a kernel reference that closing the socket removes.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET, fd as u64);
        match self.epoll.add(borrowed, event) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => true,
            Err(_) => false,
        }
    }

    fn bit(fd: RawFd) -> (usize, u64) {
        let fd = fd.max(0) as usize;
        (fd / 64, 1u64 << (fd % 64))
    }

    fn is_ready(&self, fd: RawFd) -> bool {
        let (word, mask) = Self::bit(fd);
        self.ready.get(word).is_some_and(|w| w & mask != 0)
    }

    fn clear(&mut self, fd: RawFd) {
        let (word, mask) = Self::bit(fd);
        if let Some(w) = self.ready.get_mut(word) {
            *w &= !mask;
        }
    }

    fn refresh_if_stale(&mut self) {
        if self.refreshed_at.elapsed() < REFRESH_AFTER {
            return;
        }
        share_cpu();
        self.refreshed_at = Instant::now();
        // No bit is reset here: an edge that was reported and not yet asked for would be lost.
        let Ok(n) = self.epoll.wait(&mut self.events, EpollTimeout::ZERO) else { return };
        for event in self.events.iter().take(n) {
            let (word, mask) = Self::bit(event.data() as RawFd);
            if self.ready.len() <= word {
                self.ready.resize(word + 1, 0);
            }
            if let Some(w) = self.ready.get_mut(word) {
                *w |= mask;
            }
        }
    }
}

/// A socket that [`ReadBuffer`] reads from: any async reader, plus the fd that busy polling
/// may `recv` from directly when the bytes need no decoding on the way (plain TCP; not TLS).
pub trait SpinRead: AsyncRead + Unpin {
    /// The fd to busy-poll, or `None` when every byte must go through [`AsyncRead`].
    fn spin_fd(&self) -> Option<RawFd>;
}

impl SpinRead for TcpStream {
    fn spin_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

/// True if the peer of socket `fd` has closed it (or it failed), known without reading
/// anything: one non-blocking `MSG_PEEK`. Data waiting to be read means "open".
pub fn peer_closed(fd: RawFd) -> bool {
    let mut probe = [0u8; 1];
    match recv(fd, &mut probe, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) | Err(nix::errno::Errno::EAGAIN) => false,
        Err(_) => true,
    }
}

/// Drops `buf` when it is empty and once grew past [`KEEP_CAPACITY`] (a large request or
/// answer): a `BytesMut` keeps its capacity, so one 1 MiB Kafka batch would otherwise stay
/// resident for the connection's whole life. The next use starts a small one.
pub fn release_if_large(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::new();
    }
}

/// Empties a write buffer after its bytes went out, letting it go if it grew past
/// [`KEEP_CAPACITY`] (see [`release_if_large`]).
pub fn clear_and_release(buf: &mut BytesMut) {
    buf.clear();
    release_if_large(buf);
}

/// Whether a read may busy-poll while the core is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Data is expected soon (a reply, or a client between requests): spin while busy.
    Spin,
    /// Data is not expected (pushed messages): wait for readiness without spinning.
    Wait,
}

/// A socket's receive buffer.
#[derive(Default)]
pub struct ReadBuffer {
    pub buf: BytesMut,
    /// Consecutive empty non-blocking reads since data last arrived.
    misses: u32,
    /// Whether the socket is in the core's busy poller.
    registered: bool,
}

impl ReadBuffer {
    /// Reads once from `stream` into the buffer. `Ready(Ok(0))` is end of stream.
    pub fn poll_fill<S: SpinRead>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
        mode: ReadMode,
    ) -> Poll<io::Result<usize>> {
        self.release_if_large();
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let spin_fd = stream.spin_fd().filter(|_| mode == ReadMode::Spin);
            let result = if let Some(fd) = spin_fd.filter(|_| self.misses < SPIN_READS && may_spin()) {
                // The first try reads directly: data is often already there. Later tries
                // read only when the busy poller saw data.
                if self.misses > 0 && !self.poller_says_ready(fd) {
                    self.misses += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match recv(fd, &mut scratch[..], MsgFlags::MSG_DONTWAIT) {
                    Ok(n) => Poll::Ready(Ok(n)),
                    Err(nix::errno::Errno::EAGAIN) => {
                        self.misses += 1;
                        // Yield: run the core's other tasks, then try again.
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready(Err(e.into())),
                }
            } else {
                Pin::new(stream).poll_read(cx, &mut scratch[..])
            };
            if let Poll::Ready(Ok(n)) = result {
                self.misses = 0;
                data_arrived();
                self.buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
            }
            result
        })
    }

    /// Says that a request (or answer) was just written to this socket's peer, which cannot
    /// have answered yet: the next read asks the busy poller instead of trying `recv` first,
    /// which would find nothing and cost a syscall between two sends of a burst.
    pub fn just_wrote(&mut self) {
        self.misses = self.misses.max(1);
    }

    /// [`release_if_large`] for the receive buffer.
    pub fn release_if_large(&mut self) {
        release_if_large(&mut self.buf);
    }

    /// [`ReadBuffer::poll_fill`] for an upstream connection, where end of stream is an error:
    /// `UnexpectedEof` with the message `closed`.
    pub fn poll_fill_upstream<S: SpinRead>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
        mode: ReadMode,
        closed: &'static str,
    ) -> Poll<io::Result<()>> {
        match self.poll_fill(stream, cx, mode) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::Error::new(io::ErrorKind::UnexpectedEof, closed))),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Asks the core's busy poller whether `fd` has data, registering it on first use. If
    /// no poller can be had, says "ready" so the caller simply tries `recv`.
    fn poller_says_ready(&mut self, fd: RawFd) -> bool {
        POLLER.with(|p| {
            let mut p = p.borrow_mut();
            if p.is_none() {
                *p = BusyPoller::new();
            }
            let Some(poller) = p.as_mut() else { return true };
            if !self.registered {
                self.registered = poller.register(fd);
                if !self.registered {
                    return true;
                }
            }
            if !poller.is_ready(fd) {
                poller.refresh_if_stale();
            }
            let ready = poller.is_ready(fd);
            if ready {
                poller.clear(fd);
            }
            ready
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_buffer_that_grew_large_is_let_go_and_a_small_or_busy_one_is_kept() {
        let mut read = ReadBuffer::default();
        read.buf.reserve(KEEP_CAPACITY * 8);
        read.buf.extend_from_slice(b"a request still being read");
        read.release_if_large();
        assert!(read.buf.capacity() > KEEP_CAPACITY, "bytes not yet decoded are kept");
        read.buf.clear();
        read.release_if_large();
        assert_eq!(read.buf.capacity(), 0, "an empty large buffer is released");
        read.buf.reserve(1024);
        read.release_if_large();
        assert!(read.buf.capacity() >= 1024, "a small buffer is reused");
    }

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
    fn the_busy_poller_keeps_an_arrival_until_its_reader_asks_and_sees_each_new_one() {
        use std::io::Write;
        let (mut peer, socket) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let fd = socket.as_raw_fd();
        let mut poller = BusyPoller::new().expect("epoll");
        let refresh = |poller: &mut BusyPoller| {
            std::thread::sleep(REFRESH_AFTER * 2);
            poller.refresh_if_stale();
        };
        assert!(poller.register(fd));
        refresh(&mut poller);
        assert!(!poller.is_ready(fd), "nothing sent yet");
        peer.write_all(b"+PING\r\n").expect("write");
        refresh(&mut poller);
        assert!(poller.is_ready(fd));
        // Edge-triggered: the next refresh reports nothing new, and the flag must survive it.
        refresh(&mut poller);
        assert!(poller.is_ready(fd), "an arrival not yet asked for was lost");
        poller.clear(fd);
        refresh(&mut poller);
        assert!(!poller.is_ready(fd), "the same bytes are not reported twice");
        peer.write_all(b"+PING\r\n").expect("write");
        refresh(&mut poller);
        assert!(poller.is_ready(fd), "a second arrival is a new edge, even with the first unread");
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
