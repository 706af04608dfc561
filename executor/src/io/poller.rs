//! The core's busy poller: one edge-triggered `epoll_wait(0)` says which spinning sockets
//! received data, and wakes the reads that wait for them through io_uring.

use super::contention::share_cpu;
use super::{REFRESH_AFTER, UNCLOCKED_ASKS};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::cell::RefCell;
use std::os::fd::{BorrowedFd, RawFd};
use std::task::Waker;
use std::time::Instant;

thread_local! {
    pub(super) static POLLER: RefCell<Option<BusyPoller>> = const { RefCell::new(None) };
}

/// Readiness of a core's spinning sockets, from one `epoll_wait(0)` for all of them.
pub struct BusyPoller {
    epoll: Epoll,
    /// Bit `fd` is set when `fd` received data since its reader last asked (edge-triggered:
    /// a bit stays set until [`BusyPoller::clear`], as epoll reports each arrival once).
    ready: Vec<u64>,
    refreshed_at: Instant,
    /// Asks of [`BusyPoller::refresh_if_stale`] still to answer "fresh" without reading the
    /// clock.
    unclocked_asks: u8,
    events: Vec<EpollEvent>,
    /// Tasks whose read of fd `i` waits for readiness through io_uring. While the core
    /// spins, glommio reaps io_uring completions only at its preemption timer (100 ms), so
    /// such a read would wait that long for data that came in long before: the poller,
    /// which sees the arrival within [`REFRESH_AFTER`], wakes the task instead.
    waiting: Vec<Option<Waker>>,
}

impl BusyPoller {
    pub(super) fn new() -> Option<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).ok()?;
        Some(BusyPoller {
            epoll,
            ready: Vec::new(),
            refreshed_at: Instant::now(),
            unclocked_asks: 0,
            events: vec![EpollEvent::empty(); 256],
            waiting: Vec::new(),
        })
    }

    /// Adds `fd`, edge-triggered. Its caller has just found it empty, so any later arrival
    /// is an edge (and data that came in between is reported too: adding a socket that has
    /// data queues it as ready). A closed fd leaves the set by itself.
    pub(super) fn register(&self, fd: RawFd) -> bool {
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

    pub(super) fn is_ready(&self, fd: RawFd) -> bool {
        let (word, mask) = Self::bit(fd);
        self.ready.get(word).is_some_and(|w| w & mask != 0)
    }

    pub(super) fn clear(&mut self, fd: RawFd) {
        let (word, mask) = Self::bit(fd);
        if let Some(w) = self.ready.get_mut(word) {
            *w &= !mask;
        }
    }

    /// True if `fd` received data since its reader last asked; the flag is cleared.
    pub(super) fn take(&mut self, fd: RawFd) -> bool {
        let ready = self.is_ready(fd);
        if ready {
            self.clear(fd);
        }
        ready
    }

    pub(super) fn refresh_if_stale(&mut self) {
        // Every spinning read of the core asks, a few hundred nanoseconds apart when many
        // spin: after a look at the clock found the list fresh, the next few asks do not
        // read the clock again (it was 2 % of a busy core's time).
        if self.unclocked_asks > 0 {
            self.unclocked_asks -= 1;
            return;
        }
        let now = Instant::now();
        if now.saturating_duration_since(self.refreshed_at) < REFRESH_AFTER {
            self.unclocked_asks = UNCLOCKED_ASKS;
            return;
        }
        self.refreshed_at = share_cpu(now);
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
            // Waking only queues the task: nothing runs inside this borrow of the poller.
            if let Some(waker) = self.waiting.get_mut(event.data() as usize).and_then(Option::take) {
                waker.wake();
            }
        }
    }

    /// Remembers that the task of `waker` waits, through io_uring, for `fd` to be readable.
    pub(super) fn wait_for(&mut self, fd: RawFd, waker: &Waker) {
        let Ok(at) = usize::try_from(fd) else { return };
        if self.waiting.len() <= at {
            self.waiting.resize(at + 1, None);
        }
        if let Some(slot) = self.waiting.get_mut(at) {
            match slot {
                Some(old) if old.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
}
