//! Walking a broker's response before `kafka-protocol` decodes it.
//!
//! Responses come from the brokers the operator configured, but a broker with a bug, a
//! non-Kafka service at a broker's address, or a corrupted stream must cost the client one
//! error, not the process (see "Untrusted input" in the module above). So every response
//! the proxy decodes is walked first, as requests are ([`super::check_request`]), and the
//! response kinds with arrays that are not walked here are not decoded at all.
//!
//! The layouts follow Kafka's message definitions for the versions `kafka-protocol` 0.18
//! knows; a version it does not know is refused by its decoder after the walk.

use super::super::framing::LENGTH_PREFIX_LEN;
use super::super::header::response_body_offset;
use super::super::wire::Reader;
use super::super::{ApiKey, KafkaCodecError};
use super::Walk;

/// The most array elements one walked response may hold, all arrays together. A response
/// comes from a broker, and the Metadata of a cluster of half a million partitions (three
/// replicas each) needs about 4 million; a count past this is refused, so no response can
/// make the decoder reserve more than about 600 MiB whatever it says.
pub const MAX_RESPONSE_ELEMENTS: usize = 4_000_000;

/// True for the responses [`check_response`] lets through to the decoder: those walked
/// here, and those without arrays (which cannot make it reserve anything).
pub fn is_response_walked(api_key: ApiKey) -> bool {
    walk_of(api_key).is_some() || array_free(api_key)
}

/// Response kinds whose bodies hold no array, so decoding them reserves nothing from a count.
fn array_free(api_key: ApiKey) -> bool {
    matches!(
        api_key,
        ApiKey::SaslAuthenticate
            | ApiKey::CreateDelegationToken
            | ApiKey::Heartbeat
            | ApiKey::InitProducerId
            | ApiKey::EndTxn
    )
}

type BodyWalk = fn(&mut Walk, i16) -> Result<(), KafkaCodecError>;

/// The walk of a response kind's body, and the first version with a flexible encoding.
fn walk_of(api_key: ApiKey) -> Option<(BodyWalk, i16)> {
    Some(match api_key {
        ApiKey::Produce => (produce, 9),
        ApiKey::Fetch => (fetch, 12),
        ApiKey::ListOffsets => (list_offsets, 6),
        ApiKey::OffsetForLeaderEpoch => (offset_for_leader_epoch, 4),
        ApiKey::DeleteRecords => (delete_records, 2),
        ApiKey::OffsetCommit => (offset_commit, 8),
        ApiKey::TxnOffsetCommit => (txn_offset_commit, 3),
        ApiKey::AddPartitionsToTxn => (add_partitions_to_txn, 3),
        ApiKey::OffsetFetch => (offset_fetch, 6),
        ApiKey::DescribeGroups => (describe_groups, 5),
        ApiKey::SaslHandshake => (sasl_handshake, i16::MAX),
        ApiKey::ApiVersions => (api_versions, 3),
        ApiKey::Metadata => (metadata, 9),
        ApiKey::DescribeCluster => (describe_cluster, 0),
        ApiKey::FindCoordinator => (find_coordinator, 3),
        _ => return None,
    })
}

/// Checks a whole response message (length prefix included) to a request of `api_key` at
/// `api_version` before it is decoded. An error means the response is not what its request
/// expects, or is of a kind the proxy does not decode.
pub fn check_response(msg: &[u8], api_key: ApiKey, api_version: i16) -> Result<(), KafkaCodecError> {
    let offset = response_body_offset(msg, api_key, api_version)?;
    // The header's tagged fields are re-encoded with the body: their tags must be keepable.
    let mut header = Walk { r: Reader::new(msg, LENGTH_PREFIX_LEN + 4), flexible: true, budget: 0 };
    if api_key.response_header_version(api_version) >= 1 {
        header.tagged("response header tagged fields")?;
    }
    if array_free(api_key) {
        return Ok(());
    }
    let (walk, first_flexible) = walk_of(api_key).ok_or(KafkaCodecError::NotWalked(api_key))?;
    let mut w =
        Walk { r: Reader::new(msg, offset), flexible: api_version >= first_flexible, budget: MAX_RESPONSE_ELEMENTS };
    walk(&mut w, api_version)?;
    match w.r.remaining() {
        0 => Ok(()),
        len => Err(KafkaCodecError::TrailingBytes { api_key, version: api_version, len }),
    }
}

