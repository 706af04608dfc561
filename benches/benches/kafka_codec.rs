//! CPU cost of the Kafka codec: framing and the header reads that every message pays,
//! full parsing with `kafka-protocol` (only for messages a transform inspects), and the
//! broker rewrite that every Metadata response pays.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shotover_protocols::kafka::framing::message_len;
use shotover_protocols::kafka::header::request_ids;
use shotover_protocols::kafka::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use shotover_protocols::kafka::kafka_protocol::messages::{BrokerId, MetadataResponse, TopicName};
use shotover_protocols::kafka::kafka_protocol::protocol::StrBytes;
use shotover_protocols::kafka::produce::expects_response;
use shotover_protocols::kafka::rewrite::rewrite_brokers;
use shotover_protocols::kafka::{ApiKey, KafkaFrame, ResponseHeader, ResponseKind};

// Captured from real clients: copied from crates/protocols/src/kafka/captured.rs (a
// cfg(test) module).

/// Request v12, 48 bytes, confluent-kafka 2.16.1 / librdkafka (Producer). Asks for topic `test`.
const METADATA_V12_REQUEST: &[u8] = &[
    0x00, 0x00, 0x00, 0x2c, 0x00, 0x03, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x02, 0x00, 0x07, 0x72, 0x64, 0x6b, 0x61, 0x66,
    0x6b, 0x61, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x05, 0x74, 0x65, 0x73, 0x74, 0x00, 0x01, 0x00, 0x00,
];

/// Request v9, 117 bytes, confluent-kafka 2.16.1 / librdkafka (Producer).
const PRODUCE_V9_REQUEST_ACKS_1: &[u8] = &[
    0x00, 0x00, 0x00, 0x71, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x02, 0x00, 0x07, 0x72, 0x64, 0x6b, 0x61, 0x66,
    0x6b, 0x61, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x75, 0x30, 0x02, 0x05, 0x74, 0x65, 0x73, 0x74, 0x02, 0x00, 0x00,
    0x00, 0x00, 0x4a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3d, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x0b, 0x4d, 0x01, 0x63, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xa2, 0x17, 0x28, 0xe0, 0x14,
    0x00, 0x00, 0x01, 0xa2, 0x17, 0x28, 0xe0, 0x14, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x16, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
    0x00, 0x00, 0x00,
];

/// Response v12, 109 bytes, confluent-kafka 2.16.1 / librdkafka (Producer). One broker, 127.0.0.1:19094.
const METADATA_V12_RESPONSE: &[u8] = &[
    0x00, 0x00, 0x00, 0x69, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a,
    0x31, 0x32, 0x37, 0x2e, 0x30, 0x2e, 0x30, 0x2e, 0x31, 0x00, 0x00, 0x4a, 0x96, 0x00, 0x00, 0x0d, 0x66, 0x61, 0x6b,
    0x65, 0x2d, 0x63, 0x6c, 0x75, 0x73, 0x74, 0x65, 0x72, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x05, 0x74, 0x65,
    0x73, 0x74, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// A Metadata v12 response naming 3 brokers and 4 topics of 8 partitions, each partition
/// with 3 replicas: 1,637 bytes, closer to a real cluster than the captured one.
fn metadata_response_3_brokers() -> Bytes {
    let brokers = (0..3)
        .map(|i| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(i))
                .with_host(StrBytes::from_string(format!("kafka-{i}.example.internal")))
                .with_port(9092)
                .with_rack(Some(StrBytes::from_string(format!("rack-{i}"))))
        })
        .collect();
    let topics = (0..4)
        .map(|t| {
            let partitions = (0..8)
                .map(|p| {
                    let replicas: Vec<BrokerId> = (0..3).map(|r| BrokerId((p + r) % 3)).collect();
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(p % 3))
                        .with_leader_epoch(7)
                        .with_replica_nodes(replicas.clone())
                        .with_isr_nodes(replicas)
                })
                .collect();
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(format!("events-{t}")))))
                .with_partitions(partitions)
        })
        .collect();
    let body = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_static_str("bench-cluster")))
        .with_controller_id(BrokerId(0))
        .with_topics(topics);
    KafkaFrame::Response {
        api_key: ApiKey::Metadata,
        api_version: 12,
        header: ResponseHeader::default().with_correlation_id(2),
        body: ResponseKind::Metadata(body),
    }
    .to_bytes()
    .unwrap()
}

fn cheap_paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("kafka_cheap");
    g.throughput(Throughput::Elements(1));
    g.bench_function("produce_message_len", |b| b.iter(|| message_len(black_box(PRODUCE_V9_REQUEST_ACKS_1)).unwrap()));
    g.bench_function("produce_request_ids", |b| b.iter(|| request_ids(black_box(PRODUCE_V9_REQUEST_ACKS_1)).unwrap()));
    g.bench_function("metadata_request_ids", |b| b.iter(|| request_ids(black_box(METADATA_V12_REQUEST)).unwrap()));
    g.bench_function("produce_expects_response", |b| {
        b.iter(|| expects_response(black_box(PRODUCE_V9_REQUEST_ACKS_1)).unwrap())
    });
    // What the source does to every request: measure, cut, read the ids, decide whether a
    // response will come.
    let pipeline: Vec<u8> = PRODUCE_V9_REQUEST_ACKS_1.repeat(16);
    g.throughput(Throughput::Elements(16));
    g.bench_function("split_16_produce_requests", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&pipeline[..]);
            let mut answered = 0;
            while let Some(len) = message_len(&buf).unwrap() {
                let msg = buf.split_to(len).freeze();
                black_box(request_ids(&msg).unwrap());
                answered += usize::from(expects_response(&msg).unwrap());
            }
            answered
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("kafka_parse_encode");
    g.throughput(Throughput::Elements(1));
    let produce = Bytes::from_static(PRODUCE_V9_REQUEST_ACKS_1);
    g.bench_function("parse_produce_v9_request", |b| {
        b.iter(|| KafkaFrame::parse_request(black_box(&produce)).unwrap())
    });
    let frame = KafkaFrame::parse_request(&produce).unwrap();
    g.bench_function("encode_produce_v9_request", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            black_box(&frame).encode(&mut out).unwrap();
        })
    });
    g.finish();
}

fn rewrite(c: &mut Criterion) {
    let mut g = c.benchmark_group("kafka_rewrite_brokers");
    g.throughput(Throughput::Elements(1));
    let captured = Bytes::from_static(METADATA_V12_RESPONSE);
    g.bench_function("metadata_v12_1_broker", |b| {
        b.iter(|| rewrite_brokers(black_box(&captured), ApiKey::Metadata, 12, "127.0.0.1", 9192).unwrap().unwrap())
    });
    let larger = metadata_response_3_brokers();
    g.bench_function("metadata_v12_3_brokers_32_partitions", |b| {
        b.iter(|| rewrite_brokers(black_box(&larger), ApiKey::Metadata, 12, "127.0.0.1", 9192).unwrap().unwrap())
    });
    g.finish();
}

criterion_group!(benches, cheap_paths, parsing, rewrite);
criterion_main!(benches);
