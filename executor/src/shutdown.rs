//! A per-core shutdown signal for connection tasks.
//!
//! Each connection registers once and gets a [`ShutdownHandle`] that it polls alongside its
//! sockets. Triggering wakes every registered task. Single-threaded (`Rc`, `Cell`): it lives
//! on one core and costs no atomics on the data path.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Inner {
    triggered: Cell<bool>,
    /// One slot per registered task; `None` marks a free slot.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

/// The signal, cloned cheaply within one core.
#[derive(Clone, Default)]
pub struct Shutdown(Rc<Inner>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every registered task; [`ShutdownHandle::poll`] is ready from now on.
    pub fn trigger(&self) {
        self.0.triggered.set(true);
        for waker in self.0.wakers.borrow_mut().iter_mut() {
            if let Some(w) = waker.take() {
                w.wake();
            }
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.0.triggered.get()
    }

    /// Registers a task. The slot is freed when the handle drops.
    pub fn register(&self) -> ShutdownHandle {
        let slot = match self.0.free.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                let mut wakers = self.0.wakers.borrow_mut();
                wakers.push(None);
                wakers.len() - 1
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
    /// Ready once shutdown was triggered; otherwise stores the waker (no allocation when the
    /// same task polls again).
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.triggered.get() {
            return Poll::Ready(());
        }
        if let Some(entry) = self.inner.wakers.borrow_mut().get_mut(self.slot) {
            match entry {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *entry = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }
}

impl Drop for ShutdownHandle {
    fn drop(&mut self) {
        if let Some(entry) = self.inner.wakers.borrow_mut().get_mut(self.slot) {
            *entry = None;
        }
        self.inner.free.borrow_mut().push(self.slot);
    }
}
