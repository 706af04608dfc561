//! What clients see instead of the Kafka cluster: a cluster made of the Shotover nodes.
//!
//! - Metadata and DescribeCluster list the Shotover nodes that are up as the brokers.
//! - A partition's leader becomes a Shotover node in the leader's rack (the same one on
//!   every Shotover node, picked by a hash of topic and partition), and its replicas every
//!   Shotover node in the replicas' racks, so a rack-aware client reads from its own rack.
//!   With no Shotover node in that rack, any node that is up stands in.
//! - FindCoordinator names a Shotover node in the coordinator's rack.
//! - ApiVersions offers only what the proxy routes, in versions it can read (see
//!   [`max_version`]), and Produce responses lose the brokers' addresses that
//!   NOT_LEADER_OR_FOLLOWER carries (KIP-951), so clients refresh their metadata instead.

use super::metadata::Metadata;
use super::shared::ShotoverNode;
use shotover_protocols::kafka::kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use shotover_protocols::kafka::kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind};
use shotover_protocols::kafka::kafka_protocol::protocol::StrBytes;

/// FNV-1a: the same on every Shotover node and every build, so all nodes tell clients
/// the same leaders.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash
}

/// The Shotover nodes that are up, and the cluster behind them.
pub(super) struct View<'a> {
    pub(super) up: Vec<&'a ShotoverNode>,
    pub(super) local: &'a ShotoverNode,
    pub(super) metadata: &'a Metadata,
}

