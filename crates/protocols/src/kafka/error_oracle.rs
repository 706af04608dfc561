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
mod tests;
