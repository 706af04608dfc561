//! The system tables drivers read when they connect, made up from the catalog on every read:
//! `system.local`, `system.peers`, `system.peers_v2`, the `system_schema` tables and the
//! `system_virtual_schema` tables. Columns and types are those of Cassandra 4.0, `SELECT *`
//! order (partition key first, then the other columns by name).

use super::cql::{parse_type, ColumnDef};
use super::engine::{hash16, Catalog, Node, TableData};
use super::values::{blob, boolean, double, inet, int, text, text_list, text_map, uuid, Cell};
use std::net::IpAddr;

const DATA_CENTER: &str = "datacenter1";
const RACK: &str = "rack1";
const CLUSTER_NAME: &str = "CQL test double";
pub(crate) const CQL_VERSION: &str = "3.4.7";
/// The storage port the system tables give for every node.
const STORAGE_PORT: i32 = 7000;

pub(crate) fn is_system_keyspace(keyspace: &str) -> bool {
    matches!(keyspace, "system" | "system_schema" | "system_virtual_schema")
}

struct Def {
    keyspace: &'static str,
    name: &'static str,
    /// The first column is the partition key.
    columns: &'static [(&'static str, &'static str)],
}

const TEXT_MAP: &str = "frozen<map<text, text>>";
const TEXT_LIST: &str = "frozen<list<text>>";

