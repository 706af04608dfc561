//! Per-core metric registries, summed on scrape.

use super::distribution::{Distribution, DistributionVec, Windows};
use prometheus::core::Collector;
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The metrics of one worker core. Cloning shares the same metrics (on the same core).
#[derive(Clone)]
pub struct CoreMetrics {
    pub core: usize,
    pub transform_total: IntCounterVec,
    pub transform_failures: IntCounterVec,
    pub transform_latency: DistributionVec,
    pub chain_total: IntCounterVec,
    pub chain_failures: IntCounterVec,
    pub chain_latency: DistributionVec,
    pub chain_requests_batch: DistributionVec,
    pub chain_responses_batch: DistributionVec,
    pub connections_opened: IntCounterVec,
    pub source_to_sink_latency: DistributionVec,
    pub sink_to_source_latency: DistributionVec,
    pub failed_requests: IntCounterVec,
    pub query_count: IntCounterVec,
    pub tee_dropped_messages: IntCounterVec,
    pub throttled_requests: IntCounterVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub cache_invalidations: IntCounterVec,
    pub cache_errors: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

/// A latency or batch-size distribution, shown as a summary of the last minute (see
/// [`super::distribution`]).
fn distribution(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> DistributionVec {
    register(registry, DistributionVec::new(name, help, labels))
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<C>) -> C {
    // The names and labels are constants of this file, so these cannot fail; if they ever
    // did, an unregistered metric still counts, it is only missing from /metrics.
    match metric {
        Ok(m) => {
            if let Err(e) = registry.register(Box::new(m.clone())) {
                tracing::error!("cannot register metric: {e}");
            }
            m
        }
        Err(e) => panic!("invalid metric definition: {e}"),
    }
}

/// One sink's `shotover_source_to_sink_latency_seconds`.
#[derive(Clone)]
pub struct SourceToSink(Distribution);

impl SourceToSink {
    /// A batch was written to the sink (or handed to a shared connection's outbox): observes
    /// the time since its first request was read from the client. `None` (a request the
    /// proxy made itself, or an empty batch) observes nothing.
    pub fn written(&self, first_received_at: Option<std::time::Instant>) {
        if let Some(at) = first_received_at {
            self.0.observe(at.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
impl SourceToSink {
    /// One that no registry shows, for unit tests of a sink.
    pub fn unregistered() -> Self {
        SourceToSink(Distribution::unregistered())
    }
}

impl CoreMetrics {
    /// The source-to-sink latency of the sink named `sink` (its transform name).
    pub fn source_to_sink(&self, sink: &str) -> SourceToSink {
        SourceToSink(self.source_to_sink_latency.with_label_values(&[sink]))
    }

    /// Creates the metrics of worker `core` in its own registry.
    pub fn new(core: usize, registry: &Registry) -> Self {
        let r = registry;
        CoreMetrics {
            core,
            transform_total: counter(
                r,
                "shotover_transform_total_count",
                "Times the transform was used",
                &["transform"],
            ),
            transform_failures: counter(
                r,
                "shotover_transform_failures_count",
                "Times the transform failed",
                &["transform"],
            ),
            transform_latency: distribution(
                r,
                "shotover_transform_latency_seconds",
                "Latency of a message batch through the transform",
                &["transform"],
            ),
            chain_total: counter(r, "shotover_chain_total_count", "Times the chain was used", &["chain"]),
            chain_failures: counter(r, "shotover_chain_failures_count", "Times the chain failed", &["chain"]),
            chain_latency: distribution(
                r,
                "shotover_chain_latency_seconds",
                "Latency of running the chain",
                &["chain"],
            ),
            chain_requests_batch: distribution(
                r,
                "shotover_chain_requests_batch_size",
                "Requests in each batch passing through the chain",
                &["chain"],
            ),
            chain_responses_batch: distribution(
                r,
                "shotover_chain_responses_batch_size",
                "Responses in each batch passing through the chain",
                &["chain"],
            ),
            connections_opened: counter(
                r,
                "connections_opened",
                "Connections clients opened to the source",
                &["source", "core"],
            ),
            source_to_sink_latency: distribution(
                r,
                "shotover_source_to_sink_latency_seconds",
                "Time from reading a request from the client to writing it to the sink",
                &["sink"],
            ),
            sink_to_source_latency: distribution(
                r,
                "shotover_sink_to_source_latency_seconds",
                "Time from reading a response from the sink to writing it to the client",
                &["source"],
            ),
            failed_requests: counter(
                r,
                "failed_requests",
                "Requests a sink answered with an error because its upstream failed",
                &["transform", "chain"],
            ),
            query_count: counter(r, "query_count", "Queries seen by QueryCounter", &["name", "query"]),
            tee_dropped_messages: counter(
                r,
                "tee_dropped_messages",
                "Requests Tee did not send to its sub-chain because its buffer was full",
                &["chain"],
            ),
            throttled_requests: counter(
                r,
                "throttled_requests",
                "Requests RequestThrottling refused because they were over the limit",
                &["chain"],
            ),
            cache_hits: counter(r, "shotover_cache_hit_count", "Reads ValkeyCache answered from the cache", &["chain"]),
            cache_misses: counter(
                r,
                "shotover_cache_miss_count",
                "Cacheable reads ValkeyCache did not find in the cache, sent to Cassandra",
                &["chain"],
            ),
            cache_invalidations: counter(
                r,
                "shotover_cache_invalidation_count",
                "Cache entries (partitions or whole tables) ValkeyCache invalidated after a write",
                &["chain"],
            ),
            cache_errors: counter(
                r,
                "shotover_cache_error_count",
                "Valkey commands of ValkeyCache that failed, or were skipped while the cache was down",
                &["chain"],
            ),
        }
    }
}

/// A gauge computed on the control core at scrape time.
pub type GlobalGauge = Box<dyn Fn() -> Vec<(Vec<String>, i64)> + Send + Sync>;

/// A gauge kept outside the cores: name, help, label names, values.
struct ExternalGauge {
    name: String,
    help: String,
    labels: Vec<String>,
    values: GlobalGauge,
}

/// Where the control core finds every core's registry.
#[derive(Default)]
pub struct MetricsHub {
    cores: Mutex<Vec<Registry>>,
    gauges: Mutex<Vec<ExternalGauge>>,
    /// The last minute of every distribution, for its quantiles.
    windows: Mutex<Windows>,
}

impl MetricsHub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Creates and records a registry for one worker core.
    pub fn core_registry(&self) -> Registry {
        let registry = Registry::new();
        if let Ok(mut cores) = self.cores.lock() {
            cores.push(registry.clone());
        }
        registry
    }

    /// Adds a gauge whose values are computed at each scrape.
    pub fn add_gauge(&self, name: &str, help: &str, labels: &[&str], values: GlobalGauge) {
        if let Ok(mut gauges) = self.gauges.lock() {
            gauges.push(ExternalGauge {
                name: name.into(),
                help: help.into(),
                labels: labels.iter().map(|s| s.to_string()).collect(),
                values,
            });
        }
    }

    /// Prometheus text of all metrics, with same-labelled series summed over cores.
    pub fn render(&self) -> String {
        let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
        let registries = self.cores.lock().map(|c| c.clone()).unwrap_or_default();
        for family in registries.iter().flat_map(|r| r.gather()) {
            match families.get_mut(family.name()) {
                Some(existing) => merge(existing, family),
                None => {
                    families.insert(family.name().to_string(), family);
                }
            }
        }
        if let Ok(gauges) = self.gauges.lock() {
            for gauge in gauges.iter() {
                let labels: Vec<&str> = gauge.labels.iter().map(String::as_str).collect();
                let Ok(vec) = IntGaugeVec::new(Opts::new(gauge.name.as_str(), gauge.help.as_str()), &labels) else {
                    continue;
                };
                for (label_values, value) in (gauge.values)() {
                    let lv: Vec<&str> = label_values.iter().map(String::as_str).collect();
                    if let Ok(g) = vec.get_metric_with_label_values(&lv) {
                        g.set(value);
                    }
                }
                families.extend(vec.collect().into_iter().map(|f| (f.name().to_string(), f)));
            }
        }
        let mut families: Vec<MetricFamily> = families.into_values().collect();
        if let Ok(mut windows) = self.windows.lock() {
            let now = std::time::Instant::now();
            for family in &mut families {
                windows.summarize(family, now);
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn label_key(m: &prometheus::proto::Metric) -> Vec<(String, String)> {
    m.get_label().iter().map(|l| (l.name().to_string(), l.value().to_string())).collect()
}

/// Adds `other`'s series into `into`, summing series with equal labels.
fn merge(into: &mut MetricFamily, mut other: MetricFamily) {
    let kind = into.get_field_type();
    for metric in other.take_metric() {
        let key = label_key(&metric);
        let Some(existing) = into.mut_metric().iter_mut().find(|m| label_key(m) == key) else {
            into.mut_metric().push(metric);
            continue;
        };
        match kind {
            MetricType::COUNTER => {
                let mut c = existing.get_counter().clone();
                c.set_value(c.get_value() + metric.get_counter().get_value());
                existing.set_counter(c);
            }
            MetricType::GAUGE => {
                let mut g = existing.get_gauge().clone();
                g.set_value(g.get_value() + metric.get_gauge().get_value());
                existing.set_gauge(g);
            }
            MetricType::HISTOGRAM => {
                let mut h = existing.get_histogram().clone();
                let add = metric.get_histogram();
                h.set_sample_count(h.get_sample_count() + add.get_sample_count());
                h.set_sample_sum(h.get_sample_sum() + add.get_sample_sum());
                let mut buckets = h.get_bucket().to_vec();
                for (b, a) in buckets.iter_mut().zip(add.get_bucket()) {
                    b.set_cumulative_count(b.cumulative_count() + a.cumulative_count());
                }
                h.set_bucket(buckets);
                existing.set_histogram(h);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_summed_and_core_labels_kept() {
        let hub = MetricsHub::new();
        let a = CoreMetrics::new(0, &hub.core_registry());
        let b = CoreMetrics::new(1, &hub.core_registry());
        a.chain_total.with_label_values(&["c"]).inc_by(2);
        b.chain_total.with_label_values(&["c"]).inc_by(3);
        a.chain_latency.with_label_values(&["c"]).observe(0.001);
        b.chain_latency.with_label_values(&["c"]).observe(0.002);
        a.connections_opened.with_label_values(&["s", "0"]).inc();
        b.connections_opened.with_label_values(&["s", "1"]).inc();
        hub.add_gauge("g", "help", &["source"], Box::new(|| vec![(vec!["s".into()], 7)]));
        let text = hub.render();
        assert!(text.contains("shotover_chain_total_count{chain=\"c\"} 5"), "{text}");
        assert!(text.contains("shotover_chain_latency_seconds_count{chain=\"c\"} 2"), "{text}");
        assert!(text.contains("connections_opened{core=\"0\",source=\"s\"} 1"), "{text}");
        assert!(text.contains("connections_opened{core=\"1\",source=\"s\"} 1"), "{text}");
        assert!(text.contains("g{source=\"s\"} 7"), "{text}");
    }
}
