//! The observability HTTP endpoints, served on the control core.
//!
//! - `GET /metrics`: Prometheus text, every core summed.
//! - `PUT /filter` or `POST /filter`: the body is a new log filter (env_filter syntax).

use super::MetricsHub;
use anyhow::Result;
use shotover_executor::control::{HttpHandler, HttpResponse};
use shotover_executor::ControlHandle;
use std::net::SocketAddr;
use std::sync::Arc;

/// Changes the log filter; returns an error message for a bad filter.
pub type FilterSetter = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Binds the interface now (so a bad address is a startup error) and serves it on the
/// control core. With `wait_for_port` (a hot reload, whose old instance keeps the port until
/// it exits) a port in use is retried in the background instead.
pub fn start(
    addr: SocketAddr,
    hub: Arc<MetricsHub>,
    set_filter: FilterSetter,
    control: &ControlHandle,
    wait_for_port: bool,
) -> Result<()> {
    let handler: HttpHandler = Arc::new(move |request| match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/metrics") => {
            HttpResponse { status: 200, content_type: "text/plain; version=0.0.4", body: hub.render() }
        }
        ("PUT" | "POST", "/filter") => match std::str::from_utf8(&request.body) {
            Err(e) => HttpResponse::text(400, format!("cannot read body: {e}\n")),
            Ok(body) => match set_filter(body.trim()) {
                Ok(()) => {
                    tracing::info!("log filter set to {:?}", body.trim());
                    HttpResponse::text(200, "log filter updated\n")
                }
                Err(e) => HttpResponse::text(400, format!("invalid filter: {e}\n")),
            },
        },
        _ => HttpResponse::text(404, "not found: try GET /metrics or PUT /filter\n"),
    });
    control.serve_http(addr, "observability interface", wait_for_port, handler)
}
