//! The slot map of a Valkey Cluster, shared by every connection of one core.
//!
//! Built from `CLUSTER SLOTS`; updated slot by slot on `MOVED`, and rebuilt after connection
//! errors and MOVED replies. Slots are found with CRC16 and hash tags (`{user1}.name`).

use crate::sinks::valkey::{UpstreamTls, ValkeyConnection};
use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use shotover_protocols::valkey::commands::CommandTable;
use shotover_protocols::valkey::frame::parse;
use shotover_protocols::valkey::ValkeyFrame;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

pub const SLOTS: usize = 16384;
/// The slot map is fetched again when it is this old, even without MOVED or errors.
pub const REFRESH_EVERY: Duration = Duration::from_secs(30);

pub use shotover_protocols::valkey::command::key_slot as slot;

/// Which master serves each slot.
#[derive(Debug, Clone, Default)]
pub struct SlotMap {
    /// Index into `masters` per slot; `None` until known.
    slots: Vec<Option<u16>>,
    pub masters: Vec<SocketAddr>,
    /// Every replica CLUSTER SLOTS lists, for commands that run on every node.
    pub replicas: Vec<SocketAddr>,
    fetched_at: Option<Instant>,
}

impl SlotMap {
    /// True when the map was fetched longer than [`REFRESH_EVERY`] ago.
    pub fn is_stale(&self) -> bool {
        self.fetched_at.is_some_and(|at| at.elapsed() > REFRESH_EVERY)
    }

    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }

    /// The master serving `slot`, if known.
    pub fn master_of(&self, slot: u16) -> Option<SocketAddr> {
        let index = (*self.slots.get(usize::from(slot))?)?;
        self.masters.get(usize::from(index)).copied()
    }

    /// Records a `MOVED`: `slot` is now served by `addr`.
    pub fn moved(&mut self, slot: u16, addr: SocketAddr) {
        let index = match self.masters.iter().position(|m| *m == addr) {
            Some(i) => i,
            None => {
                self.masters.push(addr);
                self.masters.len() - 1
            }
        };
        if self.slots.len() < SLOTS {
            self.slots.resize(SLOTS, None);
        }
        if let (Some(entry), Ok(index)) = (self.slots.get_mut(usize::from(slot)), u16::try_from(index)) {
            *entry = Some(index);
        }
    }

    /// Builds the map from a `CLUSTER SLOTS` reply; `fallback_host` stands in for nodes
    /// that report an empty host (a node that does not know its own address).
    pub fn from_cluster_slots(reply: &Bytes, fallback_host: &str) -> Result<SlotMap> {
        let (frame, _) = parse(reply).map_err(|e| anyhow!("invalid CLUSTER SLOTS reply: {e}"))?;
        let ValkeyFrame::Array { data: ranges, .. } = frame else {
            bail!("CLUSTER SLOTS did not answer with an array: {}", String::from_utf8_lossy(reply).trim_end());
        };
        let mut map = SlotMap { slots: vec![None; SLOTS], fetched_at: Some(Instant::now()), ..SlotMap::default() };
        for range in ranges {
            let ValkeyFrame::Array { data: fields, .. } = range else { continue };
            let (Some(ValkeyFrame::Number { data: start, .. }), Some(ValkeyFrame::Number { data: end, .. })) =
                (fields.first(), fields.get(1))
            else {
                continue;
            };
            let Some(ValkeyFrame::Array { data: master, .. }) = fields.get(2) else { continue };
            let Some(addr) = node_address(master, fallback_host)? else { continue };
            map.moved_range(*start, *end, addr);
            for replica in fields.get(3..).unwrap_or_default() {
                let ValkeyFrame::Array { data: replica, .. } = replica else { continue };
                // A replica whose address does not resolve is left out, not the whole map.
                if let Ok(Some(addr)) = node_address(replica, fallback_host) {
                    if !map.replicas.contains(&addr) {
                        map.replicas.push(addr);
                    }
                }
            }
        }
        if map.masters.is_empty() {
            bail!("CLUSTER SLOTS listed no masters");
        }
        Ok(map)
    }

    /// A map of the given inclusive slot ranges, masters in the order given: for tests that
    /// route without a cluster.
    #[cfg(test)]
    pub(crate) fn from_ranges(ranges: &[(u16, u16, SocketAddr)]) -> SlotMap {
        let mut map = SlotMap { slots: vec![None; SLOTS], fetched_at: Some(Instant::now()), ..SlotMap::default() };
        for (start, end, addr) in ranges {
            map.moved_range(i64::from(*start), i64::from(*end), *addr);
        }
        map
    }

    fn moved_range(&mut self, start: i64, end: i64, addr: SocketAddr) {
        let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else { return };
        for slot in start..=end.min(SLOTS as u16 - 1) {
            self.moved(slot, addr);
        }
    }
}

