//! Tests of the parent module, kept apart so that its file stays about the code.

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

/// Parses a response the proxy built, walked as a broker's would be when its kind is one
/// the proxy decodes.
fn parse(out: &Bytes, api_key: ApiKey, version: i16) -> (i32, ResponseKind) {
    let parsed = if crate::kafka::walk::is_response_walked(api_key) {
        KafkaFrame::parse_response(out, api_key, version)
    } else {
        KafkaFrame::parse_response_unwalked(out, api_key, version)
    };
    match parsed {
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

/// Runs `answer` on every captured client request and hands each response to `check`, with
/// the request's name and version, once it is shown to decode (our own output, so decoding
/// it with `kafka-protocol` is safe) and to be on the request's correlation id. Produce with
/// `acks = 0` must get none.
fn for_each_captured_answer(
    answer: impl Fn(&[u8]) -> Result<Option<Bytes>, KafkaCodecError>,
    check: impl Fn(&str, i16, &ResponseKind),
) {
    for (name, msg) in captured_requests() {
        let ids = request_ids(msg).unwrap();
        let api_key = ids.known_api_key().unwrap();
        let out = answer(msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.ends_with("ACKS_0") {
            assert_eq!(out, None, "{name}");
            continue;
        }
        let out = out.unwrap_or_else(|| panic!("{name}: no response"));
        let (correlation_id, body) = parse(&out, api_key, ids.api_version);
        assert_eq!(correlation_id, ids.correlation_id, "{name}");
        check(name, ids.api_version, &body);
    }
}

/// Every captured client request gets an answer with the code wherever the client reads one.
#[test]
fn captured_requests_1() {
    for_each_captured_answer(
        |msg| safe_error_response(msg, FILTERED),
        |name, version, body| {
            let codes = codes_read(body, version);
            assert!(codes.iter().all(|&c| c == FILTERED), "{name}: {codes:?}");
            if let ResponseKind::Metadata(r) = body {
                // No brokers: clients drop the response and ask again. A request for no
                // topic, or all of them, has no topic to carry the code.
                assert!(r.brokers.is_empty(), "{name}");
            } else {
                assert!(!codes.is_empty(), "{name}: no error code read");
            }
        },
    );
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

/// NullSink's answers: every captured request gets a response of its own type with no error
/// anywhere the client reads one, and a Produce response names the request's topics.
#[test]
fn empty_responses_decode_and_carry_no_error() {
    for_each_captured_answer(empty_response, |name, version, body| {
        let codes = codes_read(body, version);
        assert!(codes.iter().all(|&c| c == 0), "{name}: {codes:?}");
        if let ResponseKind::Produce(r) = body {
            assert!(!r.responses.is_empty(), "{name}: names no topic");
        }
    });
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
    let msg =
        [0x00, 0x00, 0x00, 0x0e, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff];
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
/// A request with an empty body, correlation id 42, for every api key and version whose
/// answer names nothing of the request (all but Produce, Metadata and FindCoordinator v4+).
fn header_only_requests() -> Vec<(ApiKey, i16, Vec<u8>)> {
    let mut requests = Vec::new();
    for api_key in ApiKey::iter().filter(|k| !matches!(k, ApiKey::Produce | ApiKey::Metadata)) {
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
            requests.push((api_key, version, msg));
        }
    }
    requests
}

/// NullSink's answer to each of them, those with no error field included (ListOffsets,
/// Fetch before v7, ...): the default response, decoded, on the request's correlation id,
/// with no error.
#[test]
fn empty_responses_for_every_version_decode() {
    let requests = header_only_requests();
    for (api_key, version, msg) in &requests {
        let context = format!("{api_key:?} v{version}");
        let out = empty_response(msg).unwrap_or_else(|e| panic!("{context}: {e}"));
        let out = out.unwrap_or_else(|| panic!("{context}: no response"));
        let (correlation_id, body) = parse(&out, *api_key, *version);
        assert_eq!(correlation_id, 42, "{context}");
        assert!(matches!(top_level_error_code(&body), None | Some(0)), "{context}");
    }
    assert!(requests.len() > 200, "{}", requests.len());
}

#[test]
fn header_only_every_version_1() {
    let mut answered = 0;
    let mut no_field = 0;
    for (api_key, version, msg) in header_only_requests() {
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