impl<'a> Walk<'a> {
    /// Fixed-size fields present from version `since` on.
    fn skip_since(&mut self, v: i16, since: i16, n: usize, what: &'static str) -> Result<(), KafkaCodecError> {
        if v >= since {
            self.skip(n, what)?;
        }
        Ok(())
    }

    fn strings(&mut self, n: usize, what: &'static str) -> Result<(), KafkaCodecError> {
        (0..n).try_for_each(|_| self.string(what).map(|_| ()))
    }

    /// An array of INT32 (broker ids).
    fn int32s(&mut self, what: &'static str) -> Result<(), KafkaCodecError> {
        self.array(what, |w| w.skip(4, what))
    }

    /// A topic-keyed array of partition results, as most partitioned responses hold:
    /// `topic` walks a topic's own fields and `partition` one partition's, up to its
    /// tagged fields (none of which the decoder reads as a field).
    fn topics(
        &mut self,
        topic: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
        partition: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
    ) -> Result<(), KafkaCodecError> {
        self.topics_tagged(topic, |w| {
            partition(w)?;
            w.tagged("partition tagged fields")
        })
    }

    /// [`Walk::topics`] where `partition` walks a partition's tagged fields itself.
    fn topics_tagged(
        &mut self,
        topic: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
        partition: impl Fn(&mut Self) -> Result<(), KafkaCodecError>,
    ) -> Result<(), KafkaCodecError> {
        self.array("topics", |w| {
            topic(w)?;
            w.array("partitions", &partition)?;
            w.tagged("topic tagged fields")
        })
    }
}

fn name(w: &mut Walk) -> Result<(), KafkaCodecError> {
    w.string("name").map(|_| ())
}

/// A broker's address in Produce and Fetch responses (NodeEndpoints) and DescribeCluster.
fn node_endpoint(w: &mut Walk) -> Result<(), KafkaCodecError> {
    w.skip(4, "node id")?;
    w.string("host")?;
    w.skip(4, "port")?;
    w.string("rack")?;
    w.tagged("node endpoint tagged fields")
}

fn produce(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.topics_tagged(
        |w| super::topic(w, v, 12),
        |w| {
            w.skip(4 + 2 + 8 + 8, "partition response")?;
            w.skip_since(v, 5, 8, "log start offset")?;
            if v >= 8 {
                w.array("record errors", |w| {
                    w.skip(4, "batch index")?;
                    w.string("batch index error message")?;
                    w.tagged("record error tagged fields")
                })?;
                w.string("error message")?;
            }
            // CurrentLeader (tag 0, v10+): a leader id and epoch.
            w.tags("partition tagged fields", |tag, w| {
                (tag == 0 && v >= 10).then(|| w.skip(8, "current leader").and_then(|()| w.tagged("current leader")))
            })
        },
    )?;
    w.skip(4, "throttle time")?;
    // NodeEndpoints (tag 0, v10+).
    w.tags("tagged fields", |tag, w| (tag == 0 && v >= 10).then(|| w.array("node endpoints", node_endpoint)))
}

fn fetch(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.skip_since(v, 7, 2 + 4, "error code and session id")?;
    w.topics_tagged(
        |w| super::topic(w, v, 12),
        |w| {
            w.skip(4 + 2 + 8 + 8, "partition data")?;
            w.skip_since(v, 5, 8, "log start offset")?;
            w.array("aborted transactions", |w| {
                w.skip(8 + 8, "aborted transaction")?;
                w.tagged("aborted transaction tagged fields")
            })?;
            w.skip_since(v, 11, 4, "preferred read replica")?;
            w.bytes("records")?;
            // DivergingEpoch (tag 0), CurrentLeader (tag 1) and SnapshotId (tag 2): fixed
            // fields and their own tagged fields.
            w.tags("partition tagged fields", |tag, w| {
                let size = match tag {
                    0 => 4 + 8,
                    1 => 4 + 4,
                    2 => 8 + 4,
                    _ => return None,
                };
                Some(w.skip(size, "partition tagged field").and_then(|()| w.tagged("partition tagged field")))
            })
        },
    )?;
    // NodeEndpoints (tag 0, v16+).
    w.tags("tagged fields", |tag, w| (tag == 0 && v >= 16).then(|| w.array("node endpoints", node_endpoint)))
}

