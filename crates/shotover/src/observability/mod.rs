//! Metrics and the observability HTTP interface.
//!
//! - [`metrics`]: each worker core records into its own registry ([`CoreMetrics`]) so no
//!   two cores ever touch the same counter; a scrape sums them ([`MetricsHub::render`]).
//! - [`http`]: the control core's HTTP server: `GET /metrics`, `PUT`/`POST /filter`.

pub mod distribution;
pub mod http;
pub mod metrics;

pub use metrics::{CoreMetrics, MetricsHub};
