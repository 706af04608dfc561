//! The control core: one thread, off the data path, for work that is global to the process.
//!
//! Jobs registered with [`ControlHandle::every_tick`] run on it every [`TICK`], in
//! registration order; RequestThrottling's cross-core rate shares are such a job. Workers
//! never wait for it: a job only reads and writes atomics the workers also use. The
//! thread sleeps while it has no job, and is pinned to the control CPU when one is given.

use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How often the jobs run.
pub const TICK: Duration = Duration::from_millis(10);

/// A periodic job; it is given the time since its previous run.
pub type TickJob = Box<dyn FnMut(Duration) + Send>;

#[derive(Default)]
struct Jobs {
    list: Vec<(TickJob, Instant)>,
}

/// Registers jobs on the control thread. Cheap to clone and `Send`: every core holds one.
#[derive(Clone)]
pub struct ControlHandle {
    jobs: Arc<Mutex<Jobs>>,
    thread: Option<Thread>,
}

impl ControlHandle {
    /// A handle whose jobs never run, for unit tests and benchmarks without a control thread.
    pub fn detached() -> Self {
        ControlHandle { jobs: Arc::default(), thread: None }
    }

    /// Runs `job` on the control thread every tick from now on.
    pub fn every_tick(&self, job: TickJob) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.list.push((job, Instant::now()));
        }
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }
}

/// Starts the control thread, pinned to `cpu` when given.
pub fn start(cpu: Option<usize>) -> std::io::Result<ControlHandle> {
    let jobs: Arc<Mutex<Jobs>> = Arc::default();
    let thread_jobs = jobs.clone();
    let handle = std::thread::Builder::new().name("control-tick".into()).spawn(move || {
        if let Some(cpu) = cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                tracing::warn!("cannot pin the control core to CPU {cpu}");
            }
        }
        loop {
            let idle = match thread_jobs.lock() {
                Ok(mut jobs) => {
                    let now = Instant::now();
                    for (job, last) in jobs.list.iter_mut() {
                        job(now.duration_since(*last));
                        *last = now;
                    }
                    jobs.list.is_empty()
                }
                Err(_) => return,
            };
            if idle {
                std::thread::park();
            } else {
                std::thread::sleep(TICK);
            }
        }
    })?;
    Ok(ControlHandle { jobs, thread: Some(handle.thread().clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn jobs_run_every_tick() {
        let control = start(None).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        control.every_tick(Box::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        std::thread::sleep(Duration::from_millis(200));
        let n = runs.load(Ordering::Relaxed);
        assert!((5..=25).contains(&n), "{n} runs in 200 ms");
    }
}
