//! Tests of the parent module, kept apart so that its file stays about the code.

use super::*;
use crate::cassandra::captures::*;
use crate::cassandra::request::{query_flags, BatchQuery, QueryParams, Value, Values};
use crate::cassandra::result::{ColumnSpec, ColumnType, Rows, RowsMetadata, TableSpec};
use crate::cassandra::Consistency;

fn frame(hex_str: &str) -> Bytes {
    Bytes::from(hex(hex_str))
}

/// Parses, then checks that encoding gives back the exact bytes.
fn parse_exact(hex_str: &str) -> CassandraFrame {
    let bytes = frame(hex_str);
    let parsed = CassandraFrame::parse(&bytes, Compression::None).unwrap();
    assert_eq!(parsed.encode().unwrap(), &bytes[..], "{parsed:?}");
    parsed
}

#[test]
fn startup_v3_1() {
    let f = parse_exact(STARTUP_V3);
    let CassandraBody::Startup(s) = &f.body else { panic!("{f:?}") };
    assert_eq!(s.get("CQL_VERSION"), Some("3.4.7"));
    assert_eq!(s.get("DRIVER_NAME"), Some("Apache Cassandra Python Driver"));
    assert_eq!(s.get("COMPRESSION"), None);
}

#[test]
fn startup_v4_1() {
    let f = parse_exact(STARTUP_V4_LZ4);
    let CassandraBody::Startup(s) = &f.body else { panic!("{f:?}") };
    assert_eq!(s.get("COMPRESSION"), Some("lz4"));
    assert_eq!((f.version, f.stream_id, f.response), (Version::V4, 1, false));
}

#[test]
fn startup_v5_1() {
    let f = parse_exact(STARTUP_V5_LZ4);
    assert_eq!(f.version, Version::V5);
}

#[test]
fn register_v3_1() {
    let f = parse_exact(REGISTER_V3);
    let CassandraBody::Register(r) = &f.body else { panic!("{f:?}") };
    assert_eq!(r.events, ["TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE"]);
}

#[test]
fn register_v4_1() {
    // Body compressed with LZ4 by the driver.
    let bytes = frame(REGISTER_V4_LZ4);
    assert!(CassandraFrame::parse(&bytes, Compression::None).is_err());
    let f = CassandraFrame::parse(&bytes, Compression::Lz4).unwrap();
    assert_eq!(f.flags & flags::COMPRESSION, 0);
    let CassandraBody::Register(r) = &f.body else { panic!("{f:?}") };
    assert_eq!(r.events.len(), 3);
}

#[test]
fn query_v3_1() {
    let f = parse_exact(QUERY_V3_1);
    let CassandraBody::Query(q) = &f.body else { panic!("{f:?}") };
    assert_eq!(q.query, "SELECT * FROM system.local WHERE key='local'");
    assert_eq!(q.params, QueryParams::new(Consistency::One));
    assert_eq!(f.stream_id, 5);
}

#[test]
fn query_v4_1() {
    let f = parse_exact(QUERY_V4_1);
    assert_eq!(f.opcode(), Opcode::Query);
}

#[test]
fn query_v5_1() {
    let f = parse_exact(QUERY_V5_1);
    let CassandraBody::Query(q) = &f.body else { panic!("{f:?}") };
    assert_eq!(q.params.consistency, Consistency::One);
}

