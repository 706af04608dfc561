//! Error responses to client requests, built without running `kafka-protocol`'s decoders.
//!
//! The proxy answers some client requests itself: one a filter refused, one over a rate
//! limit. Client bytes are untrusted, and `kafka-protocol`'s decoders abort the process on a
//! tiny message declaring a huge array (see "Untrusted input" in the [module doc](super)),
//! so [`safe_error_response`] never hands them the request. It reads the header with
//! [`RequestHeaderView`] and, where the response has to name what the request named, walks
//! the body with its own bounds-checked reader:
//!
//! ```text
//! Produce v3-8:   transactional_id STRING? | acks i16 | timeout_ms i32
//!                 | topics ARRAY[ name STRING | partitions ARRAY[ index i32 | records BYTES? ] ]
//! Produce v9-12:  the same, compact, with a TAG_BUFFER after each partition, topic and the body
//! Produce v13:    topic_id UUID in place of each topic name
//! Metadata:       topics ARRAY?[ topic_id UUID (v10+) | name STRING (nullable v10+) ] | flags
//! FindCoordinator v4+: key_type i8 | coordinator_keys COMPACT_ARRAY[COMPACT_STRING]
//! ```
//!
//! What each request gets (`code` wherever the client reads an error):
//! - Produce v3-13: every topic (name, or id in v13) and partition index of the request,
//!   each partition with `code`; the records are skipped, never copied. `acks = 0` gets no
//!   response at all (`Ok(None)`). v0-2 are refused: `kafka-protocol` cannot encode them.
//! - Metadata v0-13: every requested topic with `code`, no brokers (clients ignore such a
//!   response and retry); v13 also carries `code` at the top level. A request for all
//!   topics gets no topics, as in [`super::error_response`].
//! - FindCoordinator v4-6: one coordinator per requested key, with `code`.
//! - Every other api key, and FindCoordinator v0-3: [`header_only_error_body`], the default
//!   response with the top-level `error_code`, or [`KafkaCodecError::NoErrorField`] when that
//!   version of the message has none (for example ListOffsets, OffsetCommit, CreateTopics,
//!   and Fetch before v7, whose clients read errors per item only).
//! - ApiVersions newer than `kafka-protocol` knows: a v0 response, as brokers send.
//!
//! Memory: the body is walked twice. The first walk checks all of it (every length, every
//! element count against the bytes left, UTF-8 of the names, no trailing bytes) and
//! allocates nothing, so a malformed request costs no memory at all. The second walk builds
//! the response, with vectors sized by counts the first walk has already read through, so
//! what it allocates stays proportional to the request.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    find_coordinator_response, metadata_response, produce_response, ApiVersionsResponse, BrokerId,
    FindCoordinatorResponse, MetadataResponse, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::api::{default_response, set_top_level_error_code};
use super::framing::check_whole;
use super::header::RequestHeaderView;
use super::wire::Reader;
use super::{ApiKey, KafkaCodecError, KafkaFrame, ResponseHeader, ResponseKind};

/// The whole error response message (length prefix included) to one whole request message,
/// carrying `code` wherever the client reads an error; `Ok(None)` when the request gets no
/// response (Produce with `acks = 0`). Never runs `kafka-protocol`'s decoders on `request`.
pub fn safe_error_response(request: &[u8], code: i16) -> Result<Option<Bytes>, KafkaCodecError> {
    safe_error_frame(request, code)?.map(|frame| frame.to_bytes()).transpose()
}

/// The response a sink that drops requests gives (NullSink): [`safe_error_response`] with
/// no error, so every field is at its default except what names the request's own topics
/// and partitions. `Ok(None)` when no response is due (Produce with `acks = 0`).
pub fn empty_response(request: &[u8]) -> Result<Option<Bytes>, KafkaCodecError> {
    safe_error_response(request, 0)
}

