//! Tests of the parent module, kept apart so that its file stays about the code.

use super::*;
use crate::kafka::api::{set_throttle_time_ms, throttle_time_ms};
use crate::kafka::error_response::*;
use crate::kafka::{captured, walk};
use kafka_protocol::messages::*;

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("t"))
}

/// A request of `api_key` naming one topic with partitions 0 and 1 (or one group, key,
/// resource), with the fields its `version` uses.
fn sample_request(api_key: ApiKey, version: i16) -> RequestKind {
    let group = GroupId(StrBytes::from_static_str("g"));
    match api_key {
        ApiKey::Produce => RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(if version < 13 { topic() } else { TopicName::default() })
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default().with_index(0),
                    produce_request::PartitionProduceData::default().with_index(1),
                ]),
        ])),
        ApiKey::Fetch => {
            RequestKind::Fetch(FetchRequest::default().with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(if version < 13 { topic() } else { TopicName::default() })
            .with_partitions(vec![
                fetch_request::FetchPartition::default().with_partition(0),
                fetch_request::FetchPartition::default().with_partition(1),
            ])]))
        }
        ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default().with_name(topic()).with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default().with_partition_index(0),
                list_offsets_request::ListOffsetsPartition::default().with_partition_index(1),
            ]),
        ])),
        ApiKey::Metadata => RequestKind::Metadata(
            MetadataRequest::default()
                .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default().with_name(Some(topic()))])),
        ),
        ApiKey::OffsetCommit => {
            RequestKind::OffsetCommit(OffsetCommitRequest::default().with_group_id(group).with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(if version < 10 { topic() } else { TopicName::default() })
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default().with_partition_index(0),
                        offset_commit_request::OffsetCommitRequestPartition::default().with_partition_index(1),
                    ]),
            ]))
        }
        ApiKey::OffsetFetch if version < 8 => {
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_group_id(group).with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(topic())
                    .with_partition_indexes(vec![0, 1]),
            ])))
        }
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default().with_group_id(group).with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopics::default()
                    .with_name(if version < 10 { topic() } else { TopicName::default() })
                    .with_partition_indexes(vec![0, 1]),
            ])),
        ])),
        ApiKey::FindCoordinator if version < 4 => {
            RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g")))
        }
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(
            FindCoordinatorRequest::default()
                .with_coordinator_keys(vec![StrBytes::from_static_str("g"), StrBytes::from_static_str("h")]),
        ),
        ApiKey::JoinGroup => RequestKind::JoinGroup(JoinGroupRequest::default().with_group_id(group)),
        ApiKey::Heartbeat => RequestKind::Heartbeat(HeartbeatRequest::default().with_group_id(group)),
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
            create_topics_request::CreatableTopic::default().with_name(topic()).with_num_partitions(3),
        ])),
        ApiKey::DeleteTopics if version < 6 => {
            RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topic_names(vec![topic()]))
        }
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(
            DeleteTopicsRequest::default()
                .with_topics(vec![delete_topics_request::DeleteTopicState::default().with_name(Some(topic()))]),
        ),
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default().with_name(topic()).with_count(4),
            ]))
        }
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t")),
            ])),
        ApiKey::IncrementalAlterConfigs => {
            RequestKind::IncrementalAlterConfigs(IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t")),
            ]))
        }
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t")),
            ]))
        }
        ApiKey::DescribeGroups => {
            RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![group]))
        }
        ApiKey::DeleteGroups => {
            RequestKind::DeleteGroups(DeleteGroupsRequest::default().with_groups_names(vec![group]))
        }
        ApiKey::SyncGroup => RequestKind::SyncGroup(SyncGroupRequest::default().with_group_id(group)),
        other => panic!("no sample for {other:?}"),
    }
}