impl View<'_> {
    /// The Shotover nodes standing for `broker`: those in its rack, else all that are up.
    fn in_rack_of(&self, broker: i32) -> Vec<&ShotoverNode> {
        let rack = self.metadata.rack(broker);
        let same: Vec<&ShotoverNode> = self.up.iter().copied().filter(|n| Some(&*n.rack) == rack).collect();
        if same.is_empty() {
            self.up.clone()
        } else {
            same
        }
    }

    /// One Shotover node standing for `broker`, picked by `hash`; `None` for a broker the
    /// metadata does not list (down, or -1).
    fn stand_in(&self, broker: i32, hash: u64) -> Option<&ShotoverNode> {
        self.metadata.brokers.get(&broker)?;
        let nodes = self.in_rack_of(broker);
        let at = hash.checked_rem(nodes.len() as u64)?;
        nodes.get(usize::try_from(at).ok()?).copied()
    }

    fn stand_ins(&self, brokers: &[BrokerId]) -> Vec<BrokerId> {
        let mut out: Vec<BrokerId> = Vec::new();
        for broker in brokers {
            if self.metadata.brokers.contains_key(&broker.0) {
                for node in self.in_rack_of(broker.0) {
                    if !out.contains(&BrokerId(node.broker_id)) {
                        out.push(BrokerId(node.broker_id));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Rewrites a response naming brokers; false when it names none.
    pub(super) fn rewrite(&self, body: &mut ResponseKind, version: i16) -> bool {
        let host = |n: &ShotoverNode| StrBytes::from_string(n.host.to_string());
        match body {
            ResponseKind::Metadata(r) => {
                r.brokers = (self.up.iter())
                    .map(|n| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(n.broker_id))
                            .with_host(host(n))
                            .with_port(n.port)
                            .with_rack(Some(StrBytes::from_string(n.rack.to_string())))
                    })
                    .collect();
                r.controller_id = BrokerId(self.local.broker_id);
                for topic in &mut r.topics {
                    let key: &[u8] = match &topic.name {
                        Some(name) => name.0.as_bytes(),
                        None => topic.topic_id.as_bytes(),
                    };
                    for p in &mut topic.partitions {
                        let hash = stable_hash(&[key, &p.partition_index.to_be_bytes()]);
                        p.leader_id = BrokerId(self.stand_in(p.leader_id.0, hash).map_or(-1, |n| n.broker_id));
                        p.replica_nodes = self.stand_ins(&p.replica_nodes);
                        p.isr_nodes = self.stand_ins(&p.isr_nodes);
                        p.offline_replicas.clear();
                    }
                }
                true
            }
            ResponseKind::DescribeCluster(r) => {
                r.brokers = (self.up.iter())
                    .map(|n| {
                        shotover_protocols::kafka::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker::default()
                            .with_broker_id(BrokerId(n.broker_id))
                            .with_host(host(n))
                            .with_port(n.port)
                            .with_rack(Some(StrBytes::from_string(n.rack.to_string())))
                    })
                    .collect();
                r.controller_id = BrokerId(self.local.broker_id);
                true
            }
            ResponseKind::FindCoordinator(r) if version < 4 => {
                if r.error_code != 0 {
                    return false;
                }
                let hash = stable_hash(&[&r.node_id.0.to_be_bytes()]);
                match self.stand_in(r.node_id.0, hash) {
                    Some(n) => (r.node_id, r.host, r.port) = (BrokerId(n.broker_id), host(n), n.port),
                    None => r.error_code = COORDINATOR_NOT_AVAILABLE,
                }
                true
            }
            ResponseKind::FindCoordinator(r) => {
                for c in r.coordinators.iter_mut().filter(|c| c.error_code == 0) {
                    let hash = stable_hash(&[c.key.as_bytes()]);
                    match self.stand_in(c.node_id.0, hash) {
                        Some(n) => (c.node_id, c.host, c.port) = (BrokerId(n.broker_id), host(n), n.port),
                        None => c.error_code = COORDINATOR_NOT_AVAILABLE,
                    }
                }
                true
            }
            ResponseKind::Produce(r) if !r.node_endpoints.is_empty() => {
                r.node_endpoints.clear();
                for p in r.responses.iter_mut().flat_map(|t| t.partition_responses.iter_mut()) {
                    p.current_leader = Default::default();
                }
                true
            }
            _ => false,
        }
    }
}

pub(super) const COORDINATOR_NOT_AVAILABLE: i16 = 15;

/// The highest version of each api the proxy offers clients, or `None` for apis it does not
/// offer. Produce stops at 12 and Fetch at 15: above, requests name topics by id only
/// (Produce 13) or responses carry brokers' addresses in tagged fields the proxy would have
/// to rewrite in every Fetch (16). AddPartitionsToTxn stops at 3: 4 and up are between
/// brokers. DescribeTopicPartitions is left out: its answers name brokers, and clients fall
/// back to Metadata.
pub(super) fn max_version(api_key: ApiKey) -> Option<i16> {
    use ApiKey::*;
    let cap = match api_key {
        Produce => 12,
        Fetch => 15,
        AddPartitionsToTxn => 3,
        ListOffsets
        | Metadata
        | OffsetCommit
        | OffsetFetch
        | FindCoordinator
        | JoinGroup
        | Heartbeat
        | LeaveGroup
        | SyncGroup
        | DescribeGroups
        | ListGroups
        | SaslHandshake
        | ApiVersions
        | CreateTopics
        | DeleteTopics
        | DeleteRecords
        | InitProducerId
        | OffsetForLeaderEpoch
        | AddOffsetsToTxn
        | EndTxn
        | TxnOffsetCommit
        | DescribeAcls
        | CreateAcls
        | DeleteAcls
        | DescribeConfigs
        | AlterConfigs
        | IncrementalAlterConfigs
        | SaslAuthenticate
        | CreatePartitions
        | DeleteGroups
        | OffsetDelete
        | DescribeCluster
        | DescribeProducers
        | DescribeTransactions
        | ListTransactions
        | ElectLeaders
        | AlterPartitionReassignments
        | ListPartitionReassignments
        | DescribeLogDirs
        | DescribeClientQuotas
        | AlterClientQuotas
        | DescribeUserScramCredentials
        | AlterUserScramCredentials
        | CreateDelegationToken
        | RenewDelegationToken
        | ExpireDelegationToken
        | DescribeDelegationToken
        | ConsumerGroupHeartbeat
        | ConsumerGroupDescribe => i16::MAX,
        _ => return None,
    };
    Some(cap.min(api_key.valid_versions().max))
}

/// Limits an ApiVersions response to what [`max_version`] allows; false when unchanged.
pub(super) fn limit_versions(body: &mut ResponseKind) -> bool {
    let ResponseKind::ApiVersions(r) = body else { return false };
    let before = r.api_keys.len();
    let mut changed = false;
    r.api_keys.retain_mut(|k| {
        let Some(max) = ApiKey::try_from(k.api_key).ok().and_then(max_version) else { return false };
        if k.min_version > max {
            return false;
        }
        if k.max_version > max {
            k.max_version = max;
            changed = true;
        }
        true
    });
    changed || r.api_keys.len() != before
}

/// SCRAM is hidden (its exchange cannot be replayed on the other brokers' connections): a
/// SaslHandshake response loses the SCRAM mechanisms, and a handshake asking for one gets
/// UNSUPPORTED_SASL_MECHANISM, as from a broker without SCRAM. False when unchanged.
pub(super) fn hide_scram(body: &mut ResponseKind, asked_scram: bool) -> bool {
    let ResponseKind::SaslHandshake(r) = body else { return false };
    let before = r.mechanisms.len();
    r.mechanisms.retain(|m| !m.starts_with("SCRAM-"));
    if asked_scram {
        r.error_code = UNSUPPORTED_SASL_MECHANISM;
    }
    asked_scram || r.mechanisms.len() != before
}

pub(super) const UNSUPPORTED_SASL_MECHANISM: i16 = 33;

#[cfg(test)]
mod tests {
    use super::*;
    use shotover_protocols::kafka::kafka_protocol::messages::metadata_response::*;
    use shotover_protocols::kafka::kafka_protocol::messages::{MetadataResponse, TopicName};
    use std::sync::Arc;

    fn node(id: i32, rack: &str) -> ShotoverNode {
        ShotoverNode {
            host: "127.0.0.1".into(),
            port: 9100 + id,
            for_peers: "127.0.0.1:1".parse().unwrap(),
            rack: Arc::from(rack),
            broker_id: id,
        }
    }

    /// Three brokers in racks a, b, c and Shotover nodes in a and b only.
    fn cluster() -> Metadata {
        let mut m = Metadata::default();
        let brokers = ["a", "b", "c"].iter().enumerate().map(|(i, rack)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(i as i32 + 1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(9092 + i as i32)
                .with_rack(Some(StrBytes::from_string(rack.to_string())))
        });
        m.update(&MetadataResponse::default().with_brokers(brokers.collect()));
        m
    }

    #[test]
    fn leaders_and_replicas_become_shotover_nodes_of_their_rack() {
        let metadata = cluster();
        let (n10, n11, n20) = (node(10, "a"), node(11, "a"), node(20, "b"));
        let view = View { up: vec![&n10, &n11, &n20], local: &n10, metadata: &metadata };
        let partition = |i, leader| {
            MetadataResponsePartition::default()
                .with_partition_index(i)
                .with_leader_id(BrokerId(leader))
                .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                .with_isr_nodes(vec![BrokerId(2)])
        };
        let mut body = ResponseKind::Metadata(MetadataResponse::default().with_topics(vec![
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions((0..8).map(|i| partition(i, 1 + i % 3)).collect()),
        ]));
        assert!(view.rewrite(&mut body, 12));
        let ResponseKind::Metadata(r) = body else { unreachable!() };
        assert_eq!(
            r.brokers.iter().map(|b| (b.node_id.0, b.port)).collect::<Vec<_>>(),
            [(10, 9110), (11, 9111), (20, 9120)]
        );
        for p in &r.topics[0].partitions {
            let leader = p.leader_id.0;
            match 1 + p.partition_index % 3 {
                1 => assert!(leader == 10 || leader == 11, "rack a's broker: a rack a node"),
                2 => assert_eq!(leader, 20),
                _ => assert!([10, 11, 20].contains(&leader), "no node in rack c: any node"),
            }
            assert_eq!(p.replica_nodes, [BrokerId(10), BrokerId(11), BrokerId(20)]);
            assert_eq!(p.isr_nodes, [BrokerId(20)]);
        }
        // Both rack a nodes lead some of rack a's partitions.
        let leaders: std::collections::HashSet<i32> = r.topics[0].partitions.iter().map(|p| p.leader_id.0).collect();
        assert!(leaders.contains(&10) || leaders.contains(&11));
    }

    #[test]
    fn scram_is_hidden() {
        use shotover_protocols::kafka::kafka_protocol::messages::SaslHandshakeResponse;
        let mechanisms = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].map(StrBytes::from_static_str).to_vec();
        let mut body = ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_mechanisms(mechanisms));
        assert!(hide_scram(&mut body, true));
        let ResponseKind::SaslHandshake(r) = body else { unreachable!() };
        assert_eq!((r.error_code, r.mechanisms), (33, vec![StrBytes::from_static_str("PLAIN")]));
    }

    #[test]
    fn versions_offered() {
        assert_eq!(max_version(ApiKey::Produce), Some(12));
        assert_eq!(max_version(ApiKey::Fetch), Some(15));
        assert_eq!(max_version(ApiKey::Metadata), Some(ApiKey::Metadata.valid_versions().max));
        assert_eq!(max_version(ApiKey::DescribeTopicPartitions), None);
        assert_eq!(max_version(ApiKey::BrokerHeartbeat), None);
    }
}
