//! Recording one latency, as the chain does for every batch and transform: the proxy's
//! log-bucket distribution against the `prometheus` crate's histogram with the 18 latency
//! buckets the proxy used before (a linear search and a compare-and-swap for the sum).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use prometheus::{Histogram, HistogramOpts};
use shotover::observability::distribution::DistributionVec;

/// Latencies in seconds, from a fast cache hit to a slow upstream.
const VALUES: [f64; 8] = [0.000012, 0.000045, 0.00009, 0.00016, 0.00035, 0.0011, 0.0082, 0.12];

fn observe(c: &mut Criterion) {
    let mut group = c.benchmark_group("observe one latency");
    let vec = DistributionVec::new("latency", "help", &["chain"]).expect("a valid name");
    let distribution = vec.with_label_values(&["valkey"]);
    let mut i = 0;
    group.bench_function("distribution", |b| {
        b.iter(|| {
            i = (i + 1) % VALUES.len();
            distribution.observe(black_box(VALUES[i]));
        })
    });
    let buckets = vec![
        0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 10.0,
    ];
    let histogram = Histogram::with_opts(HistogramOpts::new("latency", "help").buckets(buckets)).expect("valid");
    group.bench_function("prometheus histogram, 18 buckets", |b| {
        b.iter(|| {
            i = (i + 1) % VALUES.len();
            histogram.observe(black_box(VALUES[i]));
        })
    });
    group.finish();
}

criterion_group!(benches, observe);
criterion_main!(benches);
