//! The Kafka cluster as the proxy last saw it: brokers with their racks, each partition's
//! leader, and the group and transaction coordinators found so far.
//!
//! It is learned from the Metadata and FindCoordinator responses that pass through (the
//! clients' own and the proxy's), and pieces are forgotten when a broker says they are
//! stale (NOT_LEADER_OR_FOLLOWER, NOT_COORDINATOR and the like), so the next request that
//! needs them asks again.

use shotover_protocols::kafka::kafka_protocol::messages::MetadataResponse;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

/// A topic as a request names it: by name, or by id (Fetch v13+).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum TopicKey {
    Name(Rc<str>),
    Id([u8; 16]),
}

#[derive(Debug, Clone)]
pub(super) struct Broker {
    pub(super) host: Rc<str>,
    pub(super) port: i32,
    /// `None` until the host name is looked up.
    pub(super) address: Option<SocketAddr>,
    pub(super) rack: Option<Rc<str>>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Topic {
    pub(super) name: Option<Rc<str>>,
    pub(super) id: [u8; 16],
    /// The leader's broker id by partition index (-1: none).
    pub(super) leaders: Vec<i32>,
}

/// Partition indexes at or above this are ignored (Kafka's own tools refuse topics with
/// more than a few hundred thousand partitions).
const MAX_PARTITIONS: usize = 1 << 20;

/// Coordinators remembered per core, at most.
const MAX_COORDINATORS: usize = 100_000;

/// Which coordinator: FindCoordinator's key types.
pub(super) const GROUP: i8 = 0;
pub(super) const TRANSACTION: i8 = 1;

#[derive(Debug, Default)]
pub(super) struct Metadata {
    pub(super) brokers: BTreeMap<i32, Broker>,
    topics: HashMap<TopicKey, Rc<Topic>>,
    coordinators: HashMap<(i8, Rc<str>), i32>,
    pub(super) controller: i32,
}

impl Metadata {
    /// Takes in a Metadata response: its brokers replace those known (when it lists any),
    /// and each topic it describes without error replaces what was known of it.
    pub(super) fn update(&mut self, response: &MetadataResponse) {
        if !response.brokers.is_empty() {
            let old = std::mem::take(&mut self.brokers);
            for b in &response.brokers {
                let host: Rc<str> = Rc::from(&*b.host);
                let ip = host.parse::<IpAddr>().ok();
                let port = u16::try_from(b.port).unwrap_or(0);
                // A name looked up before keeps its address while host and port stay.
                let known =
                    old.get(&b.node_id.0).filter(|o| o.host == host && o.port == b.port).and_then(|o| o.address);
                let address = ip.map(|ip| SocketAddr::new(ip, port)).or(known);
                let rack = b.rack.as_ref().map(|r| Rc::from(&**r));
                self.brokers.insert(b.node_id.0, Broker { host, port: b.port, address, rack });
            }
            self.controller = response.controller_id.0;
        }
        for t in &response.topics {
            let name: Option<Rc<str>> = t.name.as_ref().map(|n| Rc::from(&*n.0));
            let id = *t.topic_id.as_bytes();
            if t.error_code != 0 {
                self.forget_topic(name.clone().map(TopicKey::Name).unwrap_or(TopicKey::Id(id)));
                continue;
            }
            let mut leaders = Vec::new();
            for p in &t.partitions {
                // A partition index is small; a huge one (a broker's bug) must not size a Vec.
                let Ok(index) = usize::try_from(p.partition_index) else { continue };
                if index >= MAX_PARTITIONS {
                    continue;
                }
                if index >= leaders.len() {
                    leaders.resize(index + 1, -1);
                }
                if let Some(leader) = leaders.get_mut(index) {
                    *leader = p.leader_id.0;
                }
            }
            let topic = Rc::new(Topic { name: name.clone(), id, leaders });
            if let Some(name) = name {
                self.topics.insert(TopicKey::Name(name), topic.clone());
            }
            if id != [0; 16] {
                self.topics.insert(TopicKey::Id(id), topic);
            }
        }
    }

    pub(super) fn topic(&self, key: &TopicKey) -> Option<&Rc<Topic>> {
        self.topics.get(key)
    }

    /// Forgets a topic (under its name and its id).
    pub(super) fn forget_topic(&mut self, key: TopicKey) {
        if let Some(topic) = self.topics.remove(&key) {
            self.topics.remove(&TopicKey::Id(topic.id));
            if let Some(name) = &topic.name {
                self.topics.remove(&TopicKey::Name(name.clone()));
            }
        }
    }

    /// Forgets every topic: a broker failed, and leaders may have moved.
    pub(super) fn forget_topics(&mut self) {
        self.topics.clear();
    }

