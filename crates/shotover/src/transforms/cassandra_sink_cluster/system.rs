//! Making the proxy look like a cluster of Shotover nodes: the answers to queries on
//! `system.local`, `system.peers` and `system.peers_v2` are rewritten.
//!
//! - `system.local` becomes the local Shotover node: its address and port, data centre,
//!   rack, host id and tokens. The rest (cluster name, versions, schema version) stays the
//!   node's own.
//! - `system.peers` and `system.peers_v2` list the other Shotover nodes and only those. Their
//!   other columns (release and schema versions) are copied from a real peer's row, or from
//!   the last `system.local` answer when the cluster has a single node.
//!
//! Columns are found by what they select, so `SELECT *`, column subsets and aliases
//! (`SELECT rack AS r`) all work, and prepared statements too (their column names come from
//! the PREPARED answer when an EXECUTE's rows carry no metadata).

use bytes::Bytes;
use shotover_protocols::cassandra::cells;
use shotover_protocols::cassandra::result::Rows;
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemTable {
    Local,
    Peers,
    PeersV2,
}

/// A SELECT on one of the tables this module rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemQuery {
    pub table: SystemTable,
    /// `(alias, column)` for each selector written `column AS alias`.
    aliases: Vec<(String, String)>,
}

impl SystemQuery {
    /// The table column behind a result column.
    fn source<'a>(&'a self, result_column: &'a str) -> &'a str {
        self.aliases.iter().find(|(alias, _)| alias == result_column).map_or(result_column, |(_, c)| c.as_str())
    }
}

/// One Shotover node as the rewritten tables show it.
#[derive(Debug, Clone)]
pub struct ShotoverNode {
    pub address: SocketAddr,
    pub data_center: String,
    pub rack: String,
    pub host_id: [u8; 16],
    pub tokens: Vec<i64>,
}

/// The characters of `s` outside quotes and parentheses, with their byte offsets.
fn top_level(s: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let (mut depth, mut quote) = (0i32, None);
    s.char_indices().filter(move |&(_, c)| {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, _) => return depth == 0,
        }
        false
    })
}

/// Splits `s` at top-level occurrences of `sep` (outside quotes and parentheses).
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut start = 0;
    let mut parts: Vec<&str> = top_level(s)
        .filter(|&(_, c)| c == sep)
        .map(|(i, c)| {
            let part = s.get(start..i).unwrap_or_default();
            start = i + c.len_utf8();
            part
        })
        .collect();
    parts.push(s.get(start..).unwrap_or_default());
    parts
}

/// An identifier as Cassandra names it: quoted keeps its case, unquoted is lower-cased.
fn identifier(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return Some(inner.replace("\"\"", "\""));
    }
    (!s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then(|| s.to_ascii_lowercase())
}