fn check_query_2(f: &CassandraFrame) {
    let CassandraBody::Query(q) = &f.body else { panic!("{f:?}") };
    assert_eq!(q.query, "INSERT INTO ks.t (k, v) VALUES (?, ?) IF NOT EXISTS");
    let p = &q.params;
    assert_eq!(p.consistency, Consistency::LocalQuorum);
    assert_eq!(p.serial_consistency, Some(Consistency::LocalSerial));
    assert_eq!(p.page_size, Some(100));
    assert_eq!(p.paging_state.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(p.timestamp, Some(1_700_000_000_000_000));
    assert_eq!(p.values, None);
}

#[test]
fn query_v3_2() {
    check_query_2(&parse_exact(QUERY_V3_2));
}

#[test]
fn query_v4_2() {
    check_query_2(&parse_exact(QUERY_V4_2));
}

#[test]
fn query_v5_2() {
    check_query_2(&parse_exact(QUERY_V5_2));
}

#[test]
fn query_v4_3() {
    let f = parse_exact(QUERY_V4_3);
    let CassandraBody::Query(q) = &f.body else { panic!("{f:?}") };
    let expected = Values::Positional(vec![Value::Bytes(Bytes::from_static(&[0, 0, 0, 42])), Value::Null]);
    assert_eq!(q.params.values, Some(expected));
    parse_exact(QUERY_V3_3);
    parse_exact(QUERY_V5_3);
}

#[test]
fn query_v5_4() {
    let f = parse_exact(QUERY_V5_4);
    let CassandraBody::Query(q) = &f.body else { panic!("{f:?}") };
    assert_eq!(q.params.keyspace.as_deref(), Some("ks"));
    assert_eq!(q.params.flags, query_flags::WITH_KEYSPACE);
}

#[test]
fn query_v4_lz4_1() {
    let f = CassandraFrame::parse(&frame(QUERY_V4_LZ4_1), Compression::Lz4).unwrap();
    let CassandraBody::Query(q) = &f.body else { panic!("{f:?}") };
    assert!(q.query.starts_with("SELECT * FROM system.peers"));
}

#[test]
fn prepare_v4_1() {
    for capture in [PREPARE_V3_1, PREPARE_V4_1, PREPARE_V5_1] {
        let f = parse_exact(capture);
        let CassandraBody::Prepare(p) = &f.body else { panic!("{f:?}") };
        assert_eq!(p.query, "SELECT v FROM ks.t WHERE k = ?");
        assert_eq!(p.keyspace, None);
    }
}

#[test]
fn prepare_v5_2() {
    let f = parse_exact(PREPARE_V5_2);
    let CassandraBody::Prepare(p) = &f.body else { panic!("{f:?}") };
    assert_eq!(p.keyspace.as_deref(), Some("ks"));
}

#[test]
fn execute_v4_1() {
    for capture in [EXECUTE_V3_1, EXECUTE_V4_1, EXECUTE_V5_1] {
        let f = parse_exact(capture);
        let CassandraBody::Execute(e) = &f.body else { panic!("{f:?}") };
        assert_eq!(&e.id[..], &hex("deadbeefdeadbeefdeadbeefdeadbeef")[..]);
        assert_eq!(e.params.page_size, Some(5000));
        assert_eq!(e.result_metadata_id.is_some(), f.version == Version::V5);
    }
}

#[test]
fn batch_v4_1() {
    for capture in [BATCH_V3_1, BATCH_V4_1, BATCH_V5_1] {
        let f = parse_exact(capture);
        let CassandraBody::Batch(b) = &f.body else { panic!("{f:?}") };
        assert_eq!(b.kind, 0);
        assert_eq!(b.statements.len(), 2);
        assert_eq!(b.statements[0].query, BatchQuery::Query("INSERT INTO ks.t (k, v) VALUES (1, 2)".into()));
        assert_eq!(b.statements[1].query, BatchQuery::Prepared(Bytes::from(vec![0xab; 16])));
        assert_eq!(b.statements[1].values.len(), 2);
        assert_eq!(b.serial_consistency, Some(Consistency::Serial));
        assert_eq!(b.timestamp, Some(42));
    }
}

#[test]
fn batch_with_names_v4_1() {
    // Hand-built: the names flag (0x40) after the statements that it shapes.
    let body = hex("01 0001 00 00000001 78 0001 0001 6e 00000001 07 0001 40");
    let mut bytes = vec![0x04, 0, 0, 3, 0x0D];
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    let f = CassandraFrame::parse(&Bytes::from(bytes.clone()), Compression::None).unwrap();
    let CassandraBody::Batch(b) = &f.body else { panic!("{f:?}") };
    assert_eq!(b.statements[0].values, Values::Named(vec![("n".into(), Value::Bytes(Bytes::from_static(&[7])))]));
    assert_eq!(f.encode().unwrap(), bytes);
}

#[test]
fn response_prefixes_v4_1() {
    // A RESULT Void with a tracing id, warnings and a custom payload, hand-built.
    let body = hex("00112233445566778899aabbccddeeff 0001 0004 77617276 0001 0001 6b 00000001 76 00000001");
    let mut bytes = vec![0x84, 0x0e, 0, 9, 0x08];
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    let bytes = Bytes::from(bytes);
    let f = CassandraFrame::parse(&bytes, Compression::None).unwrap();
    assert_eq!(f.tracing_id, Some(hex("00112233445566778899aabbccddeeff").try_into().unwrap()));
    assert_eq!(f.warnings, ["warv"]);
    assert_eq!(f.custom_payload, Some(vec![("k".into(), Some(Bytes::from_static(b"v")))]));
    assert_eq!(f.body, CassandraBody::Result(ResultBody::Void));
    assert_eq!(f.encode().unwrap(), &bytes[..]);
    // The tracing flag with a body too short for the id.
    let short = Bytes::from_static(&[0x84, 0x02, 0, 1, 0x08, 0, 0, 0, 0]);
    assert_eq!(CassandraFrame::parse(&short, Compression::None), Err(CassandraCodecError::Truncated("tracing id")));
}

/// A system.peers_v2 result with a rewritten `native_port`, the way the cluster sink's
/// rewrite will do it.
#[test]
fn rows_rewrite_v4_1() {
    let columns = [
        ("peer", ColumnType::Inet),
        ("native_port", ColumnType::Int),
        ("tokens", ColumnType::Set(Box::new(ColumnType::Varchar))),
    ];
    let rows = Rows {
        metadata: RowsMetadata {
            flags: 0x0001,
            columns_count: 3,
            paging_state: None,
            new_metadata_id: None,
            global_table_spec: Some(TableSpec { keyspace: "system".into(), table: "peers_v2".into() }),
            columns: columns
                .iter()
                .map(|(n, t)| ColumnSpec { table_spec: None, name: n.to_string(), col_type: t.clone() })
                .collect(),
        },
        rows: vec![vec![
            Some(Bytes::from_static(&[172, 16, 1, 2])),
            Some(Bytes::copy_from_slice(&9042i32.to_be_bytes())),
            None,
        ]],
    };
    let response = CassandraFrame {
        version: Version::V4,
        response: true,
        flags: 0,
        stream_id: 3,
        tracing_id: None,
        warnings: vec![],
        custom_payload: None,
        body: CassandraBody::Result(ResultBody::Rows(rows)),
    };
    let wire = Bytes::from(response.encode().unwrap());
    let mut f = CassandraFrame::parse(&wire, Compression::None).unwrap();
    assert_eq!(f, response);
    let CassandraBody::Result(ResultBody::Rows(rows)) = &mut f.body else { panic!() };
    let port = rows.column_index("native_port").unwrap();
    assert_eq!(rows.metadata.table_of(port).unwrap().table, "peers_v2");
    let cell = rows.cell(0, port).unwrap().unwrap();
    assert_eq!(cassandra_protocol::types::data_serialization_types::decode_int(cell).unwrap(), 9042);
    rows.set_cell(0, port, Some(Bytes::copy_from_slice(&19042i32.to_be_bytes()))).unwrap();
    assert!(rows.set_cell(1, port, None).is_err());
    let rewritten = Bytes::from(f.encode().unwrap());
    assert_eq!(rewritten.len(), wire.len());
    let again = CassandraFrame::parse(&rewritten, Compression::None).unwrap();
    let CassandraBody::Result(ResultBody::Rows(rows)) = &again.body else { panic!() };
    assert_eq!(rows.cell(0, port), Some(Some(&Bytes::copy_from_slice(&19042i32.to_be_bytes()))));
    assert_eq!(rows.cell(0, 2), Some(None));
}

#[test]
fn made_up_responses_v5_1() {
    // What a server answers to the handshake and to a USE: each keeps the request's
    // version and stream id, and parses back to itself.
    let request = FrameHeader::parse(&hex(QUERY_V5_1)).unwrap();
    let bodies = [
        CassandraBody::Ready,
        CassandraBody::Supported(vec![("COMPRESSION".into(), vec!["lz4".into(), "snappy".into()])]),
        CassandraBody::Result(ResultBody::SetKeyspace("ks".into())),
        CassandraBody::Result(ResultBody::Void),
        CassandraBody::AuthSuccess(None),
    ];
    for body in bodies {
        let f = CassandraFrame::response(&request, body);
        let bytes = f.encode().unwrap();
        assert_eq!(&bytes[..5], &[0x85, 0, 0, 5, u8::from(f.opcode())]);
        assert_eq!(CassandraFrame::parse(&Bytes::from(bytes), Compression::None).unwrap(), f);
    }
}

#[test]
fn error_frames_v5_1() {
    let request = FrameHeader::parse(&hex(QUERY_V5_1)).unwrap();
    for code in [ErrorCode::SERVER_ERROR, ErrorCode::OVERLOADED, ErrorCode::INVALID, ErrorCode::UNAUTHORIZED] {
        let f = CassandraFrame::error(&request, code, "Message was filtered out by shotover");
        let bytes = f.encode().unwrap();
        assert_eq!(
            bytes,
            crate::cassandra::response::error_response(&request, code, "Message was filtered out by shotover")
        );
        let back = CassandraFrame::parse(&Bytes::from(bytes), Compression::None).unwrap();
        assert_eq!((back.stream_id, back.version, back.response), (5, Version::V5, true));
        assert_eq!(back, f);
    }
}

#[test]
fn wrong_direction_and_truncation_are_errors() {
    // A QUERY with the response bit.
    let mut bytes = hex(QUERY_V4_1);
    bytes[0] |= 0x80;
    assert!(matches!(
        CassandraFrame::parse(&Bytes::from(bytes), Compression::None),
        Err(CassandraCodecError::UnexpectedOpcode { opcode: Opcode::Query, response: true })
    ));
    // Every cut of every capture is an error, never a panic.
    for capture in [QUERY_V5_2, EXECUTE_V5_1, BATCH_V4_1, STARTUP_V4_LZ4, PREPARE_V5_2] {
        let full = hex(capture);
        for cut in 0..full.len() {
            let mut b = full[..cut].to_vec();
            if b.len() >= HEADER_LEN {
                let len = (b.len() - HEADER_LEN) as u32;
                b[5..9].copy_from_slice(&len.to_be_bytes());
            }
            assert!(CassandraFrame::parse(&Bytes::from(b), Compression::None).is_err(), "{capture} cut {cut}");
        }
    }
}

/// A peers_v2 row with a rewritten port, and warnings. cassandra-driver 3.30 (python)
/// decoded exactly these bytes to `[('172.16.1.2', 19042, SortedSet(['42']))]` with
/// warnings `['w1']`, as v4, as a v4 LZ4 frame and inside a v5 LZ4 segment.
#[test]
fn rows_v4_read_by_driver_1() {
    let expected = hex("840800030800000069000100027731000000020000000100000003000673797374656d000870656572735f7632\
        0004706565720010000b6e61746976655f706f727400090006746f6b656e730022000d0000000100000004ac100102000000040000\
        4a620000000a00000001000000023432");
    let f = CassandraFrame::parse(&Bytes::from(expected.clone()), Compression::None).unwrap();
    assert_eq!(f.warnings, ["w1"]);
    let CassandraBody::Result(ResultBody::Rows(rows)) = &f.body else { panic!("{f:?}") };
    assert_eq!(rows.metadata.columns.len(), 3);
    assert_eq!(rows.metadata.table_of(0).map(|t| t.table.as_str()), Some("peers_v2"));
    assert_eq!(f.encode().unwrap(), expected);
}

#[test]
fn garbage_never_panics() {
    // Deterministic fuzzing: random bodies under every opcode and version.
    let mut seed = 0x9e37_79b9u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..20_000 {
        let version = 3 + (next() % 3) as u8;
        let opcode = [0u8, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16][(next() % 16) as usize];
        let response =
            if is_request_opcode(crate::cassandra::header::opcode_from_byte(opcode).unwrap()) { 0 } else { 0x80 };
        let len = (next() % 64) as usize;
        let mut bytes = vec![version | response, (next() % 16) as u8 & !1, 0, 1, opcode];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.extend((0..len).map(|_| if next() % 3 == 0 { 0xff } else { (next() % 8) as u8 }));
        if let Ok(f) = CassandraFrame::parse(&Bytes::from(bytes), Compression::None) {
            let _ = f.encode();
        }
    }
    // Captures with a few bytes changed (the header kept, so the body is what is tried).
    let captures = [QUERY_V5_2, QUERY_V4_3, EXECUTE_V5_1, BATCH_V4_1, BATCH_V5_1, PREPARE_V5_2, STARTUP_V3];
    for capture in captures {
        let original = hex(capture);
        for _ in 0..3000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 3 {
                let at = HEADER_LEN + (next() as usize) % (bytes.len() - HEADER_LEN);
                bytes[at] = next() as u8;
            }
            if let Ok(f) = CassandraFrame::parse(&Bytes::from(bytes), Compression::None) {
                let _ = f.encode();
            }
        }
    }
}
