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
        api_version = 0;
        ResponseKind::ApiVersions(ApiVersionsResponse::default().with_error_code(code))
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
mod tests {
    use super::*;
    use crate::kafka::api::{set_throttle_time_ms, throttle_time_ms, top_level_error_code};
    use crate::kafka::captured;
    use crate::kafka::error_oracle::error_response_to;
    use crate::kafka::error_response::{FILTERED, THROTTLING_QUOTA_EXCEEDED};
    use crate::kafka::header::request_ids;
    use crate::kafka::RequestHeader;
    use kafka_protocol::messages::{
        metadata_request, produce_request, FindCoordinatorRequest, MetadataRequest, ProduceRequest, RequestKind,
    };
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    /// The system allocator, counting the bytes each thread asks for while it measures.
    struct Counting;

    thread_local! {
        static ASKED: Cell<Option<usize>> = const { Cell::new(None) };
    }

    fn count(bytes: usize) {
        let _ = ASKED.try_with(|asked| {
            if let Some(n) = asked.get() {
                asked.set(Some(n.saturating_add(bytes)));
            }
        });
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Runs `f`, returning what it returned, the bytes it asked the allocator for in all
    /// (an upper bound on its peak memory) and how long it took.
    fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, Duration) {
        ASKED.set(Some(0));
        let start = Instant::now();
        let out = f();
        let elapsed = start.elapsed();
        let asked = ASKED.replace(None).unwrap_or(0);
        (out, asked, elapsed)
    }

    fn parse(out: &Bytes, api_key: ApiKey, version: i16) -> (i32, ResponseKind) {
        match KafkaFrame::parse_response(out, api_key, version) {
            Ok(KafkaFrame::Response { header, body, .. }) => (header.correlation_id, body),
            other => panic!("{api_key:?} v{version}: {other:?}"),
        }
    }