/// One node of a CLUSTER SLOTS entry (`[host, port, id, ...]`): its address.
fn node_address(node: &[ValkeyFrame], fallback_host: &str) -> Result<Option<SocketAddr>> {
    let host = match node.first() {
        Some(ValkeyFrame::BlobString { data, .. }) if !data.is_empty() => String::from_utf8_lossy(data).into_owned(),
        _ => fallback_host.to_string(),
    };
    let Some(ValkeyFrame::Number { data: port, .. }) = node.get(1) else { return Ok(None) };
    Ok((host.as_str(), u16::try_from(*port).unwrap_or(0)).to_socket_addrs()?.next())
}

/// What a node told about the cluster: its slot map and, when asked for, its command table
/// (or why it refused `COMMAND`).
pub struct Fetched {
    pub map: SlotMap,
    pub commands: Option<Result<CommandTable, String>>,
}

/// Fetches the slot map from the first of `nodes` that answers, and with `commands` the
/// command table from the same node.
pub async fn fetch(
    nodes: &[SocketAddr],
    timeout: Duration,
    tls: Option<&futures_rustls::TlsConnector>,
    auth: &[Bytes],
    commands: bool,
) -> Result<Fetched> {
    let mut last_error = anyhow!("no cluster node to ask");
    for node in nodes {
        let tls = tls.map(|connector| node_tls(connector, *node));
        match fetch_from(*node, timeout, tls.as_ref(), auth, commands).await {
            Ok(map) => return Ok(map),
            Err(e) => last_error = e.context(format!("asking {node} for CLUSTER SLOTS")),
        }
    }
    Err(last_error)
}

/// TLS to one node, verified against its IP address.
pub fn node_tls(connector: &futures_rustls::TlsConnector, node: SocketAddr) -> UpstreamTls {
    UpstreamTls { connector: connector.clone(), server_name: rustls_pki_types::ServerName::IpAddress(node.ip().into()) }
}

async fn fetch_from(
    node: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
    auth: &[Bytes],
    commands: bool,
) -> Result<Fetched> {
    let mut conn = ValkeyConnection::connect(node, timeout, tls).await?;
    for command in auth {
        conn.write_all(command).await?;
        let reply = conn.next().await?;
        if reply.first() == Some(&b'-') {
            bail!("AUTH refused: {}", String::from_utf8_lossy(&reply).trim_end());
        }
    }
    conn.write_all(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n").await?;
    let reply = conn.next().await?;
    let map = SlotMap::from_cluster_slots(&reply, &node.ip().to_string())?;
    if !commands {
        return Ok(Fetched { map, commands: None });
    }
    conn.write_all(b"*1\r\n$7\r\nCOMMAND\r\n").await?;
    let reply = conn.next().await?;
    Ok(Fetched { map, commands: Some(CommandTable::from_reply(&reply)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_share_a_slot() {
        assert_eq!(slot(b"{user1}.name"), slot(b"{user1}.age"));
        assert_eq!(slot(b"foo"), 12182);
    }

    #[test]
    fn cluster_slots_reply() {
        let reply = Bytes::from_static(
            b"*2\r\n*3\r\n:0\r\n:8000\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*4\r\n:8001\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7004\r\n$2\r\nid\r\n",
        );
        let map = SlotMap::from_cluster_slots(&reply, "127.0.0.9").unwrap();
        assert_eq!(map.master_of(0), Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(map.master_of(16383), Some("127.0.0.9:7001".parse().unwrap()));
        assert_eq!(map.replicas, vec!["127.0.0.1:7004".parse::<SocketAddr>().unwrap()]);
        let mut map = map;
        map.moved(5, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(map.master_of(5), Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(map.masters.len(), 3);
    }

    #[test]
    fn map_from_ranges() {
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:7000".parse().unwrap(), "10.0.0.2:7000".parse().unwrap());
        let map = SlotMap::from_ranges(&[(0, 99, a), (100, 16383, b)]);
        assert_eq!(map.masters, vec![a, b]);
        assert_eq!((map.master_of(0), map.master_of(99), map.master_of(100)), (Some(a), Some(a), Some(b)));
        assert_eq!(map.master_of(16383), Some(b));
        let partial = SlotMap::from_ranges(&[(0, 9, a)]);
        assert_eq!((partial.master_of(9), partial.master_of(10)), (Some(a), None));
        assert!(!partial.is_stale());
    }
}