/// Every error code a client of this version reads in the response.
fn error_codes(body: &ResponseKind, version: i16) -> Vec<i16> {
    match body {
        ResponseKind::Produce(r) => {
            r.responses.iter().flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)).collect()
        }
        ResponseKind::Fetch(r) => {
            let top = (version >= 7).then_some(r.error_code);
            top.into_iter().chain(r.responses.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code))).collect()
        }
        ResponseKind::ListOffsets(r) => {
            r.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)).collect()
        }
        ResponseKind::Metadata(r) => {
            let top = (version >= 13).then_some(r.error_code);
            top.into_iter().chain(r.topics.iter().map(|t| t.error_code)).collect()
        }
        ResponseKind::OffsetCommit(r) => {
            r.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)).collect()
        }
        ResponseKind::OffsetFetch(r) if version < 8 => {
            let top = (version >= 2).then_some(r.error_code);
            top.into_iter().chain(r.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code))).collect()
        }
        ResponseKind::OffsetFetch(r) => r
            .groups
            .iter()
            .flat_map(|g| {
                std::iter::once(g.error_code)
                    .chain(g.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)))
            })
            .collect(),
        ResponseKind::FindCoordinator(r) if version < 4 => vec![r.error_code],
        ResponseKind::FindCoordinator(r) => r.coordinators.iter().map(|c| c.error_code).collect(),
        ResponseKind::JoinGroup(r) => vec![r.error_code],
        ResponseKind::Heartbeat(r) => vec![r.error_code],
        ResponseKind::ApiVersions(r) => vec![r.error_code],
        ResponseKind::CreateTopics(r) => r.topics.iter().map(|t| t.error_code).collect(),
        ResponseKind::DeleteTopics(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::CreatePartitions(r) => r.results.iter().map(|t| t.error_code).collect(),
        ResponseKind::AlterConfigs(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::IncrementalAlterConfigs(r) => r.responses.iter().map(|t| t.error_code).collect(),
        ResponseKind::DescribeConfigs(r) => r.results.iter().map(|t| t.error_code).collect(),
        ResponseKind::DescribeGroups(r) => r.groups.iter().map(|g| g.error_code).collect(),
        ResponseKind::DeleteGroups(r) => r.results.iter().map(|g| g.error_code).collect(),
        ResponseKind::SyncGroup(r) => vec![r.error_code],
        _ => vec![],
    }
}

/// Every api key with a builder, in every version `kafka-protocol` knows: the response
/// encodes, parses back to the same bytes, and carries the code everywhere.
#[test]
fn error_responses_every_version_1() {
    let keys = [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::Metadata,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::ApiVersions,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::CreatePartitions,
        ApiKey::AlterConfigs,
        ApiKey::IncrementalAlterConfigs,
        ApiKey::DescribeConfigs,
        ApiKey::DescribeGroups,
        ApiKey::DeleteGroups,
        ApiKey::SyncGroup,
    ];
    for api_key in keys {
        let range = api_key.valid_versions();
        for version in range.min..=range.max {
            for code in [FILTERED, THROTTLING_QUOTA_EXCEEDED, UPSTREAM_UNAVAILABLE, UPSTREAM_TIMED_OUT] {
                let header = RequestHeader::default()
                    .with_request_api_key(api_key as i16)
                    .with_request_api_version(version)
                    .with_correlation_id(42);
                let request = sample_request(api_key, version);
                let context = format!("{api_key:?} v{version} code {code}");
                let frame = error_response(&header, &request, code).unwrap_or_else(|e| panic!("{context}: {e}"));
                let bytes = frame.to_bytes().unwrap_or_else(|e| panic!("{context}: {e}"));
                // Every response kind the proxy decodes is walked first, and must walk.
                let parsed = if walk::is_response_walked(api_key) {
                    KafkaFrame::parse_response(&bytes, api_key, version)
                } else {
                    KafkaFrame::parse_response_unwalked(&bytes, api_key, version)
                };
                let parsed = parsed.unwrap_or_else(|e| panic!("{context}: {e}"));
                assert_eq!(parsed.to_bytes().as_ref(), Ok(&bytes), "{context}");
                assert_eq!(parsed.correlation_id(), 42, "{context}");
                let KafkaFrame::Response { body, .. } = parsed else { panic!("{context}") };
                let codes = error_codes(&body, version);
                assert!(!codes.is_empty(), "{context}: no error code read");
                assert!(codes.iter().all(|&c| c == code), "{context}: {codes:?}");
            }
        }
    }
}

