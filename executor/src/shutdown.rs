//! Per-core signals for the tasks of one worker core.
//!
//! - [`Shutdown`]: every connection task registers once and polls its [`ShutdownHandle`]
//!   alongside its sockets. [`Shutdown::trigger`] asks every connection to drain (finish
//!   what the client sends, close once it pauses); [`Shutdown::close_some`] asks a few
//!   connections to close now, which is how gradual shutdown spreads closes over time.
//! - [`AcceptGate`]: tells the accept loops whether to accept, pause (listeners kept, for a
//!   hot reload that may still fail), or stop for good.
//!
//! Both are single-threaded (`Rc`, `Cell`): they live on one core and cost no atomics.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// What a connection is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// Keep serving while the client is busy; close once it pauses.
    Drain,
    /// Close now, between two batches.
    Close,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    /// Closed individually by [`Shutdown::close_some`].
    closed: bool,
}

#[derive(Default)]
struct Inner {
    triggered: Cell<bool>,
    /// When the core stops waiting for its connections, once shutdown started.
    deadline: Cell<Option<Instant>>,
    /// One slot per registered task; `None` marks a free slot.
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
}

/// The signal, cloned cheaply within one core.
#[derive(Clone, Default)]
pub struct Shutdown(Rc<Inner>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every registered task to drain; [`ShutdownHandle::poll`] is ready from now on.
    pub fn trigger(&self, deadline: Instant) {
        self.0.triggered.set(true);
        self.set_deadline(deadline);
        for slot in self.0.slots.borrow_mut().iter_mut().flatten() {
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// Asks up to `n` connections that were not asked yet to close now. Returns how many.
    pub fn close_some(&self, n: usize) -> usize {
        let mut closed = 0;
        for slot in self.0.slots.borrow_mut().iter_mut().flatten() {
            if closed == n {
                break;
            }
            if !slot.closed {
                slot.closed = true;
                closed += 1;
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
            }
        }
        closed
    }

    /// Registered tasks not yet asked to close.
    pub fn open(&self) -> usize {
        self.0.slots.borrow().iter().flatten().filter(|s| !s.closed).count()
    }

    pub fn is_triggered(&self) -> bool {
        self.0.triggered.get()
    }

    /// Moves the time after which the core stops waiting for its connections.
    pub fn set_deadline(&self, deadline: Instant) {
        let later = self.0.deadline.get().map_or(deadline, |d| d.max(deadline));
        self.0.deadline.set(Some(later));
    }

    /// True once a deadline was set and has passed.
    pub fn past_deadline(&self) -> bool {
        self.0.deadline.get().is_some_and(|d| Instant::now() >= d)
    }

    /// Registers a task. The slot is freed when the handle drops.
    pub fn register(&self) -> ShutdownHandle {
        let slot = match self.0.free.borrow_mut().pop() {
            Some(i) => {
                if let Some(entry) = self.0.slots.borrow_mut().get_mut(i) {
                    *entry = Some(Slot::default());
                }
                i
            }
            None => {
                let mut slots = self.0.slots.borrow_mut();
                slots.push(Some(Slot::default()));
                slots.len() - 1
            }
        };
        ShutdownHandle { inner: self.0.clone(), slot }
    }
}

/// One task's view of the signal.
pub struct ShutdownHandle {
    inner: Rc<Inner>,
    slot: usize,
}

impl ShutdownHandle {
    /// Ready once this task was asked to close or drain; otherwise stores the waker (no
    /// allocation when the same task polls again).
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<ShutdownKind> {
        let mut slots = self.inner.slots.borrow_mut();
        let Some(Some(slot)) = slots.get_mut(self.slot) else { return Poll::Ready(ShutdownKind::Close) };
        if slot.closed {
            return Poll::Ready(ShutdownKind::Close);
        }
        if self.inner.triggered.get() {
            return Poll::Ready(ShutdownKind::Drain);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }
}

impl Drop for ShutdownHandle {
    fn drop(&mut self) {
        if let Some(entry) = self.inner.slots.borrow_mut().get_mut(self.slot) {
            *entry = None;
        }
        self.inner.free.borrow_mut().push(self.slot);
    }
}

/// Whether accept loops take new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptState {
    Accepting,
    /// Listeners kept but not accepted from: a new instance has them and may take over.
    Paused,
    /// Listeners dropped for good: the core is shutting down.
    Closed,
}

#[derive(Default)]
struct GateInner {
    state: Cell<Option<AcceptState>>,
    wakers: RefCell<Vec<Waker>>,
}

/// The accept state of one core, polled by its accept loops.
#[derive(Clone, Default)]
pub struct AcceptGate(Rc<GateInner>);

impl AcceptGate {
    pub fn state(&self) -> AcceptState {
        self.0.state.get().unwrap_or(AcceptState::Accepting)
    }

    pub fn set(&self, state: AcceptState) {
        if self.state() == state || self.state() == AcceptState::Closed {
            return;
        }
        self.0.state.set(Some(state));
        for w in self.0.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until the state is no longer `from`, and returns the new state.
    pub async fn changed_from(&self, from: AcceptState) -> AcceptState {
        std::future::poll_fn(|cx| {
            let now = self.state();
            if now != from {
                return Poll::Ready(now);
            }
            let mut wakers = self.0.wakers.borrow_mut();
            // Accept loops poll this once per accepted connection: keep one waker per task.
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn close_some_closes_only_that_many() {
        let shutdown = Shutdown::new();
        let handles: Vec<_> = (0..5).map(|_| shutdown.register()).collect();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(shutdown.close_some(2), 2);
        let ready = handles.iter().filter(|h| h.poll(&mut cx) == Poll::Ready(ShutdownKind::Close)).count();
        assert_eq!(ready, 2);
        assert_eq!(shutdown.open(), 3);
        assert_eq!(shutdown.close_some(10), 3);
        assert_eq!(shutdown.open(), 0);
        drop(handles);
        let again = shutdown.register();
        assert_eq!(again.poll(&mut cx), Poll::Pending, "a reused slot starts open");
    }
}
