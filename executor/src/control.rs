//! The control core: one thread, off the data path, for everything global to the process.
//!
//! It runs a current-thread tokio runtime, pinned to the control CPU when one is given, and
//! serves on it:
//! - periodic jobs ([`ControlHandle::every_tick`]), every [`TICK`] in registration order;
//!   RequestThrottling's cross-core rate shares are such a job;
//! - HTTP endpoints ([`ControlHandle::serve_http`]): `/metrics` and `/filter`, and Tee's
//!   result-source switch;
//! - the hot reload socket ([`crate::fd_handoff`]), through [`ControlHandle::spawn`];
//! - later, anything that needs tokio (a KMS client).
//!
//! Workers never wait for it: jobs only read and write atomics the workers also use, and
//! nothing on a worker blocks on this thread.

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often the jobs run.
pub const TICK: Duration = Duration::from_millis(10);
/// How often a port still held by the previous instance (hot reload) is tried again.
const PORT_RETRY: Duration = Duration::from_millis(200);

/// The largest request body a control endpoint reads; past it the answer is 400.
const MAX_HTTP_BODY: usize = 64 * 1024;

/// A periodic job; it is given the time since its previous run.
pub type TickJob = Box<dyn FnMut(Duration) + Send>;

/// One HTTP request to a control endpoint, body read in full.
#[derive(Debug)]
pub struct HttpRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub body: Bytes,
}

/// The answer to an [`HttpRequest`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl HttpResponse {
    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        HttpResponse { status, content_type: "text/plain; charset=utf-8", body: body.into() }
    }
}

/// Channels between worker cores and tasks on the control core ([`ControlHandle::spawn`]):
/// a worker sends without blocking and awaits a `oneshot` answer, which works from any
/// executor.
pub mod channel {
    pub use tokio::sync::{mpsc, oneshot};
}

/// Answers the requests of one HTTP endpoint; runs on the control thread.
pub type HttpHandler = Arc<dyn Fn(HttpRequest) -> HttpResponse + Send + Sync>;

#[derive(Default)]
struct Jobs {
    list: Mutex<Vec<(TickJob, Instant)>>,
    added: Notify,
}

/// Hands work to the control thread. Cheap to clone and `Send`: every core holds one.
#[derive(Clone)]
pub struct ControlHandle {
    jobs: Arc<Jobs>,
    runtime: Option<tokio::runtime::Handle>,
}

impl ControlHandle {
    /// A handle whose jobs never run and that serves nothing, for unit tests and benchmarks
    /// without a control thread.
    pub fn detached() -> Self {
        ControlHandle { jobs: Arc::default(), runtime: None }
    }

    /// Runs `job` on the control thread every tick from now on.
    pub fn every_tick(&self, job: TickJob) {
        if let Ok(mut list) = self.jobs.list.lock() {
            list.push((job, Instant::now()));
        }
        self.jobs.added.notify_one();
    }

    /// Runs `future` on the control thread. It must never block: it shares the thread with
    /// the tick jobs and the HTTP endpoints.
    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(future)),
            None => tracing::warn!("no control core: a control task was not started"),
        }
    }

    /// Serves HTTP on `addr` with `handler`. The port is bound now, so that a bad or busy
    /// address is a startup error, unless `wait_for_port` (a hot reload, whose previous
    /// instance holds the port until it exits): then it is tried again until free.
    /// `name` is for logs.
    pub fn serve_http(
        &self,
        addr: SocketAddr,
        name: &'static str,
        wait_for_port: bool,
        handler: HttpHandler,
    ) -> Result<()> {
        let Some(runtime) = &self.runtime else {
            return Err(anyhow!("no control core to serve the {name} on {addr}"));
        };
        let first = match std::net::TcpListener::bind(addr) {
            Ok(listener) => Some(listener),
            Err(e) if wait_for_port => {
                tracing::info!("{name} {addr} is still held by the previous instance ({e}); retrying until it exits");
                None
            }
            Err(e) => return Err(e).with_context(|| format!("cannot serve the {name} on {addr}")),
        };
        if let Some(listener) = &first {
            listener.set_nonblocking(true).context("set the HTTP listener non-blocking")?;
        }
        runtime.spawn(async move {
            let listener = match first {
                Some(listener) => tokio::net::TcpListener::from_std(listener),
                None => loop {
                    tokio::time::sleep(PORT_RETRY).await;
                    if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
                        break Ok(listener);
                    }
                },
            };
            match listener {
                Ok(listener) => serve_http(listener, name, handler).await,
                Err(e) => tracing::error!("cannot serve the {name} on {addr}: {e}"),
            }
        });
        Ok(())
    }
}