const TABLES: &[Def] = &[
    Def {
        keyspace: "system",
        name: "local",
        columns: &[
            ("key", "text"),
            ("bootstrapped", "text"),
            ("broadcast_address", "inet"),
            ("broadcast_port", "int"),
            ("cluster_name", "text"),
            ("cql_version", "text"),
            ("data_center", "text"),
            ("gossip_generation", "int"),
            ("host_id", "uuid"),
            ("listen_address", "inet"),
            ("listen_port", "int"),
            ("native_protocol_version", "text"),
            ("partitioner", "text"),
            ("rack", "text"),
            ("release_version", "text"),
            ("rpc_address", "inet"),
            ("rpc_port", "int"),
            ("schema_version", "uuid"),
            ("tokens", "set<text>"),
            ("truncated_at", "map<uuid, blob>"),
        ],
    },
    Def {
        keyspace: "system",
        name: "peers",
        columns: &[
            ("peer", "inet"),
            ("data_center", "text"),
            ("host_id", "uuid"),
            ("preferred_ip", "inet"),
            ("rack", "text"),
            ("release_version", "text"),
            ("rpc_address", "inet"),
            ("schema_version", "uuid"),
            ("tokens", "set<text>"),
        ],
    },
    Def {
        keyspace: "system",
        name: "peers_v2",
        columns: &[
            ("peer", "inet"),
            ("peer_port", "int"),
            ("data_center", "text"),
            ("host_id", "uuid"),
            ("native_address", "inet"),
            ("native_port", "int"),
            ("preferred_ip", "inet"),
            ("preferred_port", "int"),
            ("rack", "text"),
            ("release_version", "text"),
            ("schema_version", "uuid"),
            ("tokens", "set<text>"),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "keyspaces",
        columns: &[("keyspace_name", "text"), ("durable_writes", "boolean"), ("replication", TEXT_MAP)],
    },
    Def {
        keyspace: "system_schema",
        name: "tables",
        columns: &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("additional_write_policy", "text"),
            ("bloom_filter_fp_chance", "double"),
            ("caching", TEXT_MAP),
            ("cdc", "boolean"),
            ("comment", "text"),
            ("compaction", TEXT_MAP),
            ("compression", TEXT_MAP),
            ("crc_check_chance", "double"),
            ("default_time_to_live", "int"),
            ("extensions", "frozen<map<text, blob>>"),
            ("flags", "frozen<set<text>>"),
            ("gc_grace_seconds", "int"),
            ("id", "uuid"),
            ("max_index_interval", "int"),
            ("memtable_flush_period_in_ms", "int"),
            ("min_index_interval", "int"),
            ("read_repair", "text"),
            ("speculative_retry", "text"),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "columns",
        columns: &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("column_name", "text"),
            ("clustering_order", "text"),
            ("column_name_bytes", "blob"),
            ("kind", "text"),
            ("position", "int"),
            ("type", "text"),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "types",
        columns: &[
            ("keyspace_name", "text"),
            ("type_name", "text"),
            ("field_names", TEXT_LIST),
            ("field_types", TEXT_LIST),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "functions",
        columns: &[
            ("keyspace_name", "text"),
            ("function_name", "text"),
            ("argument_types", TEXT_LIST),
            ("argument_names", TEXT_LIST),
            ("body", "text"),
            ("called_on_null_input", "boolean"),
            ("language", "text"),
            ("return_type", "text"),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "aggregates",
        columns: &[
            ("keyspace_name", "text"),
            ("aggregate_name", "text"),
            ("argument_types", TEXT_LIST),
            ("final_func", "text"),
            ("initcond", "text"),
            ("return_type", "text"),
            ("state_func", "text"),
            ("state_type", "text"),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "views",
        columns: &[
            ("keyspace_name", "text"),
            ("view_name", "text"),
            ("base_table_id", "uuid"),
            ("base_table_name", "text"),
            ("include_all_columns", "boolean"),
            ("where_clause", "text"),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "indexes",
        columns: &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("index_name", "text"),
            ("kind", "text"),
            ("options", TEXT_MAP),
        ],
    },
    Def {
        keyspace: "system_schema",
        name: "triggers",
        columns: &[("keyspace_name", "text"), ("table_name", "text"), ("trigger_name", "text"), ("options", TEXT_MAP)],
    },
    Def {
        keyspace: "system_schema",
        name: "dropped_columns",
        columns: &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("column_name", "text"),
            ("dropped_time", "timestamp"),
            ("kind", "text"),
            ("type", "text"),
        ],
    },
    Def { keyspace: "system_virtual_schema", name: "keyspaces", columns: &[("keyspace_name", "text")] },
    Def {
        keyspace: "system_virtual_schema",
        name: "tables",
        columns: &[("keyspace_name", "text"), ("table_name", "text"), ("comment", "text")],
    },
    Def {
        keyspace: "system_virtual_schema",
        name: "columns",
        columns: &[
            ("keyspace_name", "text"),
            ("table_name", "text"),
            ("column_name", "text"),
            ("clustering_order", "text"),
            ("column_name_bytes", "blob"),
            ("kind", "text"),
            ("position", "int"),
            ("type", "text"),
        ],
    },
];

fn columns_of(def: &Def) -> Vec<ColumnDef> {
    def.columns
        .iter()
        .map(|(name, ty)| {
            // The declarations above are constants, checked by the tests below.
            let (ty, cql) = parse_type(ty).unwrap_or_else(|e| panic!("system column {name}: {}", e.message));
            ColumnDef { name: (*name).into(), ty, cql }
        })
        .collect()
}

/// The token this double gives a node: one per node, derived from its address.
pub(crate) fn token_of(ip: IpAddr, port: u16) -> String {
    let h = hash16(&[b"token", ip.to_string().as_bytes(), &port.to_be_bytes()]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    i64::from_be_bytes(first).to_string()
}

pub(crate) fn host_id_of(ip: IpAddr, port: u16) -> [u8; 16] {
    hash16(&[b"host", ip.to_string().as_bytes(), &port.to_be_bytes()])
}

/// A table that the schema tables describe.
struct Described {
    keyspace: String,
    table: String,
    columns: Vec<ColumnDef>,
    /// Index of the partition key column.
    key: usize,
    id: [u8; 16],
}

/// Every table the schema tables describe: the system tables (or the virtual ones), and
/// the catalog's.
fn described_tables(catalog: &Catalog, virtual_schema: bool) -> Vec<Described> {
    let mut out = Vec::new();
    for def in TABLES.iter().filter(|d| (d.keyspace == "system_virtual_schema") == virtual_schema) {
        out.push(Described {
            keyspace: def.keyspace.to_string(),
            table: def.name.to_string(),
            columns: columns_of(def),
            key: 0,
            id: hash16(&[def.keyspace.as_bytes(), def.name.as_bytes()]),
        });
    }
    if !virtual_schema {
        for (ks_name, ks) in &catalog.keyspaces {
            for (name, t) in &ks.tables {
                out.push(Described {
                    keyspace: ks_name.clone(),
                    table: name.clone(),
                    columns: t.columns.clone(),
                    key: t.key,
                    id: t.id,
                });
            }
        }
    }
    out
}

fn column_rows(tables: &[Described]) -> Vec<Vec<Cell>> {
    let mut rows = Vec::new();
    for t in tables {
        for (i, c) in t.columns.iter().enumerate() {
            let (kind, position) = if i == t.key { ("partition_key", 0) } else { ("regular", -1) };
            rows.push(vec![
                text(&t.keyspace),
                text(&t.table),
                text(&c.name),
                text("none"),
                blob(c.name.as_bytes()),
                text(kind),
                int(position),
                text(&c.cql),
            ]);
        }
    }
    rows
}

/// A system table, filled in; `None` if this double has no such table.
pub(crate) fn table(keyspace: &str, name: &str, catalog: &Catalog, node: &Node) -> Option<TableData> {
    let def = TABLES.iter().find(|d| d.keyspace == keyspace && d.name == name)?;
    let schema_version = uuid(catalog.schema_version());
    let tokens = |ip, port| super::values::collection(&[text(&token_of(ip, port))]);
    let rows: Vec<Vec<Cell>> = match (keyspace, name) {
        ("system", "local") => vec![vec![
            text("local"),
            text("COMPLETED"),
            inet(node.address),
            int(STORAGE_PORT),
            text(CLUSTER_NAME),
            text(CQL_VERSION),
            text(DATA_CENTER),
            int(1_700_000_000),
            uuid(host_id_of(node.address, node.port)),
            inet(node.address),
            int(STORAGE_PORT),
            text(&node.native_protocol_version),
            text("org.apache.cassandra.dht.Murmur3Partitioner"),
            text(RACK),
            text(&node.release_version),
            inet(node.address),
            int(i32::from(node.port)),
            schema_version,
            tokens(node.address, node.port),
            None,
        ]],
        ("system", "peers") => node
            .peers
            .iter()
            .map(|&(ip, port)| {
                vec![
                    inet(ip),
                    text(DATA_CENTER),
                    uuid(host_id_of(ip, port)),
                    None,
                    text(RACK),
                    text(&node.release_version),
                    inet(ip),
                    schema_version.clone(),
                    tokens(ip, port),
                ]
            })
            .collect(),
        ("system", "peers_v2") => node
            .peers
            .iter()
            .map(|&(ip, port)| {
                vec![
                    inet(ip),
                    int(STORAGE_PORT),
                    text(DATA_CENTER),
                    uuid(host_id_of(ip, port)),
                    inet(ip),
                    int(i32::from(port)),
                    None,
                    None,
                    text(RACK),
                    text(&node.release_version),
                    schema_version.clone(),
                    tokens(ip, port),
                ]
            })
            .collect(),
        ("system_schema", "keyspaces") => {
            let local = text_map(&[("class", "org.apache.cassandra.locator.LocalStrategy")]);
            let mut rows = vec![
                vec![text("system"), boolean(true), local.clone()],
                vec![text("system_schema"), boolean(true), local],
            ];
            for (name, ks) in &catalog.keyspaces {
                let replication: Vec<(&str, &str)> =
                    ks.replication.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                rows.push(vec![text(name), boolean(ks.durable_writes), text_map(&replication)]);
            }
            rows
        }
        ("system_schema", "tables") => described_tables(catalog, false)
            .into_iter()
            .map(|t| {
                vec![
                    text(&t.keyspace),
                    text(&t.table),
                    text("99p"),
                    double(0.01),
                    text_map(&[("keys", "ALL"), ("rows_per_partition", "NONE")]),
                    boolean(false),
                    text(""),
                    text_map(&[
                        ("class", "org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy"),
                        ("max_threshold", "32"),
                        ("min_threshold", "4"),
                    ]),
                    text_map(&[
                        ("chunk_length_in_kb", "16"),
                        ("class", "org.apache.cassandra.io.compress.LZ4Compressor"),
                    ]),
                    double(1.0),
                    int(0),
                    super::values::map(&[]),
                    text_list(&["compound"]),
                    int(864_000),
                    uuid(t.id),
                    int(2048),
                    int(0),
                    int(128),
                    text("BLOCKING"),
                    text("99p"),
                ]
            })
            .collect(),
        ("system_schema", "columns") => column_rows(&described_tables(catalog, false)),
        ("system_virtual_schema", "keyspaces") => vec![vec![text("system_virtual_schema")]],
        ("system_virtual_schema", "tables") => described_tables(catalog, true)
            .into_iter()
            .map(|t| vec![text(&t.keyspace), text(&t.table), text("")])
            .collect(),
        ("system_virtual_schema", "columns") => column_rows(&described_tables(catalog, true)),
        // types, functions, aggregates, views, indexes, triggers, dropped_columns: none here.
        _ => Vec::new(),
    };
    Some(TableData {
        keyspace: keyspace.into(),
        name: name.into(),
        columns: columns_of(def),
        key: 0,
        rows,
        system: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn every_system_table_is_well_formed() {
        let node = Node {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 9042,
            peers: vec![(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 9043)],
            release_version: "5.0.0".into(),
            native_protocol_version: "5".into(),
        };
        let catalog = Catalog::default();
        for def in TABLES {
            let data = table(def.keyspace, def.name, &catalog, &node).unwrap();
            for row in &data.rows {
                assert_eq!(row.len(), data.columns.len(), "{}.{}", def.keyspace, def.name);
            }
        }
        assert_eq!(table("system", "peers", &catalog, &node).unwrap().rows.len(), 1);
        assert!(table("system", "nope", &catalog, &node).is_none());
        assert_ne!(token_of(node.address, 9042), token_of(node.address, 9043));
    }
}
