//! CPU cost of the CQL codec: finding frame boundaries (what every frame pays), v5 segments
//! (what every v5 frame pays), LZ4 (what frames of a compressing v3/v4 connection pay when a
//! transform parses them), and full parsing (what only inspected or modified frames pay).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use shotover_protocols::cassandra::compression::{compress_frame, decompress_frame};
use shotover_protocols::cassandra::framing::frame_len;
use shotover_protocols::cassandra::result::{ColumnType, ResultBody, Rows, RowsMetadata};
use shotover_protocols::cassandra::segment::{encode_segments, SegmentDecoder};
use shotover_protocols::cassandra::{CassandraBody, CassandraCodecState, CassandraFrame, Compression, FrameHeader};

/// QUERY `SELECT * FROM system.local WHERE key='local'`, ONE, stream 5, v4: 60 bytes, as
/// cassandra-driver 3.30.1 (Python) writes it (crates/protocols/src/cassandra/captures.rs).
const QUERY_V4: &str =
    "0400000507000000330000002c53454c454354202a2046524f4d2073797374656d2e6c6f63616c205748455245206b65793d\
    276c6f63616c27000100";
/// The same QUERY in v5 (v5 adds a 4-byte flags field).
const QUERY_V5: &str =
    "0500000507000000360000002c53454c454354202a2046524f4d2073797374656d2e6c6f63616c205748455245206b65793d\
    276c6f63616c27000100000000";
/// A QUERY whose body the Python driver compressed with LZ4, v4 (captures.rs QUERY_V4_LZ4_1).
const QUERY_V4_LZ4: &str =
    "04010015070000006600000062f2360000005b53454c454354202a2046524f4d2073797374656d2e70656572732057484552\
    452070656572203d20273132372e302e302e312720414e4420646174615f63656e741e00f0086463312720414c4c4f572046\
    494c544552494e47000100";

fn hex(s: &str) -> Bytes {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    let nibble = |c: u8| (c as char).to_digit(16).unwrap() as u8;
    digits.chunks(2).map(|p| nibble(p[0]) << 4 | nibble(p[1])).collect::<Vec<u8>>().into()
}

/// A v4 RESULT Rows answering `query`: 10 rows of cassandra-stress's Standard1 table (a blob
/// key and five 34-byte blob columns), full metadata: 2,124 bytes (473 with LZ4).
fn rows_result(query: &Bytes) -> Bytes {
    let request = FrameHeader::parse(query).unwrap();
    let columns = ["key", "C0", "C1", "C2", "C3", "C4"].map(|name| (name.to_owned(), ColumnType::Blob));
    let metadata = RowsMetadata::for_table("Keyspace1", "Standard1", columns);
    let rows = (0..10u8)
        .map(|r| {
            let mut row = vec![Some(Bytes::from(format!("{:010}", u32::from(r) * 7919)))];
            row.extend((0..5u8).map(|c| Some(Bytes::from(vec![r ^ c; 34]))));
            row
        })
        .collect();
    let body = CassandraBody::Result(ResultBody::Rows(Rows { metadata, rows }));
    CassandraFrame::response(&request, body).encode().unwrap().into()
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("cql_framing");
    let query = hex(QUERY_V4);
    g.throughput(Throughput::Elements(1));
    g.bench_function("query_frame_len", |b| b.iter(|| frame_len(black_box(&query)).unwrap()));
    // What CqlWire::decode does to every frame of a v3/v4 connection: measure, cut, and look
    // at the opcode for the handshake.
    let pipeline: Vec<u8> = query.repeat(16);
    g.throughput(Throughput::Elements(16));
    g.bench_function("pass_through_16_queries", |b| {
        let mut state = CassandraCodecState::new();
        let mut frames = Vec::with_capacity(16);
        b.iter(|| {
            let mut buf = BytesMut::from(&pipeline[..]);
            frames.clear();
            while let Some(len) = frame_len(&buf).unwrap() {
                let frame = buf.split_to(len).freeze();
                state.observe(&frame).unwrap();
                frames.push(frame);
            }
            black_box(frames.len())
        })
    });
    g.finish();
}

fn segments(c: &mut Criterion) {
    let mut g = c.benchmark_group("cql_v5_segments");
    let query = hex(QUERY_V5);
    let batch: Vec<&[u8]> = vec![&query[..]; 16];
    g.throughput(Throughput::Elements(16));
    for (name, compression) in [("none", Compression::None), ("lz4", Compression::Lz4)] {
        let mut wire = Vec::new();
        encode_segments(batch.iter().copied(), compression, &mut wire).unwrap();
        g.bench_function(format!("encode_16_queries_{name}"), |b| {
            let mut out = Vec::with_capacity(4096);
            b.iter(|| {
                out.clear();
                encode_segments(black_box(&batch).iter().copied(), compression, &mut out).unwrap();
            })
        });
        g.bench_function(format!("decode_16_queries_{name}"), |b| {
            let mut decoder = SegmentDecoder::new();
            let mut frames = Vec::with_capacity(16);
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                frames.clear();
                decoder.decode(&mut buf, compression, &mut frames).unwrap();
                assert_eq!(frames.len(), 16);
            })
        });
    }
    g.finish();
}

fn lz4(c: &mut Criterion) {
    let mut g = c.benchmark_group("cql_lz4");
    g.throughput(Throughput::Elements(1));
    let query = hex(QUERY_V4_LZ4);
    g.bench_function("decompress_query_frame", |b| {
        b.iter(|| decompress_frame(black_box(&query), Compression::Lz4).unwrap())
    });
    let rows = Bytes::from(compress_frame(&rows_result(&hex(QUERY_V4)), Compression::Lz4).unwrap());
    g.bench_function("decompress_rows_10_frame", |b| {
        b.iter(|| decompress_frame(black_box(&rows), Compression::Lz4).unwrap())
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("cql_parse_encode");
    g.throughput(Throughput::Elements(1));
    let query = hex(QUERY_V4);
    let rows = rows_result(&query);
    g.bench_function("parse_query", |b| {
        b.iter(|| CassandraFrame::parse(black_box(&query), Compression::None).unwrap())
    });
    g.bench_function("parse_result_rows_10", |b| {
        b.iter(|| CassandraFrame::parse(black_box(&rows), Compression::None).unwrap())
    });
    let parsed_query = CassandraFrame::parse(&query, Compression::None).unwrap();
    g.bench_function("encode_query", |b| b.iter(|| black_box(&parsed_query).encode().unwrap()));
    let parsed_rows = CassandraFrame::parse(&rows, Compression::None).unwrap();
    g.bench_function("encode_result_rows_10", |b| b.iter(|| black_box(&parsed_rows).encode().unwrap()));
    g.finish();
}

criterion_group!(benches, framing, segments, lz4, parsing);
criterion_main!(benches);