fn list_offsets(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 2, 4, "throttle time")?;
    w.topics(name, |w| {
        w.skip(4 + 2 + 8 + 8, "partition response")?;
        w.skip_since(v, 4, 4, "leader epoch")
    })?;
    w.tagged("tagged fields")
}

fn offset_for_leader_epoch(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.topics(name, |w| w.skip(2 + 4 + 4 + 8, "epoch end offset"))?;
    w.tagged("tagged fields")
}

fn delete_records(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.topics(name, |w| w.skip(4 + 8 + 2, "partition result"))?;
    w.tagged("tagged fields")
}

fn offset_commit(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 3, 4, "throttle time")?;
    w.topics(|w| super::topic(w, v, 9), |w| w.skip(4 + 2, "partition result"))?;
    w.tagged("tagged fields")
}

fn txn_offset_commit(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    w.topics(name, |w| w.skip(4 + 2, "partition result"))?;
    w.tagged("tagged fields")
}

fn add_partitions_to_txn(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(4, "throttle time")?;
    let topic_results = |w: &mut Walk| w.topics(name, |w| w.skip(4 + 2, "partition result"));
    if v >= 4 {
        w.skip(2, "error code")?;
        w.array("results by transaction", |w| {
            w.string("transactional id")?;
            topic_results(w)?;
            w.tagged("transaction result tagged fields")
        })?;
    } else {
        topic_results(w)?;
    }
    w.tagged("tagged fields")
}

fn offset_fetch(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 3, 4, "throttle time")?;
    if v <= 7 {
        w.topics(name, |w| {
            w.skip(4 + 8, "partition and offset")?;
            if v >= 5 {
                w.skip(4, "committed leader epoch")?;
            }
            w.string("metadata")?;
            w.skip(2, "error code")
        })?;
        w.skip_since(v, 2, 2, "error code")?;
    } else {
        w.array("groups", |w| {
            w.string("group id")?;
            w.topics(
                |w| super::topic(w, v, 9),
                |w| {
                    w.skip(4 + 8 + 4, "partition, offset and epoch")?;
                    w.string("metadata")?;
                    w.skip(2, "error code")
                },
            )?;
            w.skip(2, "group error code")?;
            w.tagged("group tagged fields")
        })?;
    }
    w.tagged("tagged fields")
}

fn describe_groups(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 1, 4, "throttle time")?;
    w.array("groups", |w| {
        w.skip(2, "error code")?;
        if v >= 6 {
            w.string("error message")?;
        }
        w.strings(4, "group id, state, protocol type and protocol")?;
        w.array("members", |w| {
            w.string("member id")?;
            if v >= 4 {
                w.string("group instance id")?;
            }
            w.strings(2, "client id and host")?;
            w.bytes("member metadata")?;
            w.bytes("member assignment")?;
            w.tagged("member tagged fields")
        })?;
        w.skip_since(v, 3, 4, "authorized operations")?;
        w.tagged("group tagged fields")
    })?;
    w.tagged("tagged fields")
}

fn sasl_handshake(w: &mut Walk, _: i16) -> Result<(), KafkaCodecError> {
    w.skip(2, "error code")?;
    w.array("mechanisms", |w| w.string("mechanism").map(|_| ()))
}

fn api_versions(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(2, "error code")?;
    w.array("api keys", |w| {
        w.skip(2 + 2 + 2, "api key and versions")?;
        w.tagged("api key tagged fields")
    })?;
    w.skip_since(v, 1, 4, "throttle time")?;
    // SupportedFeatures (tag 0) and FinalizedFeatures (tag 2): names with two versions
    // each; FinalizedFeaturesEpoch (tag 1) and ZkMigrationReady (tag 3): fixed fields.
    w.tags("tagged fields", |tag, w| match tag {
        0 | 2 => Some(w.array("features", |w| {
            w.string("feature name")?;
            w.skip(2 + 2, "feature versions")?;
            w.tagged("feature tagged fields")
        })),
        1 => Some(w.skip(8, "finalized features epoch")),
        3 => Some(w.skip(1, "zk migration ready")),
        _ => None,
    })
}

