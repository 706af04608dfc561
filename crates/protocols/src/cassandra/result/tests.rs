//! Tests of the parent module, kept apart so that its file stays about the code.

use super::*;

fn parse(body: Vec<u8>, version: Version) -> Result<ResultBody> {
    let b = Bytes::from(body);
    ResultBody::parse(&mut Reader::new(&b), version)
}

fn encode(result: &ResultBody, version: Version) -> Vec<u8> {
    let mut out = Vec::new();
    result.encode(&mut out, version).unwrap();
    out
}

#[test]
fn metadata_helpers_v4_1() {
    let columns = vec![("k".to_string(), ColumnType::Varchar), ("v".to_string(), ColumnType::Int)];
    let rows = Rows {
        metadata: RowsMetadata::for_table("ks", "t", columns),
        rows: vec![vec![Some(Bytes::from_static(b"a")), Some(Bytes::from_static(&[0, 0, 0, 7]))]],
    };
    assert_eq!(rows.column_index("v"), Some(1));
    assert_eq!(rows.metadata.table_of(1).map(|t| t.table.as_str()), Some("t"));
    let result = ResultBody::Rows(rows.clone());
    let wire = encode(&result, Version::V4);
    // kind 2, flags GLOBAL_TABLES_SPEC, 2 columns, "ks", "t", then "k" varchar.
    assert_eq!(&wire[..21], &[0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 2, b'k', b's', 0, 1, b't', 0, 1]);
    assert_eq!(parse(wire, Version::V4).unwrap(), result);
    // Without metadata: only the count, and the cells.
    let bare = ResultBody::Rows(Rows { metadata: RowsMetadata::without_columns(2), rows: rows.rows });
    let wire = encode(&bare, Version::V5);
    assert_eq!(&wire[..12], &[0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 2]);
    assert_eq!(parse(wire, Version::V5).unwrap(), bare);
}

#[test]
fn deep_and_huge_types_are_errors() {
    // 40 nested lists.
    let mut body = vec![0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, b'k', 0, 1, b't', 0, 1, b'c'];
    for _ in 0..40 {
        body.extend_from_slice(&[0, 0x20]);
    }
    body.extend_from_slice(&[0, 9, 0, 0, 0, 0]);
    assert_eq!(parse(body, Version::V4), Err(CassandraCodecError::TooDeep(MAX_TYPE_DEPTH)));
    // A tuple claiming 65535 types with none there.
    let body = vec![0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, b'k', 0, 1, b't', 0, 1, b'c', 0, 0x31, 0xff, 0xff];
    assert!(matches!(parse(body, Version::V4), Err(CassandraCodecError::Truncated(_))));
    // 2^31 - 1 rows of 1 column in a few bytes.
    let mut body = vec![0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff];
    body.extend_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(parse(body, Version::V4), Err(CassandraCodecError::InvalidLength { .. })));
    // 2^31 - 1 rows of no columns.
    let body = vec![0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff];
    assert!(matches!(parse(body, Version::V4), Err(CassandraCodecError::InvalidLength { .. })));
    assert!(matches!(parse(vec![0, 0, 0, 9], Version::V4), Err(CassandraCodecError::InvalidValue { .. })));
    // Negative column count.
    let body = vec![0, 0, 0, 2, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
    assert!(matches!(parse(body, Version::V4), Err(CassandraCodecError::InvalidLength { .. })));
}

#[test]
fn every_type_round_trips() {
    let col = |name: &str, t: ColumnType| ColumnSpec { table_spec: None, name: name.into(), col_type: t };
    let types = vec![
        ColumnType::Custom("org.apache.cassandra.db.marshal.DynamicCompositeType".into()),
        ColumnType::Ascii,
        ColumnType::Duration,
        ColumnType::Map(Box::new(ColumnType::Varchar), Box::new(ColumnType::List(Box::new(ColumnType::Inet)))),
        ColumnType::Set(Box::new(ColumnType::Timeuuid)),
        ColumnType::Udt {
            keyspace: "ks".into(),
            name: "addr".into(),
            fields: vec![("street".into(), ColumnType::Varchar), ("zip".into(), ColumnType::Int)],
        },
        ColumnType::Tuple(vec![ColumnType::Int, ColumnType::Blob, ColumnType::Date]),
    ];
    let columns: Vec<ColumnSpec> = types.into_iter().enumerate().map(|(i, t)| col(&format!("c{i}"), t)).collect();
    let width = columns.len();
    let rows = Rows {
        metadata: RowsMetadata {
            flags: GLOBAL_TABLES_SPEC | HAS_MORE_PAGES,
            columns_count: width,
            paging_state: Some(Bytes::from_static(b"page")),
            new_metadata_id: None,
            global_table_spec: Some(TableSpec { keyspace: "ks".into(), table: "t".into() }),
            columns,
        },
        rows: vec![vec![Some(Bytes::from_static(b"x")); width], vec![None; width]],
    };
    for version in [Version::V3, Version::V4, Version::V5] {
        let result = ResultBody::Rows(rows.clone());
        assert_eq!(parse(encode(&result, version), version).unwrap(), result);
    }
}
