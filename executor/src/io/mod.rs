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
//! A read that does not spin (the core was quiet when it started, or it spun [`SPIN_READS`]
//! times) waits through glommio's io_uring poll. But glommio reaps io_uring completions only
//! when its task queue runs dry or at its preemption timer (100 ms), and a spinning core's
//! queue never runs dry: such a read waited up to 100 ms for bytes that had long arrived
//! (valkey-benchmark's maximum latency through the proxy was 100 ms in every run). So each
//! such read also leaves its waker with the busy poller, which wakes it when it sees the fd
//! receive data, and a read whose data the poller saw takes it with a plain `recv`,
//! spinning or not ([`read_unspun`], which `rt::TcpStream` reads through: so do rustls and
//! tungstenite).
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
//! A contended core then **shares** (`SpinMode::Share`, in `contention`) for
//! [`CONTENTION_BACKOFF`]: it still polls, but gives the CPU away (`sched_yield`) before each
//! busy-poller refresh. The threads that want the CPU on a proxy's box are mostly the server and
//! the clients, which each run a moment and wait again; a yield hands them the CPU at once, and the
//! core gets it back without the wake-up interrupt that parking costs. (Parking on every read
//! instead, as this proxy did first, made two workers on a 2-CPU box shared with Valkey and the
//! client 0.64–0.82 of one worker.) But a thread that keeps the CPU (a batch job) takes a whole
//! time slice at every other yield: [`SLOW_YIELDS_TO_PARK`] yields within [`SLOW_YIELD_WINDOW`]
//! that each take over [`SLOW_YIELD`] **park** the core (`SpinMode::Park`: no spinning, every read
//! waits for readiness) for the backoff.

mod contention;
mod poller;

pub use contention::last_arrival;
use contention::{data_arrived, may_spin};
use poller::{BusyPoller, POLLER};

use crate::rt::TcpStream;
use bytes::BytesMut;
use futures_lite::io::AsyncRead;
use nix::sys::socket::{recv, MsgFlags};
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

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
/// After a clock reading found the busy poller's list fresh, this many more asks take it as
/// fresh without reading the clock. The bound is in asks, not time: on a busy core they come
/// a few hundred nanoseconds apart (a refresh about a microsecond late); after a quiet spell
/// the first few asks of the next burst may take an old list, costing them one more spin each.
pub const UNCLOCKED_ASKS: u8 = 4;
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
    /// Every read lands here first and is then appended to its connection's buffer, so
    /// no buffer is zero-filled before a read that may find nothing.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
}

/// Reads socket `fd` for a read that does not spin: what the core's busy poller saw arrive is
/// taken with a plain `recv`; otherwise `wait` (glommio's read, which waits through an
/// io_uring poll) is asked, and if it must wait, the busy poller is also told to wake the
/// task when `fd` receives data. glommio reaps io_uring completions only when its task queue
/// runs dry or at its preemption timer (100 ms), and a core whose reads spin never runs dry:
/// without the poller such a read waited up to 100 ms for bytes that had long arrived.
/// `registered` says whether `fd` is in the poller yet.
pub(crate) fn read_unspun(
    fd: RawFd,
    registered: &mut bool,
    cx: &mut Context<'_>,
    buf: &mut [u8],
    wait: impl FnOnce(&mut Context<'_>, &mut [u8]) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<usize>> {
    if *registered && poller_saw(fd) {
        match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => return Poll::Ready(Ok(n)),
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
    let result = wait(cx, buf);
    if result.is_pending() {
        wake_on_arrival(fd, registered, cx.waker());
    }
    result
}

/// True (and forgotten) if the core's busy poller saw data arrive on `fd` since its reader
/// last asked. Does not ask the kernel again.
fn poller_saw(fd: RawFd) -> bool {
    POLLER.with(|p| p.borrow_mut().as_mut().is_some_and(|poller| poller.take(fd)))
}

/// Runs `f` on the core's busy poller (made on first use) with `fd` in it, registering it
/// first if `registered` says it is not yet; `None` when there is no poller or `fd` cannot
/// join it.
fn with_registered<T>(fd: RawFd, registered: &mut bool, f: impl FnOnce(&mut BusyPoller) -> T) -> Option<T> {
    POLLER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = BusyPoller::new();
        }
        let poller = p.as_mut()?;
        if !*registered {
            *registered = poller.register(fd);
        }
        registered.then(|| f(poller))
    })
}