fn metadata(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 3, 4, "throttle time")?;
    w.array("brokers", |w| {
        w.skip(4, "node id")?;
        w.string("host")?;
        w.skip(4, "port")?;
        if v >= 1 {
            w.string("rack")?;
        }
        w.tagged("broker tagged fields")
    })?;
    if v >= 2 {
        w.string("cluster id")?;
    }
    w.skip_since(v, 1, 4, "controller id")?;
    w.array("topics", |w| {
        w.skip(2, "topic error code")?;
        w.string("topic name")?;
        w.skip_since(v, 10, 16, "topic id")?;
        w.skip_since(v, 1, 1, "is internal")?;
        w.array("partitions", |w| {
            w.skip(2 + 4 + 4, "partition")?;
            w.skip_since(v, 7, 4, "leader epoch")?;
            w.int32s("replica nodes")?;
            w.int32s("isr nodes")?;
            if v >= 5 {
                w.int32s("offline replicas")?;
            }
            w.tagged("partition tagged fields")
        })?;
        w.skip_since(v, 8, 4, "topic authorized operations")?;
        w.tagged("topic tagged fields")
    })?;
    if (8..=10).contains(&v) {
        w.skip(4, "cluster authorized operations")?;
    }
    w.skip_since(v, 13, 2, "error code")?;
    w.tagged("tagged fields")
}

fn describe_cluster(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip(4 + 2, "throttle time and error code")?;
    w.string("error message")?;
    w.skip_since(v, 1, 1, "endpoint type")?;
    w.string("cluster id")?;
    w.skip(4, "controller id")?;
    w.array("brokers", |w| {
        w.skip(4, "broker id")?;
        w.string("host")?;
        w.skip(4, "port")?;
        w.string("rack")?;
        w.skip_since(v, 2, 1, "is fenced")?;
        w.tagged("broker tagged fields")
    })?;
    w.skip(4, "cluster authorized operations")?;
    w.tagged("tagged fields")
}

fn find_coordinator(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.skip_since(v, 1, 4, "throttle time")?;
    if v <= 3 {
        w.skip(2, "error code")?;
        if v >= 1 {
            w.string("error message")?;
        }
        w.skip(4, "node id")?;
        w.string("host")?;
        w.skip(4, "port")?;
    } else {
        w.array("coordinators", |w| {
            w.string("key")?;
            w.skip(4, "node id")?;
            w.string("host")?;
            w.skip(4 + 2, "port and error code")?;
            w.string("error message")?;
            w.tagged("coordinator tagged fields")
        })?;
    }
    w.tagged("tagged fields")
}

