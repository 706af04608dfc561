//! The observability HTTP server on the control core.
//!
//! - `GET /metrics`: Prometheus text, every core summed.
//! - `PUT /filter` or `POST /filter`: the body is a new log filter (env_filter syntax).

use super::MetricsHub;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tiny_http::{Header, Method, Response, Server};

/// Changes the log filter; returns an error message for a bad filter.
pub type FilterSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Binds the interface now (so a bad address is a startup error) and serves it on a thread
/// of its own, the control core's. With `wait_for_port` (a hot reload, whose old instance
/// keeps the port until it exits) a port in use is retried in the background instead.
pub fn start(
    addr: SocketAddr,
    hub: Arc<MetricsHub>,
    set_filter: FilterSetter,
    control_cpu: Option<usize>,
    wait_for_port: bool,
) -> Result<()> {
    let first = Server::http(addr);
    let first = match first {
        Ok(server) => {
            tracing::info!("observability interface on http://{addr}/metrics");
            Some(server)
        }
        Err(e) if wait_for_port => {
            tracing::info!(
                "observability interface {addr} is still held by the previous instance ({e}); retrying until it exits"
            );
            None
        }
        Err(e) => {
            return Err(anyhow::anyhow!("{e}"))
                .with_context(|| format!("cannot serve the observability interface on {addr}"))
        }
    };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            if let Some(cpu) = control_cpu {
                core_pin(cpu);
            }
            let server = match first {
                Some(server) => server,
                None => loop {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    if let Ok(server) = Server::http(addr) {
                        tracing::info!("observability interface on http://{addr}/metrics");
                        break server;
                    }
                },
            };
            for mut request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or_default().to_string();
                let response = match (request.method(), path.as_str()) {
                    (Method::Get, "/metrics") => {
                        let response = Response::from_string(hub.render());
                        match Header::from_bytes("Content-Type", "text/plain; version=0.0.4") {
                            Ok(header) => response.with_header(header),
                            Err(()) => response,
                        }
                    }
                    (Method::Put | Method::Post, "/filter") => {
                        let mut body = String::new();
                        match request.as_reader().read_to_string(&mut body) {
                            Err(e) => Response::from_string(format!("cannot read body: {e}\n")).with_status_code(400),
                            Ok(_) => match set_filter(body.trim()) {
                                Ok(()) => {
                                    tracing::info!("log filter set to {:?}", body.trim());
                                    Response::from_string("log filter updated\n")
                                }
                                Err(e) => Response::from_string(format!("invalid filter: {e}\n")).with_status_code(400),
                            },
                        }
                    }
                    _ => Response::from_string("not found: try GET /metrics or PUT /filter\n").with_status_code(404),
                };
                if let Err(e) = request.respond(response) {
                    tracing::debug!("observability client went away: {e}");
                }
            }
        })
        .context("cannot start the control thread")?;
    Ok(())
}

fn core_pin(cpu: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        tracing::warn!("cannot pin the control core to CPU {cpu}");
    }
}
