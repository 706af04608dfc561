//! The test oracle for [`super::safe_error`]: error responses built from requests decoded
//! with `kafka-protocol`, shaped like a broker's (per partition, topic, group or coordinator
//! key where the message reports errors there, and at the top level where the version has a
//! top-level `error_code`).
//!
//! Test-only: `kafka-protocol` 0.18's decoders allocate from wire counts before reading the
//! elements, so they must never see a client's bytes. On trusted, captured requests they
//! give the reference answer that `safe_error` must match byte for byte.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    alter_configs_response, create_partitions_response, create_topics_response, delete_groups_response,
    delete_topics_response, describe_configs_response, describe_groups_response, fetch_response,
    find_coordinator_response, incremental_alter_configs_response, list_offsets_response, metadata_response,
    offset_commit_response, offset_fetch_response, produce_response, BrokerId,
};
use kafka_protocol::messages::{
    AlterConfigsResponse, ApiVersionsResponse, CreatePartitionsResponse, CreateTopicsResponse, DeleteGroupsResponse,
    DeleteTopicsResponse, DescribeConfigsResponse, DescribeGroupsResponse, FetchResponse, FindCoordinatorResponse,
    HeartbeatResponse, IncrementalAlterConfigsResponse, JoinGroupResponse, ListOffsetsResponse, MetadataResponse,
    OffsetCommitResponse, OffsetFetchResponse, ProduceResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::api::{default_response, request_api_key, set_top_level_error_code};
use super::{ApiKey, KafkaCodecError, KafkaFrame, RequestHeader, RequestKind, ResponseHeader, ResponseKind};

/// The error response to a parsed request: header with its correlation id, body of its
/// type at its version.
pub fn error_response(header: &RequestHeader, request: &RequestKind, code: i16) -> Result<KafkaFrame, KafkaCodecError> {
    let api_key = ApiKey::try_from(header.request_api_key)
        .map_err(|()| KafkaCodecError::UnknownApiKey(header.request_api_key))?;
    if request_api_key(request) != Some(api_key) {
        return Err(KafkaCodecError::BodyMismatch { header: header.request_api_key, body: request_api_key(request) });
    }
    let api_version = header.request_api_version;
    Ok(KafkaFrame::Response {
        api_key,
        api_version,
        header: ResponseHeader::default().with_correlation_id(header.correlation_id),
        body: error_response_body(api_key, api_version, request, code)?,
    })
}

/// [`error_response`] from and to whole messages (length prefix included).
pub fn error_response_to(request: &Bytes, code: i16) -> Result<Bytes, KafkaCodecError> {
    match KafkaFrame::parse_request(request)? {
        KafkaFrame::Request { header, body } => error_response(&header, &body, code)?.to_bytes(),
        KafkaFrame::Response { .. } => Err(KafkaCodecError::Malformed("request")),
    }
}

/// The body of the error response to `request` (of `api_key` at `api_version`).
///
/// Api keys without a builder of their own get their default response with the top-level
/// `error_code` set, and [`KafkaCodecError::NoErrorField`] when that version of the message
/// has nowhere to put it (the proxy should then close the connection: a success would lie).
pub fn error_response_body(
    api_key: ApiKey,
    api_version: i16,
    request: &RequestKind,
    code: i16,
) -> Result<ResponseKind, KafkaCodecError> {
    Ok(match request {
        RequestKind::Produce(r) => ResponseKind::Produce(produce(r, code)),
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch(r, code)),
        RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(list_offsets(r, code)),
        RequestKind::Metadata(r) => ResponseKind::Metadata(metadata(r, code)),
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(offset_commit(r, code)),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(offset_fetch(r, code)),
        RequestKind::FindCoordinator(r) => ResponseKind::FindCoordinator(find_coordinator(r, api_version, code)),
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(
            JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1)
                .with_member_id(r.member_id.clone()),
        ),
        RequestKind::Heartbeat(_) => ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code)),
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(ApiVersionsResponse::default().with_error_code(code)),
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(create_topics(r, code)),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(delete_topics(r, code)),
        RequestKind::CreatePartitions(r) => ResponseKind::CreatePartitions(
            CreatePartitionsResponse::default().with_results(
                r.topics
                    .iter()
                    .map(|t| {
                        create_partitions_response::CreatePartitionsTopicResult::default()
                            .with_name(t.name.clone())
                            .with_error_code(code)
                    })
                    .collect(),
            ),
        ),
        RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(
            AlterConfigsResponse::default().with_responses(
                r.resources
                    .iter()
                    .map(|c| {
                        alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_error_code(code)
                            .with_resource_type(c.resource_type)
                            .with_resource_name(c.resource_name.clone())
                    })
                    .collect(),
            ),
        ),
        RequestKind::IncrementalAlterConfigs(r) => ResponseKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsResponse::default().with_responses(
                r.resources
                    .iter()
                    .map(|c| {
                        incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_error_code(code)
                            .with_resource_type(c.resource_type)
                            .with_resource_name(c.resource_name.clone())
                    })
                    .collect(),
            ),
        ),
        RequestKind::DescribeConfigs(r) => ResponseKind::DescribeConfigs(
            DescribeConfigsResponse::default().with_results(
                r.resources
                    .iter()
                    .map(|c| {
                        describe_configs_response::DescribeConfigsResult::default()
                            .with_error_code(code)
                            .with_resource_type(c.resource_type)
                            .with_resource_name(c.resource_name.clone())
                    })
                    .collect(),
            ),
        ),
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        describe_groups_response::DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_error_code(code)
                    })
                    .collect(),
            ),
        ),
        RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(
            DeleteGroupsResponse::default().with_results(
                r.groups_names
                    .iter()
                    .map(|g| {
                        delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(g.clone())
                            .with_error_code(code)
                    })
                    .collect(),
            ),
        ),
        _ => return generic(api_key, api_version, code),
    })
}