/// Responses of every walked kind with all their arrays filled, for the tests and the
/// fuzzing seeds.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;
    use crate::kafka::{KafkaFrame, ResponseHeader, ResponseKind};
    use bytes::Bytes;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    fn two<T: Clone>(x: T) -> Vec<T> {
        vec![x.clone(), x]
    }

    fn s(text: &'static str) -> StrBytes {
        StrBytes::from_static_str(text)
    }

    /// A response of `api_key` at `v` with every array the version has holding two
    /// elements (nested arrays too) and every tagged field the decoder reads set, so that
    /// each field the walk steps over is on the wire.
    pub(crate) fn populated(api_key: ApiKey, v: i16) -> ResponseKind {
        let flexible_from = walk_of(api_key).map_or(i16::MAX, |(_, f)| f);
        let tags = v >= flexible_from;
        let endpoint = |since| {
            if v >= since {
                two(produce_response::NodeEndpoint::default().with_host(s("h")).with_port(9092))
            } else {
                vec![]
            }
        };
        match api_key {
            ApiKey::Produce => {
                let leader = produce_response::LeaderIdAndEpoch::default().with_leader_epoch(3);
                let partition = produce_response::PartitionProduceResponse::default()
                    .with_record_errors(if v >= 8 { two(Default::default()) } else { vec![] })
                    .with_current_leader(if v >= 10 { leader } else { Default::default() });
                let topic = produce_response::TopicProduceResponse::default().with_partition_responses(two(partition));
                ResponseKind::Produce(
                    ProduceResponse::default().with_responses(two(topic)).with_node_endpoints(endpoint(10)),
                )
            }
            ApiKey::Fetch => {
                let epoch = fetch_response::EpochEndOffset::default().with_epoch(4);
                let partition = fetch_response::PartitionData::default()
                    .with_aborted_transactions(Some(two(Default::default())))
                    .with_records(Some(Bytes::from_static(b"records")));
                let partition = if tags {
                    partition
                        .with_diverging_epoch(epoch)
                        .with_current_leader(fetch_response::LeaderIdAndEpoch::default().with_leader_epoch(5))
                        .with_snapshot_id(fetch_response::SnapshotId::default().with_epoch(6))
                } else {
                    partition
                };
                let topic = fetch_response::FetchableTopicResponse::default().with_partitions(two(partition));
                let endpoints = if v >= 16 {
                    two(fetch_response::NodeEndpoint::default().with_host(s("h")).with_port(9092))
                } else {
                    vec![]
                };
                ResponseKind::Fetch(FetchResponse::default().with_responses(two(topic)).with_node_endpoints(endpoints))
            }
            ApiKey::ListOffsets => {
                let topic =
                    list_offsets_response::ListOffsetsTopicResponse::default().with_partitions(two(Default::default()));
                ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(two(topic)))
            }
            ApiKey::OffsetForLeaderEpoch => {
                let topic = offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                    .with_partitions(two(Default::default()));
                ResponseKind::OffsetForLeaderEpoch(OffsetForLeaderEpochResponse::default().with_topics(two(topic)))
            }
            ApiKey::DeleteRecords => {
                let topic = delete_records_response::DeleteRecordsTopicResult::default()
                    .with_partitions(two(Default::default()));
                ResponseKind::DeleteRecords(DeleteRecordsResponse::default().with_topics(two(topic)))
            }
            ApiKey::OffsetCommit => {
                let topic = offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_partitions(two(Default::default()));
                ResponseKind::OffsetCommit(OffsetCommitResponse::default().with_topics(two(topic)))
            }
            ApiKey::TxnOffsetCommit => {
                let topic = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                    .with_partitions(two(Default::default()));
                ResponseKind::TxnOffsetCommit(TxnOffsetCommitResponse::default().with_topics(two(topic)))
            }
            ApiKey::AddPartitionsToTxn => {
                let topic = add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                    .with_results_by_partition(two(Default::default()));
                let response = AddPartitionsToTxnResponse::default();
                ResponseKind::AddPartitionsToTxn(if v >= 4 {
                    let result = add_partitions_to_txn_response::AddPartitionsToTxnResult::default()
                        .with_topic_results(two(topic));
                    response.with_results_by_transaction(two(result))
                } else {
                    response.with_results_by_topic_v3_and_below(two(topic))
                })
            }
            ApiKey::OffsetFetch => {
                let response = OffsetFetchResponse::default();
                ResponseKind::OffsetFetch(if v <= 7 {
                    let topic = offset_fetch_response::OffsetFetchResponseTopic::default()
                        .with_partitions(two(Default::default()));
                    response.with_topics(two(topic))
                } else {
                    let topic = offset_fetch_response::OffsetFetchResponseTopics::default()
                        .with_partitions(two(Default::default()));
                    let group = offset_fetch_response::OffsetFetchResponseGroup::default().with_topics(two(topic));
                    response.with_groups(two(group))
                })
            }
            ApiKey::DescribeGroups => {
                let group = describe_groups_response::DescribedGroup::default().with_members(two(Default::default()));
                ResponseKind::DescribeGroups(DescribeGroupsResponse::default().with_groups(two(group)))
            }
            ApiKey::SaslHandshake => {
                ResponseKind::SaslHandshake(SaslHandshakeResponse::default().with_mechanisms(two(s("PLAIN"))))
            }
            ApiKey::ApiVersions => {
                let response = ApiVersionsResponse::default().with_api_keys(two(Default::default()));
                ResponseKind::ApiVersions(if tags {
                    response
                        .with_supported_features(two(Default::default()))
                        .with_finalized_features_epoch(7)
                        .with_finalized_features(two(Default::default()))
                        .with_zk_migration_ready(true)
                } else {
                    response
                })
            }
            ApiKey::Metadata => {
                let partition = metadata_response::MetadataResponsePartition::default()
                    .with_replica_nodes(two(1.into()))
                    .with_isr_nodes(two(2.into()))
                    .with_offline_replicas(if v >= 5 { two(3.into()) } else { vec![] });
                let topic = metadata_response::MetadataResponseTopic::default()
                    .with_name(Some(s("t").into()))
                    .with_partitions(two(partition));
                let broker = metadata_response::MetadataResponseBroker::default().with_host(s("h"));
                ResponseKind::Metadata(MetadataResponse::default().with_brokers(two(broker)).with_topics(two(topic)))
            }
            ApiKey::DescribeCluster => {
                let broker = describe_cluster_response::DescribeClusterBroker::default().with_host(s("h"));
                ResponseKind::DescribeCluster(DescribeClusterResponse::default().with_brokers(two(broker)))
            }
            ApiKey::FindCoordinator => {
                let response = FindCoordinatorResponse::default();
                ResponseKind::FindCoordinator(if v >= 4 {
                    response.with_coordinators(two(Default::default()))
                } else {
                    response.with_host(s("h"))
                })
            }
            _ => panic!("no sample of {api_key:?}"),
        }
    }

    pub(crate) const WALKED: [ApiKey; 15] = [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::OffsetForLeaderEpoch,
        ApiKey::DeleteRecords,
        ApiKey::OffsetCommit,
        ApiKey::TxnOffsetCommit,
        ApiKey::AddPartitionsToTxn,
        ApiKey::OffsetFetch,
        ApiKey::DescribeGroups,
        ApiKey::SaslHandshake,
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::DescribeCluster,
        ApiKey::FindCoordinator,
    ];

    pub(crate) fn encode(api_key: ApiKey, v: i16, body: ResponseKind) -> Bytes {
        let header = ResponseHeader::default().with_correlation_id(7);
        let frame = KafkaFrame::Response { api_key, api_version: v, header, body };
        frame.to_bytes().unwrap_or_else(|e| panic!("{api_key:?} v{v}: {e}"))
    }

    /// [`populated`], encoded as a whole message.
    pub(crate) fn encoded(api_key: ApiKey, v: i16) -> Bytes {
        encode(api_key, v, populated(api_key, v))
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{encode, populated, WALKED};
    use super::*;
    use crate::kafka::KafkaFrame;
    use bytes::Bytes;
    use kafka_protocol::messages::*;

    /// Every version of every walked kind, with all its arrays and known tagged fields on
    /// the wire, walks to its end and decodes; so does the empty response. Cutting the last
    /// byte off is refused by the walk.
    #[test]
    fn every_walked_response_walks_to_its_end() {
        for api_key in WALKED {
            assert!(is_response_walked(api_key));
            let versions = api_key.valid_versions();
            for v in versions.min..=versions.max {
                for body in [populated(api_key, v), crate::kafka::api::default_response(api_key)] {
                    let msg = encode(api_key, v, body);
                    assert_eq!(check_response(&msg, api_key, v), Ok(()), "{api_key:?} v{v}");
                    let parsed = KafkaFrame::parse_response(&msg, api_key, v);
                    assert!(parsed.is_ok(), "{api_key:?} v{v}: {parsed:?}");
                    let mut cut = msg.to_vec();
                    cut.pop();
                    let len = (cut.len() - 4) as i32;
                    cut[..4].copy_from_slice(&len.to_be_bytes());
                    assert!(check_response(&cut, api_key, v).is_err(), "{api_key:?} v{v} cut");
                }
            }
        }
    }

    /// A broker's Metadata v0 response saying it lists 2^31 - 1 brokers in 4 bytes is
    /// refused before anything is reserved for them (decoding it would ask for ~100 GiB).
    #[test]
    fn an_impossible_broker_count_is_refused() {
        // length, correlation id 7, brokers 0x7fffffff, then 4 stray bytes.
        let msg = [0, 0, 0, 12, 0, 0, 0, 7, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(check_response(&msg, ApiKey::Metadata, 0), Err(KafkaCodecError::Malformed("brokers")));
        let parsed = KafkaFrame::parse_response(&Bytes::copy_from_slice(&msg), ApiKey::Metadata, 0);
        assert_eq!(parsed.err(), Some(KafkaCodecError::Malformed("brokers")));
    }

    /// A known tagged field must be exactly as long as its layout: a Produce v10 partition
    /// whose CurrentLeader (tag 0) says 9 bytes but holds an 8-byte leader and an empty tag
    /// buffer and one stray byte is refused.
    #[test]
    fn a_known_tagged_field_must_fill_its_size() {
        let leader = produce_response::LeaderIdAndEpoch::default().with_leader_epoch(3);
        let partition = produce_response::PartitionProduceResponse::default().with_current_leader(leader);
        let topic = produce_response::TopicProduceResponse::default().with_partition_responses(vec![partition]);
        let body = ResponseKind::Produce(ProduceResponse::default().with_responses(vec![topic]));
        let msg = encode(ApiKey::Produce, 10, body);
        // The partition's tag buffer: one field, tag 0, size 9 (leader 8 + its empty tags).
        let at = msg.windows(3).rposition(|w| w == [1, 0, 9]).expect("tag buffer");
        let mut longer = msg[..at].to_vec();
        longer.extend_from_slice(&[1, 0, 10]);
        longer.extend_from_slice(&msg[at + 3..at + 3 + 9]);
        longer.push(0);
        longer.extend_from_slice(&msg[at + 3 + 9..]);
        let len = (longer.len() - 4) as i32;
        longer[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            check_response(&longer, ApiKey::Produce, 10),
            Err(KafkaCodecError::Malformed("partition tagged fields"))
        );
    }

    /// Found by fuzzing: an OffsetFetch v10 response whose header has one tagged field of
    /// tag 4,232,986,619 decoded, but `kafka-protocol` re-encoded it as a field count of 1
    /// with no field, so the client would have read the body as that field. Tags over
    /// `i32::MAX` are now refused, in response and request headers and bodies alike.
    #[test]
    fn a_tag_over_i32_max_is_refused() {
        let header_tag = [0, 0, 0, 0x11, 0, 0xf9, 0, 0, 1, 0xfb, 0xff, 0xf9, 0xe1, 0x0f, 0, 0, 0xf9, 0, 0, 1, 0];
        let refused = Err(KafkaCodecError::Malformed("tag over 2^31 - 1"));
        assert_eq!(check_response(&header_tag, ApiKey::OffsetFetch, 10), refused);
        assert!(KafkaFrame::parse_response(&Bytes::copy_from_slice(&header_tag), ApiKey::OffsetFetch, 10).is_err());
        // The largest keepable tag goes through, and comes back as it was.
        let mut keepable = header_tag;
        keepable[9..14].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]);
        assert_eq!(check_response(&keepable, ApiKey::OffsetFetch, 10), Ok(()));
        let frame = KafkaFrame::parse_response(&Bytes::copy_from_slice(&keepable), ApiKey::OffsetFetch, 10).unwrap();
        assert_eq!(frame.to_bytes().unwrap().as_ref(), &keepable[..]);
        // A Produce v9 request (flexible header) with such a tag in its header.
        let mut request = vec![0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff];
        request.extend_from_slice(&[1, 0xfb, 0xff, 0xf9, 0xe1, 0x0f, 0]);
        request.extend_from_slice(&[0, 0, 1, 0, 0, 3, 0xe8, 1, 0]); // null txn id, acks, timeout, no topics
        let len = (request.len() - 4) as i32;
        request[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(super::super::check_request(&request), refused);
    }

    /// Kinds with arrays the proxy never decodes are refused, not decoded.
    #[test]
    fn unwalked_kinds_are_not_decoded() {
        let msg = encode(ApiKey::JoinGroup, 5, crate::kafka::api::default_response(ApiKey::JoinGroup));
        assert_eq!(check_response(&msg, ApiKey::JoinGroup, 5), Err(KafkaCodecError::NotWalked(ApiKey::JoinGroup)));
        assert!(KafkaFrame::parse_response(&msg, ApiKey::JoinGroup, 5).is_err());
        let msg = encode(ApiKey::Heartbeat, 4, crate::kafka::api::default_response(ApiKey::Heartbeat));
        assert!(KafkaFrame::parse_response(&msg, ApiKey::Heartbeat, 4).is_ok());
    }
}
