//! For the sinks' unit tests: a worker core to run a future on, and an address where
//! nothing listens.

use shotover_executor::{RuntimeConfig, WorkerFactory, Workers};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Runs the future `make` returns on a worker core of its own and returns its output.
pub fn on_a_core<T, F, Fut>(make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let (sender, receiver) = mpsc::channel();
    let job = Mutex::new(Some((make, sender)));
    let factory: WorkerFactory = Arc::new(move |ctx| {
        let job = job.lock().ok().and_then(|mut job| job.take());
        Box::pin(async move {
            ctx.ready();
            if let Some((make, sender)) = job {
                let _ = sender.send(make().await);
            }
        })
    });
    let workers = Workers::start(&RuntimeConfig::default(), vec![Vec::new()], factory).expect("a worker core starts");
    let output = receiver.recv_timeout(Duration::from_secs(30)).expect("the test future ran to its end");
    assert!(workers.join(), "the worker core ended cleanly");
    output
}

/// An address on 127.0.0.1 where nothing listens: a connection to it is refused at once.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = listener.local_addr().expect("its address");
    drop(listener);
    address
}
