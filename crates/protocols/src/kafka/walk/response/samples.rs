//! Responses of every walked kind with all their arrays filled, for the tests and the
//! fuzzing seeds.

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
            let topic =
                delete_records_response::DeleteRecordsTopicResult::default().with_partitions(two(Default::default()));
            ResponseKind::DeleteRecords(DeleteRecordsResponse::default().with_topics(two(topic)))
        }
        ApiKey::OffsetCommit => {
            let topic =
                offset_commit_response::OffsetCommitResponseTopic::default().with_partitions(two(Default::default()));
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
                let result =
                    add_partitions_to_txn_response::AddPartitionsToTxnResult::default().with_topic_results(two(topic));
                response.with_results_by_transaction(two(result))
            } else {
                response.with_results_by_topic_v3_and_below(two(topic))
            })
        }
        ApiKey::OffsetFetch => {
            let response = OffsetFetchResponse::default();
            ResponseKind::OffsetFetch(if v <= 7 {
                let topic =
                    offset_fetch_response::OffsetFetchResponseTopic::default().with_partitions(two(Default::default()));
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