/// Recognises `SELECT ... FROM system.local|peers|peers_v2 ...`.
pub fn parse(cql: &str) -> Option<SystemQuery> {
    let text = cql.trim_start();
    let head = text.get(..6)?;
    if !head.eq_ignore_ascii_case("select") {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    // The FROM that ends the selectors: the first one outside quotes and parentheses.
    let from = top_level(&lower).map(|(i, _)| i).find(|&i| lower.get(i..i + 6) == Some(" from "));
    let from = from?;
    let selectors = text.get(6..from)?;
    let rest = text.get(from + 6..)?.trim_start();
    let table_end = rest.find(|c: char| c.is_whitespace() || c == ';').unwrap_or(rest.len());
    let table: String = rest.get(..table_end)?.chars().filter(|&c| c != '"').collect::<String>().to_ascii_lowercase();
    let table = match table.as_str() {
        "system.local" => SystemTable::Local,
        "system.peers" => SystemTable::Peers,
        "system.peers_v2" => SystemTable::PeersV2,
        _ => return None,
    };
    let mut aliases = Vec::new();
    for selector in split_top(selectors, ',') {
        let words: Vec<&str> = selector.split_whitespace().collect();
        if let [column, as_, alias] = words[..] {
            if as_.eq_ignore_ascii_case("as") {
                if let (Some(column), Some(alias)) = (identifier(column), identifier(alias)) {
                    aliases.push((alias, column));
                }
            }
        }
    }
    Some(SystemQuery { table, aliases })
}

/// A cell for `column` of `node`, if the column is one that names a node.
fn node_cell(column: &str, node: &ShotoverNode) -> Option<Option<Bytes>> {
    Some(Some(match column {
        "peer" | "rpc_address" | "native_address" | "broadcast_address" | "listen_address" | "preferred_ip" => {
            cells::encode_inet(node.address.ip())
        }
        "peer_port" | "rpc_port" | "native_port" | "broadcast_port" | "listen_port" | "preferred_port" => {
            cells::encode_int(i32::from(node.address.port()))
        }
        "data_center" => Bytes::copy_from_slice(node.data_center.as_bytes()),
        "rack" => Bytes::copy_from_slice(node.rack.as_bytes()),
        "host_id" => Bytes::copy_from_slice(&node.host_id),
        "tokens" => cells::encode_text_set(&node.tokens.iter().map(i64::to_string).collect::<Vec<_>>()),
        _ => return None,
    }))
}

/// The result's column names: from its metadata, or (an EXECUTE that skipped metadata)
/// from the prepared statement's.
fn column_names(rows: &Rows, prepared: Option<&[String]>) -> Vec<String> {
    if !rows.metadata.columns.is_empty() {
        return rows.metadata.columns.iter().map(|c| c.name.clone()).collect();
    }
    prepared.map(<[String]>::to_vec).unwrap_or_default()
}

/// Rewrites a `system.local` answer as `me`'s. Returns the cells of the node's own row by
/// source column (for peers rows of a single-node cluster).
pub fn rewrite_local(
    rows: &mut Rows,
    query: &SystemQuery,
    prepared: Option<&[String]>,
    me: &ShotoverNode,
) -> Vec<(String, Option<Bytes>)> {
    let names = column_names(rows, prepared);
    let mut original = Vec::new();
    for (c, name) in names.iter().enumerate() {
        let source = query.source(name);
        if let Some(Some(cell)) = rows.cell(0, c) {
            original.push((source.to_string(), Some(cell.clone())));
        }
        if let Some(value) = node_cell(source, me) {
            for r in 0..rows.rows.len() {
                let _ = rows.set_cell(r, c, value.clone());
            }
        }
    }
    original
}

/// Rewrites a `system.peers`/`system.peers_v2` answer to list `peers`. Columns that do not
/// name a node take a real peer's value, else `local`'s (the node's own row).
pub fn rewrite_peers(
    rows: &mut Rows,
    query: &SystemQuery,
    prepared: Option<&[String]>,
    peers: &[ShotoverNode],
    local: &[(String, Option<Bytes>)],
) {
    let names = column_names(rows, prepared);
    let width = rows.metadata.columns_count;
    let template: Vec<Option<Bytes>> = (0..width)
        .map(|c| match rows.cell(0, c) {
            Some(cell) => cell.cloned(),
            None => {
                let source = names.get(c).map(|n| query.source(n));
                local.iter().find(|(name, _)| Some(name.as_str()) == source).and_then(|(_, v)| v.clone())
            }
        })
        .collect();
    rows.rows = peers
        .iter()
        .map(|peer| {
            (0..width)
                .map(|c| {
                    let source = names.get(c).map_or("", |n| query.source(n));
                    node_cell(source, peer).unwrap_or_else(|| template.get(c).cloned().flatten())
                })
                .collect()
        })
        .collect();
    // Every peer is on this page: a driver must not ask for more.
    rows.metadata.paging_state = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use shotover_protocols::cassandra::result::{ColumnType, RowsMetadata};

    #[test]
    fn recognises_system_selects_with_aliases() {
        let q = parse("SELECT * FROM system.local WHERE key='local'").unwrap();
        assert_eq!((q.table, q.aliases.len()), (SystemTable::Local, 0));
        let q = parse("select peer, data_center AS dc, \"rack\" as \"Rk\" from \"system\".\"peers_v2\";").unwrap();
        assert_eq!(q.table, SystemTable::PeersV2);
        assert_eq!(q.source("dc"), "data_center");
        assert_eq!(q.source("Rk"), "rack");
        assert_eq!(q.source("peer"), "peer");
        assert_eq!(parse("SELECT count(*) AS n FROM system.peers").unwrap().table, SystemTable::Peers);
        assert!(parse("SELECT * FROM system.peers_v3").is_none());
        assert!(parse("SELECT * FROM ks.local").is_none());
        assert!(parse("INSERT INTO system.local (key) VALUES ('x')").is_none());
        assert!(parse("SELECT 'from system.local' FROM ks.t").is_none());
    }

    fn node(ip: &str, rack: &str, id: u8, tokens: &[i64]) -> ShotoverNode {
        ShotoverNode {
            address: format!("{ip}:9042").parse().unwrap(),
            data_center: "dc1".into(),
            rack: rack.into(),
            host_id: [id; 16],
            tokens: tokens.to_vec(),
        }
    }

    fn rows(columns: &[(&str, ColumnType)], data: Vec<Vec<Option<Bytes>>>) -> Rows {
        Rows {
            metadata: RowsMetadata::for_table("system", "t", columns.iter().map(|(n, t)| (n.to_string(), t.clone()))),
            rows: data,
        }
    }

    #[test]
    fn local_becomes_the_shotover_node_by_alias_too() {
        let q = parse("SELECT rack AS r, tokens, cluster_name, rpc_address FROM system.local").unwrap();
        let mut r = rows(
            &[
                ("r", ColumnType::Varchar),
                ("tokens", ColumnType::Set(Box::new(ColumnType::Varchar))),
                ("cluster_name", ColumnType::Varchar),
                ("rpc_address", ColumnType::Inet),
            ],
            vec![vec![
                Some(Bytes::from("real-rack")),
                Some(cells::encode_text_set(&["1"])),
                Some(Bytes::from("c")),
                Some(Bytes::from_static(&[10, 0, 0, 9])),
            ]],
        );
        let me = node("127.0.0.5", "rack7", 1, &[-5, 7]);
        let original = rewrite_local(&mut r, &q, None, &me);
        assert_eq!(r.cell(0, 0), Some(Some(&Bytes::from("rack7"))));
        assert_eq!(cells::text_set(r.cell(0, 1).unwrap().unwrap()), Some(vec!["-5".into(), "7".into()]));
        assert_eq!(r.cell(0, 2), Some(Some(&Bytes::from("c"))));
        assert_eq!(r.cell(0, 3), Some(Some(&Bytes::from_static(&[127, 0, 0, 5]))));
        assert!(original.contains(&("cluster_name".to_string(), Some(Bytes::from("c")))));
    }

    #[test]
    fn peers_list_the_other_shotover_nodes_with_a_real_peers_versions() {
        let q = parse("SELECT * FROM system.peers").unwrap();
        let cols = [("peer", ColumnType::Inet), ("schema_version", ColumnType::Uuid), ("host_id", ColumnType::Uuid)];
        let real = vec![Some(Bytes::from_static(&[10, 0, 0, 2])), Some(Bytes::from_static(&[9; 16])), None];
        let mut r = rows(&cols, vec![real.clone(), real]);
        let peers = [node("127.0.0.2", "r2", 2, &[]), node("127.0.0.3", "r1", 3, &[]), node("127.0.0.4", "r1", 4, &[])];
        rewrite_peers(&mut r, &q, None, &peers, &[]);
        assert_eq!(r.rows.len(), 3);
        assert_eq!(r.cell(2, 0), Some(Some(&Bytes::from_static(&[127, 0, 0, 4]))));
        assert_eq!(r.cell(2, 1), Some(Some(&Bytes::from_static(&[9; 16]))));
        assert_eq!(r.cell(2, 2), Some(Some(&Bytes::copy_from_slice(&[4; 16]))));
        // A single-node cluster has no real peer: the local row's versions are used.
        let mut r = rows(&cols, vec![]);
        let local = vec![("schema_version".to_string(), Some(Bytes::from_static(&[8; 16])))];
        rewrite_peers(&mut r, &q, None, &peers[..1], &local);
        assert_eq!(r.cell(0, 1), Some(Some(&Bytes::from_static(&[8; 16]))));
        // No other Shotover node: no rows.
        rewrite_peers(&mut r, &q, None, &[], &local);
        assert!(r.rows.is_empty());
    }
}