/// The default response with its top-level `error_code` set, if this version carries one.
fn generic(api_key: ApiKey, api_version: i16, code: i16) -> Result<ResponseKind, KafkaCodecError> {
    let plain = default_response(api_key);
    let mut body = plain.clone();
    if !set_top_level_error_code(&mut body, code) {
        return Err(KafkaCodecError::NoErrorField { api_key, version: api_version });
    }
    // Versions that predate the field drop it when encoding: the bytes would say success.
    let encode = |b: &ResponseKind| {
        let mut out = BytesMut::new();
        b.encode(&mut out, api_version).map(|()| out).map_err(|e| KafkaCodecError::Encode {
            api_key,
            version: api_version,
            reason: format!("{e:#}"),
        })
    };
    if encode(&plain)? == encode(&body)? {
        return Err(KafkaCodecError::NoErrorField { api_key, version: api_version });
    }
    Ok(body)
}

fn produce(r: &kafka_protocol::messages::ProduceRequest, code: i16) -> ProduceResponse {
    let responses = r
        .topic_data
        .iter()
        .map(|t| {
            let partitions = t
                .partition_data
                .iter()
                .map(|p| {
                    produce_response::PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(code)
                        .with_base_offset(-1)
                })
                .collect();
            produce_response::TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partition_responses(partitions)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

fn fetch(r: &kafka_protocol::messages::FetchRequest, code: i16) -> FetchResponse {
    let responses = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    fetch_response::PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_error_code(code)
                        .with_high_watermark(-1)
                })
                .collect();
            fetch_response::FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_error_code(code).with_responses(responses)
}

fn list_offsets(r: &kafka_protocol::messages::ListOffsetsRequest, code: i16) -> ListOffsetsResponse {
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    list_offsets_response::ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// No brokers (clients ignore such a response and retry), and each requested topic with
/// the error; v13+ also carries it at the top level.
fn metadata(r: &kafka_protocol::messages::MetadataRequest, code: i16) -> MetadataResponse {
    let topics = r
        .topics
        .iter()
        .flatten()
        .map(|t| {
            metadata_response::MetadataResponseTopic::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_error_code(code)
        })
        .collect();
    MetadataResponse::default().with_error_code(code).with_controller_id(BrokerId(-1)).with_topics(topics)
}

fn offset_commit(r: &kafka_protocol::messages::OffsetCommitRequest, code: i16) -> OffsetCommitResponse {
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            offset_commit_response::OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// v0-7 name one group (topics at the top level, top-level `error_code` from v2); v8+
/// name many, each with its own code and topics.
fn offset_fetch(r: &kafka_protocol::messages::OffsetFetchRequest, code: i16) -> OffsetFetchResponse {
    let topics = r
        .topics
        .iter()
        .flatten()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&i| {
                    offset_fetch_response::OffsetFetchResponsePartition::default()
                        .with_partition_index(i)
                        .with_committed_offset(-1)
                        .with_error_code(code)
                })
                .collect();
            offset_fetch_response::OffsetFetchResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions)
        })
        .collect();
    let groups = r
        .groups
        .iter()
        .map(|g| {
            let topics = g
                .topics
                .iter()
                .flatten()
                .map(|t| {
                    let partitions = t
                        .partition_indexes
                        .iter()
                        .map(|&i| {
                            offset_fetch_response::OffsetFetchResponsePartitions::default()
                                .with_partition_index(i)
                                .with_committed_offset(-1)
                                .with_error_code(code)
                        })
                        .collect();
                    offset_fetch_response::OffsetFetchResponseTopics::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(partitions)
                })
                .collect();
            offset_fetch_response::OffsetFetchResponseGroup::default()
                .with_group_id(g.group_id.clone())
                .with_error_code(code)
                .with_topics(topics)
        })
        .collect();
    OffsetFetchResponse::default().with_error_code(code).with_topics(topics).with_groups(groups)
}