    /// The error codes a client of this version reads in the response.
    fn codes_read(body: &ResponseKind, version: i16) -> Vec<i16> {
        match body {
            ResponseKind::Produce(r) => {
                r.responses.iter().flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)).collect()
            }
            ResponseKind::Metadata(r) => {
                let top = (version >= 13).then_some(r.error_code);
                top.into_iter().chain(r.topics.iter().map(|t| t.error_code)).collect()
            }
            ResponseKind::FindCoordinator(r) if version >= 4 => r.coordinators.iter().map(|c| c.error_code).collect(),
            ResponseKind::Fetch(r) if version < 7 => vec![],
            other => top_level_error_code(other).into_iter().collect(),
        }
    }

    fn captured_requests() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("API_VERSIONS_V0_REQUEST", captured::API_VERSIONS_V0_REQUEST),
            ("API_VERSIONS_V2_REQUEST", captured::API_VERSIONS_V2_REQUEST),
            ("API_VERSIONS_V3_REQUEST", captured::API_VERSIONS_V3_REQUEST),
            ("API_VERSIONS_V4_REQUEST", captured::API_VERSIONS_V4_REQUEST),
            ("METADATA_V7_REQUEST", captured::METADATA_V7_REQUEST),
            ("METADATA_V7_REQUEST_TOPIC", captured::METADATA_V7_REQUEST_TOPIC),
            ("METADATA_V12_REQUEST", captured::METADATA_V12_REQUEST),
            ("METADATA_V12_REQUEST_NO_TOPICS", captured::METADATA_V12_REQUEST_NO_TOPICS),
            ("PRODUCE_V7_REQUEST_ACKS_ALL", captured::PRODUCE_V7_REQUEST_ACKS_ALL),
            ("PRODUCE_V7_REQUEST_ACKS_0", captured::PRODUCE_V7_REQUEST_ACKS_0),
            ("PRODUCE_V9_REQUEST_ACKS_1", captured::PRODUCE_V9_REQUEST_ACKS_1),
            ("PRODUCE_V9_REQUEST_ACKS_0", captured::PRODUCE_V9_REQUEST_ACKS_0),
            ("PRODUCE_V9_REQUEST_ACKS_1_KAFKA_PYTHON", captured::PRODUCE_V9_REQUEST_ACKS_1_KAFKA_PYTHON),
            ("FIND_COORDINATOR_V2_REQUEST", captured::FIND_COORDINATOR_V2_REQUEST),
            ("FIND_COORDINATOR_V4_REQUEST", captured::FIND_COORDINATOR_V4_REQUEST),
            ("JOIN_GROUP_V5_REQUEST", captured::JOIN_GROUP_V5_REQUEST),
            ("JOIN_GROUP_V7_REQUEST", captured::JOIN_GROUP_V7_REQUEST),
            ("FETCH_V12_REQUEST", captured::FETCH_V12_REQUEST),
            ("FETCH_V12_REQUEST_KAFKA_PYTHON", captured::FETCH_V12_REQUEST_KAFKA_PYTHON),
        ]
    }

    /// Every captured client request gets a response `kafka-protocol` decodes (our own
    /// output, so decoding it is safe), to its correlation id, with the code wherever the
    /// client reads one; Produce with `acks = 0` gets none.
    #[test]
    fn captured_requests_1() {
        for (name, msg) in captured_requests() {
            let ids = request_ids(msg).unwrap();
            let api_key = ids.known_api_key().unwrap();
            let out = safe_error_response(msg, FILTERED).unwrap_or_else(|e| panic!("{name}: {e}"));
            if name.ends_with("ACKS_0") {
                assert_eq!(out, None, "{name}");
                continue;
            }
            let out = out.unwrap_or_else(|| panic!("{name}: no response"));
            let (correlation_id, body) = parse(&out, api_key, ids.api_version);
            assert_eq!(correlation_id, ids.correlation_id, "{name}");
            let codes = codes_read(&body, ids.api_version);
            assert!(codes.iter().all(|&c| c == FILTERED), "{name}: {codes:?}");
            if let ResponseKind::Metadata(r) = &body {
                // No brokers: clients drop the response and ask again. A request for no
                // topic, or all of them, has no topic to carry the code.
                assert!(r.brokers.is_empty(), "{name}");
            } else {
                assert!(!codes.is_empty(), "{name}: no error code read");
            }
        }
    }

    /// Where `error_response_to` (which decodes the request with `kafka-protocol`, fine
    /// for these trusted bytes) names the same items, both give the same bytes.
    #[test]
    fn captured_requests_match_error_response_to_1() {
        for (name, msg) in captured_requests() {
            if name.ends_with("ACKS_0") || name.starts_with("FETCH") {
                continue; // error_response_to answers acks = 0 too; Fetch names partitions.
            }
            let ours = safe_error_response(msg, FILTERED).unwrap().unwrap();
            let theirs = error_response_to(&Bytes::from_static(msg), FILTERED).unwrap();
            assert_eq!(ours, theirs, "{name}");
        }
    }

    #[test]
    fn produce_v9_1_names_topics_and_partitions() {
        let out = safe_error_response(captured::PRODUCE_V9_REQUEST_ACKS_1, FILTERED).unwrap().unwrap();
        let (correlation_id, body) = parse(&out, ApiKey::Produce, 9);
        assert_eq!(correlation_id, 2);
        let ResponseKind::Produce(r) = body else { panic!("not a produce response") };
        assert_eq!(r.responses.len(), 1);
        assert_eq!(r.responses.first().map(|t| &*t.name.0), Some("test"));
        let partitions: Vec<_> =
            r.responses.iter().flat_map(|t| t.partition_responses.iter().map(|p| (p.index, p.error_code))).collect();
        assert_eq!(partitions, vec![(0, FILTERED)]);
    }

    #[test]
    fn acks_0_gets_nothing() {
        assert_eq!(safe_error_response(captured::PRODUCE_V9_REQUEST_ACKS_0, FILTERED), Ok(None));
        assert_eq!(safe_error_response(captured::PRODUCE_V7_REQUEST_ACKS_0, FILTERED), Ok(None));
        assert_eq!(safe_error_frame(captured::PRODUCE_V7_REQUEST_ACKS_0, FILTERED), Ok(None));
    }

    #[test]
    fn api_versions_header_v0() {
        let out = safe_error_response(captured::API_VERSIONS_V3_REQUEST, THROTTLING_QUOTA_EXCEEDED).unwrap().unwrap();
        // Correlation id 1, then the error code straight away: no tag buffer in the header.
        assert_eq!(out.get(4..10), Some(&[0, 0, 0, 1, 0, 89][..]));
        // A version newer than kafka-protocol knows is answered in v0, as brokers do.
        let v9 = [0, 0, 0, 11, 0, 18, 0, 9, 0, 0, 0, 5, 0xff, 0xff, 0];
        let out = safe_error_response(&v9, FILTERED).unwrap().unwrap();
        let (correlation_id, body) = parse(&out, ApiKey::ApiVersions, 0);
        assert_eq!(correlation_id, 5);
        assert_eq!(top_level_error_code(&body), Some(FILTERED));
    }

    #[test]
    fn throttled_frame() {
        let Ok(Some(KafkaFrame::Response { api_key, api_version, header, mut body })) =
            safe_error_frame(captured::FETCH_V12_REQUEST, THROTTLING_QUOTA_EXCEEDED)
        else {
            panic!("no frame");
        };
        assert!(set_throttle_time_ms(&mut body, 1000));
        let out = KafkaFrame::Response { api_key, api_version, header, body }.to_bytes().unwrap();
        let (_, body) = parse(&out, ApiKey::Fetch, 12);
        assert_eq!(throttle_time_ms(&body), Some(1000));
        assert_eq!(top_level_error_code(&body), Some(THROTTLING_QUOTA_EXCEEDED));
    }

    #[test]
    fn refusals() {
        // Produce v2: kafka-protocol has no encoder for it.
        let v2 = [0, 0, 0, 0x12, 0, 0, 0, 2, 0, 0, 0, 9, 0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0, 0];
        assert_eq!(
            safe_error_response(&v2, FILTERED),
            Err(KafkaCodecError::UnsupportedVersion { api_key: ApiKey::Produce, version: 2 })
        );
        // The length prefix must say the rest of the message.
        let msg = captured::FIND_COORDINATOR_V2_REQUEST;
        assert_eq!(
            safe_error_response(msg.get(..msg.len() - 1).unwrap(), FILTERED),
            Err(KafkaCodecError::LengthMismatch { declared: 22, actual: 21 })
        );
        // DeleteRecords has no top-level error code.
        let delete_records = [0, 0, 0, 10, 0, 21, 0, 1, 0, 0, 0, 9, 0xff, 0xff];
        assert_eq!(
            safe_error_response(&delete_records, FILTERED),
            Err(KafkaCodecError::NoErrorField { api_key: ApiKey::DeleteRecords, version: 1 })
        );
        // Trailing bytes after a Produce body.
        let mut msg = captured::PRODUCE_V9_REQUEST_ACKS_1.to_vec();
        msg.push(0);
        if let Some(prefix) = msg.get_mut(3) {
            *prefix += 1;
        }
        assert_eq!(
            safe_error_response(&msg, FILTERED),
            Err(KafkaCodecError::TrailingBytes { api_key: ApiKey::Produce, version: 9, len: 1 })
        );
    }

    /// The request from the module doc of `kafka`: Metadata v0 with 2^31 - 1 topics in 18
    /// bytes, which aborts the process in `kafka-protocol`'s decoder.
    #[test]
    fn malicious_metadata_v0() {
        let msg = [
            0x00, 0x00, 0x00, 0x0e, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff,
        ];
        let (out, asked, elapsed) = measure(|| safe_error_response(&msg, FILTERED));
        assert_eq!(out, Err(KafkaCodecError::Truncated("metadata topics")));
        assert!(asked <= msg.len(), "asked for {asked} bytes");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        // The same from v9 (a compact array) and v10 (topic ids).
        for (version, header_tags) in [(9u8, true), (10, true), (12, true), (1, false)] {
            let mut msg = vec![0, 0, 0, 0, 0, 3, 0, version, 0, 0, 0, 1, 0xff, 0xff];
            if header_tags {
                msg.extend([0, 0xff, 0xff, 0xff, 0xff, 0x07]);
            } else {
                msg.extend([0x7f, 0xff, 0xff, 0xff]);
            }
            msg.extend([0; 20]);
            set_prefix(&mut msg);
            let (out, asked, elapsed) = measure(|| safe_error_response(&msg, FILTERED));
            assert_eq!(out, Err(KafkaCodecError::Truncated("metadata topics")), "v{version}");
            assert!(asked <= msg.len(), "v{version}: asked for {asked} bytes");
            assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        }
    }

    fn set_prefix(msg: &mut [u8]) {
        let len = u32::try_from(msg.len() - 4).unwrap().to_be_bytes();
        if let Some(prefix) = msg.get_mut(..4) {
            prefix.copy_from_slice(&len);
        }
    }

    fn uvarint(out: &mut Vec<u8>, mut n: u32) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// A Produce request (acks 1) of `version` whose topic array, or whose one topic's
    /// partition array, declares 2^31 - 1 elements, followed by a little padding.
    fn huge_produce(version: i16, huge_partitions: bool) -> Vec<u8> {
        let flexible = version >= 9;
        let mut msg = vec![0, 0, 0, 0, 0, 0];
        msg.extend(version.to_be_bytes());
        msg.extend([0, 0, 0, 7, 0xff, 0xff]);
        let array = |msg: &mut Vec<u8>, n: u32| {
            if flexible {
                uvarint(msg, n + 1);
            } else {
                msg.extend(n.to_be_bytes());
            }
        };
        if flexible {
            msg.extend([0, 0]); // header tags, null transactional id
        } else {
            msg.extend([0xff, 0xff]);
        }
        msg.extend([0, 1, 0, 0, 0x75, 0x30]);
        if huge_partitions {
            array(&mut msg, 1);
            if version >= 13 {
                msg.extend([0x11; 16]);
            } else if flexible {
                msg.extend([2, b't']);
            } else {
                msg.extend([0, 1, b't']);
            }
            array(&mut msg, i32::MAX as u32);
        } else {
            array(&mut msg, i32::MAX as u32);
        }
        msg.extend([0; 24]);
        set_prefix(&mut msg);
        msg
    }

    #[test]
    fn malicious_produce() {
        for version in 3..=13 {
            for huge_partitions in [false, true] {
                let msg = huge_produce(version, huge_partitions);
                let what = if huge_partitions { "produce partitions" } else { "produce topics" };
                let (out, asked, elapsed) = measure(|| safe_error_response(&msg, FILTERED));
                assert_eq!(out, Err(KafkaCodecError::Truncated(what)), "v{version}");
                assert!(asked <= msg.len(), "v{version}: asked for {asked} bytes");
                assert!(elapsed < Duration::from_secs(1), "v{version}: {elapsed:?}");
            }
        }
    }

    /// A valid request with many partitions: memory grows with the request, no faster.
    #[test]
    fn many_partitions_cost_linear_memory() {
        let partitions = 20_000;
        let mut msg = vec![0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 7, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0x75, 0x30, 2, 2, b't'];
        uvarint(&mut msg, partitions + 1);
        for index in 0..partitions {
            msg.extend(index.to_be_bytes());
            msg.extend([0, 0]); // null records, no tags
        }
        msg.extend([0, 0]);
        set_prefix(&mut msg);
        let (out, asked, elapsed) = measure(|| safe_error_response(&msg, FILTERED));
        let out = out.unwrap().unwrap();
        let (_, body) = parse(&out, ApiKey::Produce, 9);
        assert_eq!(codes_read(&body, 9).len(), partitions as usize);
        // The response structs and their encoding (about 30 bytes a partition, against 6
        // in the request) dominate; the bound is generous but linear.
        assert!(asked < 64 * msg.len(), "asked for {asked} bytes for a {}-byte request", msg.len());
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    #[test]
    fn a_request_naming_more_items_than_an_answer_may_hold_gets_none() {
        // 200 000 empty keys (1 byte each) in FindCoordinator v4: each would become a
        // Coordinator struct of ~140 bytes.
        let keys = MAX_ANSWER_ITEMS as u32 * 2;
        let mut msg = vec![0, 0, 0, 0, 0, 10, 0, 4, 0, 0, 0, 7, 0xff, 0xff, 0, 0];
        uvarint(&mut msg, keys + 1);
        msg.extend(std::iter::repeat_n(1u8, keys as usize)); // compact "" each
        msg.push(0);
        set_prefix(&mut msg);
        let (out, asked, _) = measure(|| safe_error_response(&msg, FILTERED));
        assert!(
            matches!(out, Err(KafkaCodecError::Malformed("too many items to answer"))),
            "refused for its size, not answered: {out:?}"
        );
        assert!(asked < 4 * msg.len(), "asked for {asked} bytes for a {}-byte request", msg.len());
    }

    fn request(api_key: ApiKey, version: i16, body: RequestKind) -> Vec<u8> {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("c")));
        let frame = KafkaFrame::Request { header, body };
        frame.to_bytes().unwrap_or_else(|e| panic!("{api_key:?} v{version}: {e}")).to_vec()
    }

    /// Produce, Metadata and FindCoordinator in every version `kafka-protocol` encodes: the
    /// same bytes as `error_response_to`, which decodes these trusted requests.
    #[test]
    fn walked_api_keys_every_version_1() {
        let topic = |name: &'static str| TopicName(StrBytes::from_static_str(name));
        let id = |byte: u8| uuid_from(&[byte; 16]).unwrap();
        for version in 3..=13 {
            let topics = ["a", "bb"]
                .into_iter()
                .enumerate()
                .map(|(i, name)| {
                    let mut t = produce_request::TopicProduceData::default().with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(Bytes::from_static(b"records"))),
                        produce_request::PartitionProduceData::default().with_index(7),
                    ]);
                    if version >= 13 {
                        t.topic_id = id(i as u8 + 1);
                    } else {
                        t.name = topic(name);
                    }
                    t
                })
                .collect();
            let body = ProduceRequest::default()
                .with_transactional_id(Some(StrBytes::from_static_str("txn").into()))
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(topics);
            let msg = request(ApiKey::Produce, version, RequestKind::Produce(body.clone()));
            let ours = safe_error_response(&msg, FILTERED).unwrap().unwrap();
            assert_eq!(ours, error_response_to(&Bytes::from(msg), FILTERED).unwrap(), "Produce v{version}");
            let (_, response) = parse(&ours, ApiKey::Produce, version);
            assert_eq!(codes_read(&response, version), vec![FILTERED; 4], "Produce v{version}");
            let msg = request(ApiKey::Produce, version, RequestKind::Produce(body.with_acks(0)));
            assert_eq!(safe_error_response(&msg, FILTERED), Ok(None));
        }
        for version in 0..=13 {
            let mut topics = vec![metadata_request::MetadataRequestTopic::default().with_name(Some(topic("a")))];
            if version >= 10 {
                topics.push(metadata_request::MetadataRequestTopic::default().with_name(None).with_topic_id(id(9)));
            }
            let n = topics.len();
            let body = MetadataRequest::default().with_topics(Some(topics));
            let msg = request(ApiKey::Metadata, version, RequestKind::Metadata(body));
            let ours = safe_error_response(&msg, FILTERED).unwrap().unwrap();
            let (_, response) = parse(&ours, ApiKey::Metadata, version);
            let top = usize::from(version >= 13);
            assert_eq!(codes_read(&response, version), vec![FILTERED; n + top], "Metadata v{version}");
            if !(10..12).contains(&version) {
                // Before v12 we answer a topic named by id alone with an empty name, where
                // error_response_to would encode a null the client cannot read.
                assert_eq!(ours, error_response_to(&Bytes::from(msg), FILTERED).unwrap(), "Metadata v{version}");
            }
            if version >= 1 {
                let all = MetadataRequest::default().with_topics(None);
                let msg = request(ApiKey::Metadata, version, RequestKind::Metadata(all));
                let ours = safe_error_response(&msg, FILTERED).unwrap().unwrap();
                assert_eq!(ours, error_response_to(&Bytes::from(msg), FILTERED).unwrap(), "Metadata v{version}");
            }
        }
        for version in 0..=6 {
            let body = if version < 4 {
                FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g"))
            } else {
                FindCoordinatorRequest::default()
                    .with_coordinator_keys(vec![StrBytes::from_static_str("g"), StrBytes::from_static_str("hh")])
            };
            let msg = request(ApiKey::FindCoordinator, version, RequestKind::FindCoordinator(body));
            let ours = safe_error_response(&msg, FILTERED).unwrap().unwrap();
            assert_eq!(ours, error_response_to(&Bytes::from(msg), FILTERED).unwrap(), "FindCoordinator v{version}");
            let (_, response) = parse(&ours, ApiKey::FindCoordinator, version);
            let n = if version < 4 { 1 } else { 2 };
            assert_eq!(codes_read(&response, version), vec![FILTERED; n], "FindCoordinator v{version}");
        }
    }

    /// Every other api key in every version, from its header alone (the body is never
    /// read): a response with the top-level code, or NoErrorField.
    #[test]
    fn header_only_every_version_1() {
        let mut answered = 0;
        let mut no_field = 0;
        for api_key in ApiKey::iter() {
            if matches!(api_key, ApiKey::Produce | ApiKey::Metadata) {
                continue;
            }
            let range = api_key.valid_versions();
            for version in range.min..=range.max {
                if api_key == ApiKey::FindCoordinator && version >= 4 {
                    continue;
                }
                let mut msg = vec![0, 0, 0, 0];
                msg.extend((api_key as i16).to_be_bytes());
                msg.extend(version.to_be_bytes());
                msg.extend([0, 0, 0, 42, 0xff, 0xff]);
                if api_key.request_header_version(version) >= 2 {
                    msg.push(0);
                }
                set_prefix(&mut msg);
                let context = format!("{api_key:?} v{version}");
                match safe_error_response(&msg, FILTERED) {
                    Ok(Some(out)) => {
                        let (correlation_id, body) = parse(&out, api_key, version);
                        assert_eq!(correlation_id, 42, "{context}");
                        assert_eq!(top_level_error_code(&body), Some(FILTERED), "{context}");
                        answered += 1;
                    }
                    Err(KafkaCodecError::NoErrorField { .. }) => no_field += 1,
                    other => panic!("{context}: {other:?}"),
                }
            }
        }
        // kafka-protocol 0.18: 158 versions answered, 104 without a top-level code.
        assert!(answered >= 150 && no_field >= 100, "{answered} answered, {no_field} without a field");
        // The ones the brief names: Fetch has a top-level code from v7.
        let fetch = |version: i16| {
            let mut msg = vec![0, 0, 0, 0, 0, 1, 0, version as u8, 0, 0, 0, 1, 0xff, 0xff];
            if version >= 12 {
                msg.push(0);
            }
            set_prefix(&mut msg);
            safe_error_response(&msg, FILTERED).map(|out| out.is_some())
        };
        assert_eq!(fetch(6), Err(KafkaCodecError::NoErrorField { api_key: ApiKey::Fetch, version: 6 }));
        assert_eq!(fetch(7), Ok(true));
    }

    /// Random byte flips, truncations and length fixes of real requests never panic, and
    /// whatever comes out is a response `kafka-protocol` decodes.
    #[test]
    fn mutations_never_panic() {
        let mut seed: u64 = 0x5afe;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut answered = 0;
        for (name, raw) in captured_requests() {
            let rounds = if name.starts_with("PRODUCE") { 4000 } else { 500 };
            for _ in 0..rounds {
                let mut msg = raw.to_vec();
                for _ in 0..=next() % 4 {
                    let i = next() % msg.len();
                    if let Some(b) = msg.get_mut(i) {
                        *b = next() as u8;
                    }
                }
                if next() % 4 == 0 {
                    msg.truncate(next() % (msg.len() + 1));
                }
                if next() % 2 == 0 && msg.len() >= 4 {
                    set_prefix(&mut msg);
                }
                let (out, asked, _) = measure(|| safe_error_response(&msg, FILTERED));
                assert!(asked < 64 * msg.len() + 64 * 1024, "{name}: asked for {asked} bytes");
                if let Ok(Some(out)) = out {
                    let ids = request_ids(&msg).unwrap();
                    let api_key = ids.known_api_key().unwrap();
                    // ApiVersions newer than kafka-protocol knows are answered in v0.
                    let newer = ids.api_version > api_key.valid_versions().max;
                    let version = if api_key == ApiKey::ApiVersions && newer { 0 } else { ids.api_version };
                    parse(&out, api_key, version);
                    answered += 1;
                }
            }
        }
        assert!(answered > 1000, "only {answered} mutated requests answered");
    }
}
