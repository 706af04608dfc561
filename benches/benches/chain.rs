//! CPU cost of a chain per batch: QueryCounter → NullSink, with the message model, the
//! metrics every chain records, and response encoding, for batches of 1 and 16 requests.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::future::block_on;
use shotover::chain::ChainBuilder;
use shotover::config::topology::Topology;
use shotover::message::{Message, Protocol};
use shotover::observability::CoreMetrics;
use std::time::Instant;

const TOPOLOGY: &str = r#"
sources:
  - Valkey:
      name: "bench"
      listen_addr: "127.0.0.1:1"
      chain:
        - QueryCounter:
            name: "bench"
        - NullSink
"#;

fn chain(c: &mut Criterion) {
    let topology = Topology::from_str("bench.yaml", TOPOLOGY, &shotover::transforms::registry()).unwrap();
    let shotover::config::SourceConfig::Valkey(source) = &topology.sources[0];
    let metrics = CoreMetrics::new(0, &prometheus::Registry::new());
    let builder = ChainBuilder::new("bench", &source.chain, &metrics).unwrap();
    let mut chain = builder.build();
    let request = Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$16\r\nkey:000000000042\r\n");
    let mut out = BytesMut::with_capacity(4096);
    let mut g = c.benchmark_group("chain_query_counter_null_sink");
    for batch in [1usize, 16] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_of_{batch}"), |b| {
            b.iter(|| {
                let now = Instant::now();
                let requests =
                    (0..batch).map(|_| Message::from_bytes(request.clone(), Protocol::Valkey, now)).collect();
                let responses = block_on(chain.process(requests)).unwrap();
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

criterion_group!(benches, chain);
criterion_main!(benches);