#[test]
fn produce_v9_1_error_response() {
    let msg = Bytes::from_static(captured::PRODUCE_V9_REQUEST_ACKS_1);
    let out = error_response_to(&msg, FILTERED).unwrap();
    let Ok(KafkaFrame::Response { body: ResponseKind::Produce(r), header, .. }) =
        KafkaFrame::parse_response(&out, ApiKey::Produce, 9)
    else {
        panic!("not a produce response");
    };
    assert_eq!(header.correlation_id, 2);
    let partitions: Vec<_> = r.responses.iter().flat_map(|t| t.partition_responses.iter()).collect();
    assert_eq!(r.responses.first().map(|t| &*t.name.0), Some("test"));
    assert_eq!(partitions.iter().map(|p| (p.index, p.error_code)).collect::<Vec<_>>(), vec![(0, FILTERED)]);
}

#[test]
fn metadata_v12_1_error_response() {
    let msg = Bytes::from_static(captured::METADATA_V12_REQUEST);
    let out = error_response_to(&msg, UPSTREAM_UNAVAILABLE).unwrap();
    let Ok(KafkaFrame::Response { body: ResponseKind::Metadata(r), .. }) =
        KafkaFrame::parse_response(&out, ApiKey::Metadata, 12)
    else {
        panic!("not a metadata response");
    };
    assert!(r.brokers.is_empty());
    assert_eq!(r.topics.iter().map(|t| t.error_code).collect::<Vec<_>>(), vec![UPSTREAM_UNAVAILABLE]);
}

#[test]
fn fetch_v12_1_throttled() {
    let msg = Bytes::from_static(captured::FETCH_V12_REQUEST);
    let Ok(KafkaFrame::Request { header, body }) = KafkaFrame::parse_request(&msg) else {
        panic!("not a request");
    };
    let Ok(KafkaFrame::Response { api_key, api_version, header, mut body }) =
        error_response(&header, &body, THROTTLING_QUOTA_EXCEEDED)
    else {
        panic!("no response");
    };
    assert!(set_throttle_time_ms(&mut body, 1000));
    let frame = KafkaFrame::Response { api_key, api_version, header, body };
    let out = frame.to_bytes().unwrap();
    let Ok(KafkaFrame::Response { body, .. }) = KafkaFrame::parse_response(&out, ApiKey::Fetch, 12) else {
        panic!("does not parse");
    };
    assert_eq!(throttle_time_ms(&body), Some(1000));
    assert_eq!(error_codes(&body, 12), vec![THROTTLING_QUOTA_EXCEEDED; 2]);
}

#[test]
fn api_versions_v3_1_error_response() {
    let out = error_response_to(&Bytes::from_static(captured::API_VERSIONS_V3_REQUEST), UPSTREAM_TIMED_OUT).unwrap();
    // ApiVersions responses keep header v0 even in flexible versions.
    assert_eq!(&out[4..10], &[0, 0, 0, 1, 0, 7]);
}

#[test]
fn generic_fallback() {
    let header =
        RequestHeader::default().with_request_api_key(ApiKey::SaslHandshake as i16).with_request_api_version(1);
    let frame = error_response(&header, &RequestKind::SaslHandshake(Default::default()), FILTERED).unwrap();
    assert!(
        matches!(frame, KafkaFrame::Response { body: ResponseKind::SaslHandshake(ref r), .. } if r.error_code == FILTERED)
    );
    // AddPartitionsToTxn has a top-level error code only from v4: earlier versions cannot
    // say "error" without naming partitions.
    let header =
        RequestHeader::default().with_request_api_key(ApiKey::AddPartitionsToTxn as i16).with_request_api_version(3);
    assert_eq!(
        error_response(&header, &RequestKind::AddPartitionsToTxn(Default::default()), FILTERED),
        Err(KafkaCodecError::NoErrorField { api_key: ApiKey::AddPartitionsToTxn, version: 3 })
    );
    // DeleteRecords has no top-level error code at all.
    let header =
        RequestHeader::default().with_request_api_key(ApiKey::DeleteRecords as i16).with_request_api_version(2);
    assert_eq!(
        error_response(&header, &RequestKind::DeleteRecords(Default::default()), FILTERED),
        Err(KafkaCodecError::NoErrorField { api_key: ApiKey::DeleteRecords, version: 2 })
    );
}

#[test]
fn mismatched_request() {
    let header = RequestHeader::default().with_request_api_key(ApiKey::Metadata as i16).with_request_api_version(1);
    assert_eq!(
        error_response(&header, &RequestKind::Produce(Default::default()), FILTERED),
        Err(KafkaCodecError::BodyMismatch { header: 3, body: Some(ApiKey::Produce) })
    );
}
