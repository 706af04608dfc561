//! The Cassandra cluster as the proxy sees it: its nodes, their tokens, and which nodes hold
//! the replicas of each keyspace. Pure data; the control connection fills it.
//!
//! - A partition belongs to the node owning the first ring token at or after the
//!   partition's token, wrapping around.
//! - `SimpleStrategy` places its replicas on the next distinct nodes along the ring.
//! - `NetworkTopologyStrategy` places each data centre's replicas on its own, walking the ring
//!   and taking nodes of racks not used yet first, then (once every rack has one) the nodes it
//!   skipped, in ring order, as Cassandra does.
//! - Only the local data centre's replicas are kept: the proxy never routes outside it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// One Cassandra node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Where clients connect to it (its native transport address).
    pub address: SocketAddr,
    pub data_center: String,
    pub rack: String,
    pub tokens: Vec<i64>,
}

/// How a keyspace places its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy`: this many nodes along the ring, whatever their data centre.
    Simple(usize),
    /// `NetworkTopologyStrategy`: this many in each named data centre.
    Network(Vec<(String, usize)>),
    /// `LocalStrategy`, `EverywhereStrategy` and strategies unknown here: any node can serve.
    Anywhere,
}

impl Replication {
    /// From a keyspace's replication options (`class` and the factors), as
    /// `system_schema.keyspaces.replication` or 2.1's `strategy_class`/`strategy_options` give them.
    pub fn from_options(class: &str, options: &[(String, String)]) -> Self {
        let short = class.rsplit('.').next().unwrap_or(class);
        let factor = |v: &str| v.split('/').next().and_then(|n| n.trim().parse::<usize>().ok());
        match short {
            "SimpleStrategy" => options
                .iter()
                .find(|(k, _)| k == "replication_factor")
                .and_then(|(_, v)| factor(v))
                .map_or(Replication::Anywhere, Replication::Simple),
            "NetworkTopologyStrategy" => Replication::Network(
                options
                    .iter()
                    .filter(|(k, _)| k != "class" && k != "replication_factor")
                    .filter_map(|(dc, v)| Some((dc.clone(), factor(v)?)))
                    .collect(),
            ),
            _ => Replication::Anywhere,
        }
    }
}

/// The ring, with each keyspace's local replicas worked out once per change.
#[derive(Debug, Default)]
pub struct Ring {
    pub nodes: Vec<Node>,
    /// Every token, sorted, with the index of its node.
    tokens: Vec<(i64, usize)>,
    /// Per keyspace, per position in `tokens`: the local data centre's replicas of the range
    /// ending at that token, as indexes into `nodes`. Absent: any local node can serve.
    replicas: HashMap<String, Vec<Box<[usize]>>>,
}

impl Ring {
    /// Builds the ring for a proxy routing within `local_dc`.
    pub fn new(nodes: Vec<Node>, keyspaces: &HashMap<String, Replication>, local_dc: &str) -> Self {
        let mut tokens: Vec<(i64, usize)> =
            nodes.iter().enumerate().flat_map(|(i, n)| n.tokens.iter().map(move |&t| (t, i))).collect();
        tokens.sort_unstable();
        let mut ring = Ring { nodes, tokens, replicas: HashMap::new() };
        for (keyspace, replication) in keyspaces {
            if let Some(table) = ring.replica_table(replication, local_dc) {
                ring.replicas.insert(keyspace.clone(), table);
            }
        }
        ring
    }

    /// The local replicas of `token` in `keyspace`, primary first; `None` when the keyspace
    /// or the ring is unknown, so that any local node will do.
    pub fn replicas(&self, keyspace: &str, token: i64) -> Option<&[usize]> {
        let table = self.replicas.get(keyspace)?;
        let at = self.tokens.partition_point(|&(t, _)| t < token);
        let at = if at == self.tokens.len() { 0 } else { at };
        table.get(at).map(|r| &r[..])
    }

    fn replica_table(&self, replication: &Replication, local_dc: &str) -> Option<Vec<Box<[usize]>>> {
        if self.tokens.is_empty() {
            return None;
        }
        match replication {
            Replication::Anywhere => None,
            Replication::Simple(rf) => {
                let mut walk = Walk::new(self.nodes.len());
                Some(
                    (0..self.tokens.len())
                        .map(|start| {
                            let all: Vec<usize> = walk.distinct(&self.tokens, start).take(*rf).collect();
                            all.into_iter()
                                .filter(|&i| self.nodes.get(i).is_some_and(|n| n.data_center == local_dc))
                                .collect()
                        })
                        .collect(),
                )
            }
            Replication::Network(factors) => {
                let rf = factors.iter().find(|(dc, _)| dc == local_dc).map_or(0, |(_, rf)| *rf);
                Some(self.network_table(local_dc, rf))
            }
        }
    }