    /// The broker id leading a partition, if known.
    pub(super) fn leader(&self, key: &TopicKey, partition: i32) -> Option<i32> {
        let topic = self.topics.get(key)?;
        let leader = *topic.leaders.get(usize::try_from(partition).ok()?)?;
        (leader >= 0).then_some(leader)
    }

    pub(super) fn address(&self, broker: i32) -> Option<SocketAddr> {
        self.brokers.get(&broker)?.address
    }

    pub(super) fn rack(&self, broker: i32) -> Option<&str> {
        self.brokers.get(&broker)?.rack.as_deref()
    }

    /// Brokers whose host names still need looking up: (id, host, port).
    pub(super) fn unresolved(&self) -> Vec<(i32, Rc<str>, i32)> {
        (self.brokers.iter())
            .filter(|(_, b)| b.address.is_none())
            .map(|(id, b)| (*id, b.host.clone(), b.port))
            .collect()
    }

    pub(super) fn set_address(&mut self, broker: i32, address: SocketAddr) {
        if let Some(b) = self.brokers.get_mut(&broker) {
            b.address = Some(address);
        }
    }

    /// The brokers in `rack` (or all, when no broker has a rack), and the others.
    pub(super) fn brokers_by_rack(&self, rack: &str) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let racked = self.brokers.values().any(|b| b.rack.is_some());
        let (near, far): (Vec<_>, Vec<_>) =
            self.brokers.values().partition(|b| !racked || b.rack.as_deref() == Some(rack));
        let addresses = |list: Vec<&Broker>| list.into_iter().filter_map(|b| b.address).collect();
        (addresses(near), addresses(far))
    }

    pub(super) fn coordinator(&self, kind: i8, key: &str) -> Option<i32> {
        self.coordinators.get(&(kind, Rc::from(key))).copied()
    }

    pub(super) fn set_coordinator(&mut self, kind: i8, key: &str, broker: i32) {
        // Clients pick the ids: the map must not grow without end. Starting over costs a
        // FindCoordinator per id in use.
        if self.coordinators.len() >= MAX_COORDINATORS {
            self.coordinators.clear();
        }
        self.coordinators.insert((kind, Rc::from(key)), broker);
    }

    /// Forgets the coordinators on the broker at `address`, whose connection failed.
    pub(super) fn forget_coordinators_at(&mut self, address: SocketAddr) {
        let ids: Vec<i32> =
            (self.brokers.iter()).filter(|(_, b)| b.address == Some(address)).map(|(id, _)| *id).collect();
        self.coordinators.retain(|_, broker| !ids.contains(broker));
    }

    pub(super) fn forget_coordinator(&mut self, kind: i8, key: &str) {
        self.coordinators.remove(&(kind, Rc::from(key)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shotover_protocols::kafka::kafka_protocol::messages::metadata_response::*;
    use shotover_protocols::kafka::kafka_protocol::messages::{BrokerId, TopicName};
    use shotover_protocols::kafka::kafka_protocol::protocol::StrBytes;

    fn broker(id: i32, host: &'static str, rack: &'static str) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_static_str(host))
            .with_port(9092)
            .with_rack(Some(StrBytes::from_static_str(rack)))
    }

    #[test]
    fn leaders_racks_and_forgetting() {
        let mut m = Metadata::default();
        let partition = |i, leader| {
            MetadataResponsePartition::default()
                .with_partition_index(i)
                .with_leader_id(BrokerId(leader))
                .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
        };
        let response = MetadataResponse::default()
            .with_brokers(vec![broker(1, "127.0.0.1", "a"), broker(2, "kafka-2.example", "b")])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                .with_partitions(vec![partition(1, 2), partition(0, 1)])]);
        m.update(&response);
        let t = TopicKey::Name("t".into());
        assert_eq!((m.leader(&t, 0), m.leader(&t, 1), m.leader(&t, 2)), (Some(1), Some(2), None));
        assert_eq!(m.unresolved(), vec![(2, Rc::from("kafka-2.example"), 9092)]);
        let (near, far) = m.brokers_by_rack("a");
        assert_eq!((near.len(), far.len()), (1, 0), "the unresolved broker is not offered yet");
        m.set_address(2, "127.0.0.2:9092".parse().unwrap());
        assert_eq!(m.brokers_by_rack("b").0, vec!["127.0.0.2:9092".parse::<SocketAddr>().unwrap()]);
        // A later response with brokers keeps a looked-up address.
        m.update(&response);
        assert!(m.unresolved().is_empty());
        m.forget_topic(t.clone());
        assert_eq!(m.leader(&t, 0), None);
    }
}
