//! CPU cost of routing one prepared statement in CassandraSinkCluster: the routing key of its
//! bound partition key, its Murmur3 token, and the lookup of the local data centre's replicas.
//! The ring is what a Cassandra 2.1-style cluster gives: 6 nodes of 256 tokens in two data
//! centres and two racks, and a NetworkTopologyStrategy keyspace with 3 replicas in each.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shotover::transforms::cassandra_sink_cluster::topology::{Node, Replication, Ring};
use shotover_protocols::cassandra::token::{routing_key, token};
use std::collections::HashMap;

/// A deterministic spread of tokens over the whole i64 range (xorshift).
fn tokens(seed: u64, n: usize) -> Vec<i64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as i64
        })
        .collect()
}

fn ring() -> Ring {
    let nodes = (0..6u8)
        .map(|i| Node {
            address: format!("10.0.0.{}:9042", i + 1).parse().unwrap(),
            data_center: if i < 3 { "dc1" } else { "dc2" }.into(),
            rack: if i % 2 == 0 { "rack1" } else { "rack2" }.into(),
            tokens: tokens(u64::from(i) * 7919 + 1, 256),
        })
        .collect();
    let keyspaces =
        HashMap::from([("ks".to_string(), Replication::Network(vec![("dc1".into(), 3), ("dc2".into(), 3)]))]);
    Ring::new(nodes, &keyspaces, "dc1")
}

fn routing(c: &mut Criterion) {
    let ring = ring();
    let mut group = c.benchmark_group("cassandra_routing");
    let int_key = 42i32.to_be_bytes();
    group.bench_function("int key: token + replicas", |b| {
        b.iter(|| {
            let key = routing_key(&[black_box(&int_key[..])]).unwrap();
            black_box(ring.replicas("ks", token(&key)).map(<[usize]>::len))
        })
    });
    let (a, c2) = (b"user-1234567".as_slice(), 7i64.to_be_bytes());
    group.bench_function("composite key (text, bigint): token + replicas", |b| {
        b.iter(|| {
            let key = routing_key(&[black_box(a), black_box(&c2[..])]).unwrap();
            black_box(ring.replicas("ks", token(&key)).map(<[usize]>::len))
        })
    });
    group.bench_function("ring build (1536 tokens, one keyspace)", |b| b.iter(|| black_box(ring_size())));
    group.finish();
}

fn ring_size() -> usize {
    ring().nodes.len()
}

criterion_group!(benches, routing);
criterion_main!(benches);