/// [`safe_error_response`] as a frame, for a caller that changes it before encoding (for
/// example [`super::api::set_throttle_time_ms`] after a rate limit).
pub fn safe_error_frame(request: &[u8], code: i16) -> Result<Option<KafkaFrame>, KafkaCodecError> {
    check_whole(request)?;
    let view = RequestHeaderView::parse(request)?;
    let budget = std::cell::Cell::new(MAX_ANSWER_ITEMS);
    let api_key = view.api_key;
    let range = api_key.valid_versions();
    let mut api_version = view.api_version;
    let body = if api_key == ApiKey::ApiVersions && api_version > range.max {
        // A broker answers an ApiVersions version it does not know in v0, which every
        // client can read.
        // It lists the ApiVersions versions it knows, so the client asks again in one.
        api_version = 0;
        let known = kafka_protocol::messages::api_versions_response::ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(range.min)
            .with_max_version(range.max);
        ResponseKind::ApiVersions(ApiVersionsResponse::default().with_error_code(code).with_api_keys(vec![known]))
    } else if api_version < range.min || api_version > range.max {
        return Err(KafkaCodecError::UnsupportedVersion { api_key, version: api_version });
    } else {
        let body = Body {
            reader: Reader::new(request, view.body_offset),
            api_key,
            version: api_version,
            flexible: view.header_version >= 2,
            budget: &budget,
        };
        match api_key {
            ApiKey::Produce => match produce(body, code)? {
                Some(response) => ResponseKind::Produce(response),
                None => return Ok(None),
            },
            ApiKey::Metadata => ResponseKind::Metadata(metadata(body, code)?),
            ApiKey::FindCoordinator if api_version >= 4 => ResponseKind::FindCoordinator(find_coordinator(body, code)?),
            _ => header_only_error_body(api_key, api_version, code)?,
        }
    };
    Ok(Some(KafkaFrame::Response {
        api_key,
        api_version,
        header: ResponseHeader::default().with_correlation_id(view.correlation_id),
        body,
    }))
}

/// The error response body that needs nothing from the request but its api key and
/// version: the default response with the top-level `error_code` set (FindCoordinator v0-3
/// also names no coordinator), or [`KafkaCodecError::NoErrorField`] when this version of the
/// message has no top-level `error_code` (its clients read errors per item only).
pub fn header_only_error_body(api_key: ApiKey, api_version: i16, code: i16) -> Result<ResponseKind, KafkaCodecError> {
    if api_key == ApiKey::FindCoordinator && api_version < 4 {
        return Ok(ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default().with_node_id(BrokerId(-1)).with_port(-1).with_error_code(code),
        ));
    }
    let plain = default_response(api_key);
    if code == 0 {
        // No error to carry (a sink that drops requests answers so): the default response.
        return Ok(plain);
    }
    let mut body = plain.clone();
    if !set_top_level_error_code(&mut body, code) {
        return Err(KafkaCodecError::NoErrorField { api_key, version: api_version });
    }
    // Versions that predate the field drop it when encoding (the bytes would say success),
    // or refuse to encode it.
    let encode = |b: &ResponseKind| {
        let mut out = BytesMut::new();
        b.encode(&mut out, api_version).map(|()| out).map_err(|e| KafkaCodecError::Encode {
            api_key,
            version: api_version,
            reason: format!("{e:#}"),
        })
    };
    let plain = encode(&plain)?;
    match encode(&body) {
        Ok(with_code) if with_code != plain => Ok(body),
        _ => Err(KafkaCodecError::NoErrorField { api_key, version: api_version }),
    }
}

/// A request body still to read.
/// Array elements one error answer may name, over all its arrays. Each element of the
/// request (a topic name, a partition index: a few bytes) becomes a response struct of up
/// to ~140 bytes, so without a cap a 100 MiB request could ask for gigabytes and abort the
/// process. Real requests name far fewer; a larger one gets no error answer (the
/// connection closes instead).
pub const MAX_ANSWER_ITEMS: usize = 100_000;

