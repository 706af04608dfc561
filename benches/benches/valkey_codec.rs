//! CPU cost of the Valkey codec: finding message boundaries (what every message pays),
//! parsing into a frame and encoding (what only inspected or modified messages pay).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shotover_protocols::valkey::command::{classify, RequestView};
use shotover_protocols::valkey::frame::{encode, parse};
use shotover_protocols::valkey::framing::{message_len, request_len, Request};

const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$3\r\nxxx\r\n";
const GET_REPLY: &[u8] = b"$3\r\nxxx\r\n";
const MGET_REPLY: &[u8] = b"*4\r\n$3\r\naaa\r\n$-1\r\n$3\r\nccc\r\n$3\r\nddd\r\n";

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("valkey_framing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_request", |b| b.iter(|| request_len(black_box(SET))));
    g.bench_function("mget_reply", |b| b.iter(|| message_len(black_box(MGET_REPLY))));
    let pipeline: Vec<u8> = SET.repeat(16);
    g.throughput(Throughput::Elements(16));
    g.bench_function("split_pipeline_of_16", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&pipeline[..]);
            let mut n = 0;
            while let Ok(Some(Request::Command(len))) = request_len(&buf) {
                black_box(buf.split_to(len).freeze());
                n += 1;
            }
            n
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("valkey_parse_encode");
    g.throughput(Throughput::Elements(1));
    let set = Bytes::from_static(SET);
    let reply = Bytes::from_static(GET_REPLY);
    g.bench_function("command_name_and_class", |b| {
        b.iter(|| {
            let view = RequestView::new(black_box(SET)).unwrap();
            let mut buf = [0u8; 32];
            view.upper(&mut buf).map(classify)
        })
    });
    g.bench_function("parse_set_request", |b| b.iter(|| parse(black_box(&set)).unwrap()));
    g.bench_function("parse_get_reply", |b| b.iter(|| parse(black_box(&reply)).unwrap()));
    let (frame, version) = parse(&set).unwrap();
    g.bench_function("encode_set_request", |b| {
        let mut out = BytesMut::with_capacity(128);
        b.iter(|| {
            out.clear();
            encode(black_box(&frame), version, &mut out).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, framing, parsing);
criterion_main!(benches);