async fn serve_http(listener: tokio::net::TcpListener, name: &'static str, handler: HttpHandler) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("{name} on http://{addr}");
    }
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of fds, for example: wait rather than spin.
                tracing::warn!("{name}: accept failed: {e}");
                tokio::time::sleep(PORT_RETRY).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, hyper::Error>(answer(request, &handler).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!("{name}: client went away: {e}");
            }
        });
    }
}

async fn answer(request: hyper::Request<hyper::body::Incoming>, handler: &HttpHandler) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    // A control endpoint takes a few bytes (a log filter, a chain name): a client may not
    // make the control core hold more.
    let response = match http_body_util::Limited::new(body, MAX_HTTP_BODY).collect().await {
        Ok(body) => handler(HttpRequest {
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            body: body.to_bytes(),
        }),
        Err(e) => HttpResponse::text(400, format!("cannot read body: {e}\n")),
    };
    let mut answer = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *answer.status_mut() = hyper::StatusCode::from_u16(response.status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(value) = hyper::header::HeaderValue::from_str(response.content_type) {
        answer.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    answer
}

/// Waits for `duration` in a task on the control core (see [`ControlHandle::spawn`]).
pub async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Runs the tick jobs; sleeps while there are none.
async fn run_jobs(jobs: Arc<Jobs>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let idle = match jobs.list.lock() {
            Ok(mut list) => {
                let now = Instant::now();
                for (job, last) in list.iter_mut() {
                    job(now.duration_since(*last));
                    *last = now;
                }
                list.is_empty()
            }
            Err(_) => return,
        };
        if idle {
            jobs.added.notified().await;
        } else {
            interval.tick().await;
        }
    }
}

/// Starts the control thread, pinned to `cpu` when given.
pub fn start(cpu: Option<usize>) -> Result<ControlHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the control core's runtime")?;
    let handle = runtime.handle().clone();
    let jobs: Arc<Jobs> = Arc::default();
    let thread_jobs = jobs.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                    tracing::warn!("cannot pin the control core to CPU {cpu}");
                }
            }
            runtime.block_on(run_jobs(thread_jobs));
        })
        .context("cannot start the control core")?;
    Ok(ControlHandle { jobs, runtime: Some(handle) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
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

    #[test]
    fn http_endpoint_answers_on_the_control_thread() {
        let control = start(None).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let handler: HttpHandler = Arc::new(|request| {
            let thread = std::thread::current().name().unwrap_or_default().to_string();
            HttpResponse::text(201, format!("{} {} {:?} {thread}", request.method, request.path, request.body))
        });
        control.serve_http(addr, "test endpoint", false, handler).unwrap();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"PUT /x?y=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
        assert!(answer.ends_with("PUT /x b\"abc\" control"), "{answer}");
        // A port in use is a startup error.
        let err =
            control.serve_http(addr, "test endpoint", false, Arc::new(|_| HttpResponse::text(200, ""))).unwrap_err();
        assert!(format!("{err:#}").contains("cannot serve the test endpoint"), "{err:#}");
        // A body past the limit is not read: 400, and the handler never sees it.
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let head =
            format!("PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", MAX_HTTP_BODY + 1);
        stream.write_all(head.as_bytes()).unwrap();
        let _ = stream.write_all(&vec![b'a'; MAX_HTTP_BODY + 1]);
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
}