#[derive(Clone, Copy)]
struct Body<'a> {
    reader: Reader<'a>,
    api_key: ApiKey,
    version: i16,
    /// Compact strings, arrays and bytes, and tag buffers (request header v2).
    flexible: bool,
    /// Elements still allowed under [`MAX_ANSWER_ITEMS`], shared by every copy of the walker.
    budget: &'a std::cell::Cell<usize>,
}

impl<'a> Body<'a> {
    /// The element count of an `ARRAY` (`i32`, -1 for null) or `COMPACT_ARRAY` (varint of
    /// count + 1, 0 for null). Refuses a count whose elements, `min_len` bytes each at the
    /// least, cannot fit in the bytes left, so no caller ever loops or allocates past the
    /// message.
    fn array_len(&mut self, min_len: usize, what: &'static str) -> Result<Option<usize>, KafkaCodecError> {
        let len = if self.flexible {
            match self.reader.uvarint(what)? {
                0 => return Ok(None),
                n => usize::try_from(n - 1).map_err(|_| KafkaCodecError::Malformed(what))?,
            }
        } else {
            match self.reader.i32(what)? {
                -1 => return Ok(None),
                n => usize::try_from(n).map_err(|_| KafkaCodecError::Malformed(what))?,
            }
        };
        if len > self.reader.remaining() / min_len.max(1) {
            return Err(KafkaCodecError::Truncated(what));
        }
        let left = self.budget.get().checked_sub(len).ok_or(KafkaCodecError::Malformed("too many items to answer"))?;
        self.budget.set(left);
        Ok(Some(len))
    }

    /// A non-null array.
    fn array_len_not_null(&mut self, min_len: usize, what: &'static str) -> Result<usize, KafkaCodecError> {
        self.array_len(min_len, what)?.ok_or(KafkaCodecError::Malformed(what))
    }