    /// NetworkTopologyStrategy's replicas in data centre `dc`, for every ring position.
    fn network_table(&self, dc: &str, rf: usize) -> Vec<Box<[usize]>> {
        // Each node's rack, as an index into the data centre's racks (None outside it).
        let mut racks: Vec<&str> = Vec::new();
        let rack_of: Vec<Option<usize>> = (self.nodes.iter())
            .map(|n| {
                (n.data_center == dc).then(|| match racks.iter().position(|r| *r == n.rack) {
                    Some(i) => i,
                    None => {
                        racks.push(&n.rack);
                        racks.len() - 1
                    }
                })
            })
            .collect();
        let rf = rf.min(rack_of.iter().flatten().count());
        let mut walk = Walk::new(self.nodes.len());
        let mut seen_racks = vec![false; racks.len()];
        (0..self.tokens.len())
            .map(|start| {
                seen_racks.fill(false);
                let (mut racks_seen, mut replicas, mut skipped) = (0, Vec::with_capacity(rf), Vec::new());
                for node in walk.distinct(&self.tokens, start) {
                    if replicas.len() >= rf {
                        break;
                    }
                    let Some(Some(rack)) = rack_of.get(node).copied() else { continue };
                    if racks_seen == racks.len() {
                        replicas.push(node);
                    } else if seen_racks.get(rack) == Some(&false) {
                        if let Some(seen) = seen_racks.get_mut(rack) {
                            *seen = true;
                        }
                        racks_seen += 1;
                        replicas.push(node);
                        if racks_seen == racks.len() {
                            // Every rack has a replica: the nodes skipped for a repeated rack
                            // come next.
                            let room = rf.saturating_sub(replicas.len());
                            replicas.extend(skipped.drain(..).take(room));
                        }
                    } else {
                        skipped.push(node);
                    }
                }
                replicas.into_boxed_slice()
            })
            .collect()
    }

    /// The tokens each Shotover node reports: those of the Cassandra nodes in its own data
    /// centre and rack, shared out in turn among the Shotover nodes of that rack, so that no
    /// token is reported twice. A token-aware driver then sends each partition to a Shotover
    /// node whose rack holds a replica of it. A Shotover node whose rack has no Cassandra
    /// node shares what no rack claimed: of its data centre, else of the whole ring.
    pub fn shotover_tokens(&self, places: &[(&str, &str)]) -> Vec<Vec<i64>> {
        let tokens_where = |f: &dyn Fn(&Node) -> bool| -> Vec<i64> {
            let mut t: Vec<i64> = self.nodes.iter().filter(|n| f(n)).flat_map(|n| n.tokens.iter().copied()).collect();
            t.sort_unstable();
            t
        };
        // Each place's candidate tokens and the key of the group that shares them.
        let mut plan: Vec<(Vec<i64>, (String, String))> = places
            .iter()
            .map(|&(dc, rack)| (tokens_where(&|n| n.data_center == dc && n.rack == rack), (dc.into(), rack.into())))
            .collect();
        let claimed: HashSet<i64> = plan.iter().flat_map(|(t, _)| t.iter().copied()).collect();
        for (i, &(dc, _)) in places.iter().enumerate() {
            let Some(entry) = plan.get_mut(i) else { continue };
            if entry.0.is_empty() {
                let mut rest = tokens_where(&|n| n.data_center == dc);
                rest.retain(|t| !claimed.contains(t));
                *entry = if rest.is_empty() {
                    let mut all = tokens_where(&|_| true);
                    all.retain(|t| !claimed.contains(t));
                    (all, (String::new(), "*".into()))
                } else {
                    (rest, (dc.into(), "*".into()))
                };
            }
        }
        (0..plan.len())
            .map(|i| {
                let Some((tokens, key)) = plan.get(i) else { return Vec::new() };
                let group: Vec<usize> = (0..plan.len()).filter(|&j| plan.get(j).is_some_and(|p| &p.1 == key)).collect();
                let turn = group.iter().position(|&j| j == i).unwrap_or(0);
                let share = group.len().max(1);
                tokens.iter().enumerate().filter(|(k, _)| k % share == turn).map(|(_, &t)| t).collect()
            })
            .collect()
    }
}

/// Walks the ring from a position, giving each node once; its buffer is reused between walks.
struct Walk {
    seen: Vec<bool>,
}

impl Walk {
    fn new(nodes: usize) -> Self {
        Walk { seen: vec![false; nodes] }
    }