/// Has the core's busy poller wake `waker` when `fd` receives data (see
/// [`BusyPoller::waiting`]); at once if the poller already saw data.
fn wake_on_arrival(fd: RawFd, registered: &mut bool, waker: &Waker) {
    with_registered(fd, registered, |poller| {
        if poller.is_ready(fd) {
            waker.wake_by_ref();
        } else {
            poller.wait_for(fd, waker);
        }
    });
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
    /// The last read missed while spinning: the next one spins again without asking
    /// [`may_spin`], whose clock reading cost more than the rest of a miss (a run of misses
    /// is bounded by [`SPIN_READS`]).
    spinning: bool,
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
            let spinning = stream.spin_fd().filter(|_| mode == ReadMode::Spin && (self.spinning || may_spin()));
            self.spinning = false;
            let direct = match spinning {
                // The first try reads directly: data is often already there. Later tries
                // read only when the busy poller saw data.
                Some(fd) if self.misses == 0 || self.poller_says_ready(fd) => Some(fd),
                Some(_) if self.misses < SPIN_READS => {
                    self.misses += 1;
                    self.spinning = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                _ => None,
            };
            let result = if let Some(fd) = direct {
                match recv(fd, &mut scratch[..], MsgFlags::MSG_DONTWAIT) {
                    Ok(n) => Poll::Ready(Ok(n)),
                    Err(nix::errno::Errno::EAGAIN) => {
                        self.misses += 1;
                        self.spinning = true;
                        // Yield: run the core's other tasks, then try again.
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Err(e) => Poll::Ready(Err(e.into())),
                }
            } else {
                // A TCP stream's own read does not wait for glommio's late reaping either
                // (`read_unspun`), TLS included.
                Pin::new(&mut *stream).poll_read(cx, &mut scratch[..])
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
        with_registered(fd, &mut self.registered, |poller| {
            if !poller.is_ready(fd) {
                poller.refresh_if_stale();
            }
            poller.take(fd)
        })
        .unwrap_or(true)
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

    /// A TCP stream whose glommio read would answer only when glommio reaps its io_uring
    /// poll: never, here. It reads as `rt::TcpStream` does, through [`read_unspun`].
    struct UnreapedPoll(std::os::unix::net::UnixStream, bool);

    impl AsyncRead for UnreapedPoll {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            read_unspun(this.0.as_raw_fd(), &mut this.1, cx, buf, |_, _| Poll::Pending)
        }
    }

    impl SpinRead for UnreapedPoll {
        fn spin_fd(&self) -> Option<RawFd> {
            Some(self.0.as_raw_fd())
        }
    }

    struct CountWakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_read_left_waiting_on_io_uring_is_woken_and_served_by_the_busy_poller() {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let (mut peer, socket) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let mut stream = UnreapedPoll(socket, false);
        let wakes = std::sync::Arc::new(CountWakes(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut read = ReadBuffer::default();
        let refresh = || {
            // What another connection's spinning read does.
            std::thread::sleep(REFRESH_AFTER * 2);
            POLLER.with(|p| p.borrow_mut().as_mut().expect("poller").refresh_if_stale());
        };
        // The core is quiet (no data yet on this thread): the read waits through glommio.
        assert!(read.poll_fill(&mut stream, &mut cx, ReadMode::Spin).is_pending());
        peer.write_all(b"+PONG\r\n").expect("write");
        refresh();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "the waiting task was not woken");
        // And the bytes are read although glommio's poll never completes.
        assert!(matches!(read.poll_fill(&mut stream, &mut cx, ReadMode::Spin), Poll::Ready(Ok(7))));
        assert_eq!(&read.buf[..], b"+PONG\r\n");
        // Bytes the poller saw before anyone waited are read at once, by a read that never
        // spins too (a sink's wait for pushed messages, or rustls under TLS).
        peer.write_all(b"+PONG\r\n").expect("write");
        refresh();
        assert!(matches!(read.poll_fill(&mut stream, &mut cx, ReadMode::Wait), Poll::Ready(Ok(7))));
        assert!(read.poll_fill(&mut stream, &mut cx, ReadMode::Wait).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }
}