    /// A `STRING` or `COMPACT_STRING` (the nullable forms, null allowed), checked for UTF-8.
    fn nullable_string(&mut self, what: &'static str) -> Result<Option<&'a str>, KafkaCodecError> {
        let bytes = if self.flexible {
            self.reader.compact_nullable_string(what)?
        } else {
            self.reader.nullable_string(what)?
        };
        bytes.map(|b| std::str::from_utf8(b).map_err(|_| KafkaCodecError::Malformed(what))).transpose()
    }

    /// A non-null string.
    fn string(&mut self, what: &'static str) -> Result<&'a str, KafkaCodecError> {
        self.nullable_string(what)?.ok_or(KafkaCodecError::Malformed(what))
    }

    /// Skips `BYTES` or `COMPACT_BYTES` (nullable: -1, or 0 for compact), without copying.
    fn skip_nullable_bytes(&mut self, what: &'static str) -> Result<(), KafkaCodecError> {
        let len = if self.flexible {
            match self.reader.uvarint(what)? {
                0 => return Ok(()),
                n => usize::try_from(n - 1).map_err(|_| KafkaCodecError::Malformed(what))?,
            }
        } else {
            match self.reader.i32(what)? {
                -1 => return Ok(()),
                n => usize::try_from(n).map_err(|_| KafkaCodecError::Malformed(what))?,
            }
        };
        self.reader.bytes(len, what).map(|_| ())
    }

    /// Skips a `TAG_BUFFER` in flexible versions.
    fn skip_tagged_fields(&mut self, what: &'static str) -> Result<(), KafkaCodecError> {
        if self.flexible {
            self.reader.skip_tagged_fields(what)?;
        }
        Ok(())
    }

    /// A `UUID`: 16 bytes.
    fn uuid(&mut self, what: &'static str) -> Result<&'a [u8], KafkaCodecError> {
        self.reader.bytes(16, what)
    }

    /// Skips a fixed-size field of `len` bytes.
    fn skip(&mut self, len: usize, what: &'static str) -> Result<(), KafkaCodecError> {
        self.reader.bytes(len, what).map(|_| ())
    }

    /// Checks the body ends here.
    fn end(&self) -> Result<(), KafkaCodecError> {
        match self.reader.remaining() {
            0 => Ok(()),
            len => Err(KafkaCodecError::TrailingBytes { api_key: self.api_key, version: self.version, len }),
        }
    }
}

/// A `kafka-protocol` `Uuid` from its 16 bytes (the `uuid` crate is not a dependency of
/// ours, so the type is inferred from where the value goes).
fn uuid_from<U: TryFrom<Vec<u8>>>(bytes: &[u8]) -> Result<U, KafkaCodecError> {
    U::try_from(bytes.to_vec()).map_err(|_| KafkaCodecError::Malformed("uuid"))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// What the walk over a Produce body found, in order.
enum ProduceItem<'a> {
    /// A topic (its name up to v12, its id from v13), followed by its `partitions`.
    Topic {
        name: &'a str,
        id: Option<&'a [u8]>,
        partitions: usize,
    },
    Partition {
        index: i32,
    },
}

/// The response to a Produce request with every partition carrying `code`, or `None` for
/// `acks = 0`.
fn produce(mut body: Body, code: i16) -> Result<Option<ProduceResponse>, KafkaCodecError> {
    body.nullable_string("transactional id")?;
    if body.reader.i16("acks")? == 0 {
        return Ok(None);
    }
    body.reader.i32("timeout")?;
    // First walk: check everything, allocate nothing.
    let mut topics = 0usize;
    walk_produce(body, |item| {
        if let ProduceItem::Topic { .. } = item {
            topics += 1;
        }
        Ok(())
    })?;
    let mut responses = Vec::with_capacity(topics);
    walk_produce(body, |item| {
        match item {
            ProduceItem::Topic { name, id, partitions } => {
                let mut topic = produce_response::TopicProduceResponse::default()
                    .with_name(TopicName(str_bytes(name)))
                    .with_partition_responses(Vec::with_capacity(partitions));
                if let Some(id) = id {
                    topic.topic_id = uuid_from(id)?;
                }
                responses.push(topic);
            }
            ProduceItem::Partition { index } => {
                if let Some(topic) = responses.last_mut() {
                    topic.partition_responses.push(
                        produce_response::PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(code)
                            .with_base_offset(-1),
                    );
                }
            }
        }
        Ok(())
    })?;
    Ok(Some(ProduceResponse::default().with_responses(responses)))
}

/// Walks the topics of a Produce body (after `timeout_ms`) to its end.
fn walk_produce<'a>(
    mut body: Body<'a>,
    mut visit: impl FnMut(ProduceItem<'a>) -> Result<(), KafkaCodecError>,
) -> Result<(), KafkaCodecError> {
    let by_id = body.version >= 13;
    // The smallest encodings: a topic is an empty name (or a uuid), an empty partition
    // array (and a tag buffer); a partition is its index, null records (and a tag buffer).
    let topic_min = match (by_id, body.flexible) {
        (true, _) => 16 + 1 + 1,
        (false, true) => 1 + 1 + 1,
        (false, false) => 2 + 4,
    };
    let partition_min = if body.flexible { 4 + 1 + 1 } else { 4 + 4 };
    let topics = body.array_len_not_null(topic_min, "produce topics")?;
    for _ in 0..topics {
        let (name, id) = if by_id { ("", Some(body.uuid("topic id")?)) } else { (body.string("topic name")?, None) };
        let partitions = body.array_len_not_null(partition_min, "produce partitions")?;
        visit(ProduceItem::Topic { name, id, partitions })?;
        for _ in 0..partitions {
            let index = body.reader.i32("partition index")?;
            body.skip_nullable_bytes("records")?;
            body.skip_tagged_fields("partition tagged fields")?;
            visit(ProduceItem::Partition { index })?;
        }
        body.skip_tagged_fields("topic tagged fields")?;
    }
    body.skip_tagged_fields("produce tagged fields")?;
    body.end()
}

/// A topic of a Metadata request: its name (null only from v10) and, from v10, its id.
struct MetadataTopic<'a> {
    name: Option<&'a str>,
    id: Option<&'a [u8]>,
}

/// The response to a Metadata request: no brokers, every requested topic with `code`, and
/// `code` at the top level (which only v13 encodes).
fn metadata(body: Body, code: i16) -> Result<MetadataResponse, KafkaCodecError> {
    let mut count = 0usize;
    walk_metadata(body, |_| {
        count += 1;
        Ok(())
    })?;
    let mut topics = Vec::with_capacity(count);
    walk_metadata(body, |t| {
        // Before v12 the response's topic name is not nullable.
        let name = match t.name {
            Some(name) => Some(TopicName(str_bytes(name))),
            None if body.version < 12 => Some(TopicName::default()),
            None => None,
        };
        let mut topic = metadata_response::MetadataResponseTopic::default().with_name(name).with_error_code(code);
        if let Some(id) = t.id {
            topic.topic_id = uuid_from(id)?;
        }
        topics.push(topic);
        Ok(())
    })?;
    Ok(MetadataResponse::default().with_error_code(code).with_controller_id(BrokerId(-1)).with_topics(topics))
}

/// Walks a Metadata body to its end.
fn walk_metadata<'a>(
    mut body: Body<'a>,
    mut visit: impl FnMut(MetadataTopic<'a>) -> Result<(), KafkaCodecError>,
) -> Result<(), KafkaCodecError> {
    let version = body.version;
    // An empty name (and tag buffer), or from v10 a uuid, a null name and a tag buffer.
    let topic_min = if version >= 10 { 16 + 1 + 1 } else { 2 };
    let topics = match body.array_len(topic_min, "metadata topics")? {
        // Null means all topics from v1; v0 asks for all with an empty array.
        None if version == 0 => return Err(KafkaCodecError::Malformed("metadata topics")),
        None => 0,
        Some(n) => n,
    };
    for _ in 0..topics {
        let id = if version >= 10 { Some(body.uuid("topic id")?) } else { None };
        let name = if version >= 10 { body.nullable_string("topic name")? } else { Some(body.string("topic name")?) };
        body.skip_tagged_fields("topic tagged fields")?;
        visit(MetadataTopic { name, id })?;
    }
    if version >= 4 {
        body.skip(1, "allow_auto_topic_creation")?;
    }
    if (8..=10).contains(&version) {
        body.skip(1, "include_cluster_authorized_operations")?;
    }
    if version >= 8 {
        body.skip(1, "include_topic_authorized_operations")?;
    }
    body.skip_tagged_fields("metadata tagged fields")?;
    body.end()
}

/// The response to a FindCoordinator v4+ request: one coordinator per key, with `code`.
fn find_coordinator(body: Body, code: i16) -> Result<FindCoordinatorResponse, KafkaCodecError> {
    let mut count = 0usize;
    walk_find_coordinator(body, |_| {
        count += 1;
        Ok(())
    })?;
    let mut coordinators = Vec::with_capacity(count);
    walk_find_coordinator(body, |key| {
        coordinators.push(
            find_coordinator_response::Coordinator::default()
                .with_key(str_bytes(key))
                .with_node_id(BrokerId(-1))
                .with_host(StrBytes::new())
                .with_port(-1)
                .with_error_code(code),
        );
        Ok(())
    })?;
    Ok(FindCoordinatorResponse::default().with_coordinators(coordinators))
}

/// Walks a FindCoordinator v4+ body (`key_type`, `coordinator_keys`) to its end.
fn walk_find_coordinator<'a>(
    mut body: Body<'a>,
    mut visit: impl FnMut(&'a str) -> Result<(), KafkaCodecError>,
) -> Result<(), KafkaCodecError> {
    body.skip(1, "key type")?;
    let keys = body.array_len_not_null(1, "coordinator keys")?;
    for _ in 0..keys {
        visit(body.string("coordinator key")?)?;
    }
    body.skip_tagged_fields("find coordinator tagged fields")?;
    body.end()
}

#[cfg(test)]
mod tests;
