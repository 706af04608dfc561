//! CPU cost of a chain per batch, with the message model, the metrics every chain records,
//! and response encoding, for batches of 1 and 16 requests:
//! - `chain_query_counter_null_sink`: QueryCounter → NullSink;
//! - `chain_throttled_query_counter_null_sink`: the same behind a RequestThrottling whose
//!   limit is far above the offered load, to show what the rate limiter costs when it does
//!   not limit.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::future::block_on;
use shotover::chain::{BuildContext, ChainBuilder, ControlHandle};
use shotover::config::topology::Topology;
use shotover::message::{Message, Protocol};
use shotover::observability::CoreMetrics;
use std::time::Instant;

const PLAIN: &str = r#"
sources:
  - Valkey:
      name: "bench"
      listen_addr: "127.0.0.1:1"
      chain:
        - QueryCounter:
            name: "bench"
        - NullSink
"#;

const THROTTLED: &str = r#"
sources:
  - Valkey:
      name: "bench"
      listen_addr: "127.0.0.1:1"
      chain:
        - RequestThrottling:
            max_requests_per_second: 4000000000
        - QueryCounter:
            name: "bench"
        - NullSink
"#;

fn bench_topology(c: &mut Criterion, group: &str, topology: &str) {
    let topology = Topology::from_str("bench.yaml", topology, &shotover::transforms::registry()).unwrap();
    let source = &topology.sources[0];
    let metrics = CoreMetrics::new(0, &prometheus::Registry::new());
    let base = BuildContext::new(metrics, ControlHandle::detached());
    let builder = ChainBuilder::new("bench", &source.chain, &base).unwrap();
    let mut chain = builder.build();
    let request = Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000042\r\n");
    let mut out = BytesMut::with_capacity(4096);
    let mut g = c.benchmark_group(group);
    for batch in [1usize, 16] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_of_{batch}"), |b| {
            b.iter(|| {
                let now = Instant::now();
                let requests =
                    (0..batch).map(|_| Message::from_bytes(request.clone(), Protocol::Valkey, now)).collect();
                let responses = block_on(chain.process(requests)).unwrap();
                assert_eq!(responses.len(), batch);
                out.clear();
                for r in &responses {
                    r.encode_into(&mut out).unwrap();
                }
                out.len()
            })
        });
    }
    g.finish();
}

fn chain(c: &mut Criterion) {
    bench_topology(c, "chain_query_counter_null_sink", PLAIN);
    bench_topology(c, "chain_throttled_query_counter_null_sink", THROTTLED);
}

criterion_group!(benches, chain);
criterion_main!(benches);