    fn distinct<'a>(&'a mut self, tokens: &'a [(i64, usize)], start: usize) -> impl Iterator<Item = usize> + 'a {
        self.seen.fill(false);
        let n = tokens.len();
        let seen = &mut self.seen;
        (0..n).filter_map(move |k| {
            let (_, node) = *tokens.get((start + k) % n)?;
            let slot = seen.get_mut(node)?;
            (!std::mem::replace(slot, true)).then_some(node)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ip: &str, dc: &str, rack: &str, tokens: &[i64]) -> Node {
        Node {
            address: format!("{ip}:9042").parse().unwrap(),
            data_center: dc.into(),
            rack: rack.into(),
            tokens: tokens.to_vec(),
        }
    }

    fn ring(local: &str, ks: Replication) -> Ring {
        let nodes = vec![
            node("10.0.0.1", "dc1", "r1", &[0, 300]),
            node("10.0.0.2", "dc1", "r1", &[100, 400]),
            node("10.0.0.3", "dc1", "r2", &[200, 500]),
            node("10.0.0.4", "dc2", "r1", &[50, 250]),
        ];
        Ring::new(nodes, &HashMap::from([("ks".to_string(), ks)]), local)
    }

    #[test]
    fn simple_strategy_walks_distinct_nodes_and_keeps_the_local_ones() {
        let r = ring("dc1", Replication::Simple(2));
        // Token 60 belongs to the range ending at 100 (node 2); the next distinct node is node 3
        // (200), then ... so replicas are nodes 2 and 3 (indexes 1 and 2).
        assert_eq!(r.replicas("ks", 60), Some(&[1, 2][..]));
        // Token 10: range ending at 50, node 4 (dc2), then node 2: only node 2 is local.
        assert_eq!(r.replicas("ks", 10), Some(&[1][..]));
        // Past the last token wraps to the first (0, node 1), then 50 (node 4, dc2).
        assert_eq!(r.replicas("ks", 600), Some(&[0][..]));
        assert_eq!(r.replicas("other", 600), None);
    }

    #[test]
    fn network_topology_strategy_prefers_new_racks_then_fills_with_skipped_nodes() {
        let r = ring("dc1", Replication::Network(vec![("dc1".into(), 2), ("dc2".into(), 1)]));
        // From 0: node 1 (r1), node 4 (dc2, ignored), node 2 (r1, skipped), node 3 (r2).
        assert_eq!(r.replicas("ks", 0), Some(&[0, 2][..]));
        let r3 = ring("dc1", Replication::Network(vec![("dc1".into(), 3)]));
        // Once both racks have a replica, the skipped node 2 comes next.
        assert_eq!(r3.replicas("ks", 0), Some(&[0, 2, 1][..]));
        // dc2's view: its one node.
        let r2 = ring("dc2", Replication::Network(vec![("dc1".into(), 2), ("dc2".into(), 1)]));
        assert_eq!(r2.replicas("ks", 0), Some(&[3][..]));
        // A keyspace without replicas in the local data centre has none here.
        let none = ring("dc2", Replication::Network(vec![("dc1".into(), 2)]));
        assert_eq!(none.replicas("ks", 0), Some(&[][..]));
    }

    #[test]
    fn replication_options_are_read_as_cassandra_writes_them() {
        let opts = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(
            Replication::from_options(
                "org.apache.cassandra.locator.SimpleStrategy",
                &opts(&[("replication_factor", "3")])
            ),
            Replication::Simple(3)
        );
        assert_eq!(
            Replication::from_options(
                "org.apache.cassandra.locator.NetworkTopologyStrategy",
                &opts(&[("class", "x"), ("dc1", "2"), ("dc2", "3/1")])
            ),
            Replication::Network(vec![("dc1".into(), 2), ("dc2".into(), 3)])
        );
        assert_eq!(Replication::from_options("LocalStrategy", &[]), Replication::Anywhere);
    }

    #[test]
    fn shotover_nodes_report_their_racks_tokens_shared_out_without_repeats() {
        let r = ring("dc1", Replication::Anywhere);
        let t = r.shotover_tokens(&[("dc1", "r1"), ("dc1", "r1"), ("dc1", "r2"), ("dc3", "x")]);
        assert_eq!(t[0], vec![0, 300]);
        assert_eq!(t[1], vec![100, 400]);
        assert_eq!(t[2], vec![200, 500]);
        // No Cassandra node in dc3: what no rack claimed (here dc2's node, rack r1 of dc2 is
        // not asked for).
        assert_eq!(t[3], vec![50, 250]);
        // Two Shotover nodes in a rack without Cassandra nodes share their data centre's rest.
        let t = r.shotover_tokens(&[("dc1", "r2"), ("dc2", "none"), ("dc2", "none")]);
        assert_eq!(t, vec![vec![200, 500], vec![50], vec![250]]);
    }
}