/// v0-3 answer with one coordinator at the top level, v4+ with one per requested key.
fn find_coordinator(
    r: &kafka_protocol::messages::FindCoordinatorRequest,
    api_version: i16,
    code: i16,
) -> FindCoordinatorResponse {
    if api_version < 4 {
        return FindCoordinatorResponse::default().with_node_id(BrokerId(-1)).with_port(-1).with_error_code(code);
    }
    let coordinators = r
        .coordinator_keys
        .iter()
        .map(|key| {
            find_coordinator_response::Coordinator::default()
                .with_key(key.clone())
                .with_node_id(BrokerId(-1))
                .with_host(StrBytes::new())
                .with_port(-1)
                .with_error_code(code)
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

fn create_topics(r: &kafka_protocol::messages::CreateTopicsRequest, code: i16) -> CreateTopicsResponse {
    let topics = r
        .topics
        .iter()
        .map(|t| {
            create_topics_response::CreatableTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(code)
                .with_num_partitions(-1)
                .with_replication_factor(-1)
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

/// v0-5 name topics in `topic_names`, v6+ in `topics` (by name or id).
fn delete_topics(r: &kafka_protocol::messages::DeleteTopicsRequest, code: i16) -> DeleteTopicsResponse {
    let by_name = r.topic_names.iter().map(|name| {
        delete_topics_response::DeletableTopicResult::default().with_name(Some(name.clone())).with_error_code(code)
    });
    let by_state = r.topics.iter().map(|t| {
        delete_topics_response::DeletableTopicResult::default()
            .with_name(t.name.clone())
            .with_topic_id(t.topic_id)
            .with_error_code(code)
    });
    DeleteTopicsResponse::default().with_responses(by_name.chain(by_state).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::api::{set_throttle_time_ms, throttle_time_ms};
    use crate::kafka::captured;
    use crate::kafka::error_response::*;
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
            ApiKey::Metadata => {
                RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default().with_name(Some(topic())),
                ])))
            }
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
                top.into_iter()
                    .chain(r.responses.iter().flat_map(|t| t.partitions.iter().map(|p| p.error_code)))
                    .collect()
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
                    let parsed = KafkaFrame::parse_response(&bytes, api_key, version)
                        .unwrap_or_else(|e| panic!("{context}: {e}"));
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
        let out =
            error_response_to(&Bytes::from_static(captured::API_VERSIONS_V3_REQUEST), UPSTREAM_TIMED_OUT).unwrap();
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
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::AddPartitionsToTxn as i16)
            .with_request_api_version(3);
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
}
