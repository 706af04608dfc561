//! Walking a client request's fields without decoding it, before `kafka-protocol` may; the
//! responses the proxy decodes are walked the same way (`response`).
//!
//! `kafka-protocol` 0.18 reserves every array's capacity from the count on the wire before
//! it reads an element (see "Untrusted input" in the module above), so a few bytes can abort
//! the process. The requests the cluster sink must decode to route them (Produce, Fetch,
//! ListOffsets, OffsetForLeaderEpoch, DeleteRecords) are walked here first, field by field,
//! with every read bounds-checked: once the walk has stepped over each element an array
//! claims, the decoder's reservation is no bigger than the elements really there.
//!
//! The layouts follow Kafka's message definitions for the versions `kafka-protocol` knows.
//! [`leading_strings`] reads the first strings of a body (group and transactional ids) for
//! the requests routed by them, which are then forwarded undecoded.

use super::framing::LENGTH_PREFIX_LEN;
use super::header::RequestHeaderView;
use super::wire::Reader;
use super::{ApiKey, KafkaCodecError};

mod response;
#[cfg(test)]
pub(crate) use response::samples as response_samples;
pub use response::{check_response, is_response_walked, MAX_RESPONSE_ELEMENTS};

/// The most array elements a walked request may hold (topics, partitions and the like, all
/// arrays together). Every element costs a byte or a few on the wire but a hundred or so
/// once decoded, so this bounds what one request can make the decoder allocate (to a few
/// MiB) whatever its size; real clients send far fewer, even for thousands of partitions.
pub const MAX_ELEMENTS: usize = 100_000;

/// A read position in a request body, in its version's encoding.
struct Walk<'a> {
    r: Reader<'a>,
    /// Compact strings and arrays, and tagged fields (flexible versions).
    flexible: bool,
    /// Array elements the request may still hold.
    budget: usize,
}

impl<'a> Walk<'a> {
    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), KafkaCodecError> {
        self.r.bytes(n, what).map(|_| ())
    }

    fn string(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, KafkaCodecError> {
        if self.flexible {
            self.r.compact_nullable_string(what)
        } else {
            self.r.nullable_string(what)
        }
    }

    /// BYTES or RECORDS: an `i32` length (or a varint of length + 1), null allowed.
    fn bytes(&mut self, what: &'static str) -> Result<(), KafkaCodecError> {
        let len = if self.flexible { i64::from(self.r.uvarint(what)?) - 1 } else { i64::from(self.r.i32(what)?) };
        match len {
            -1 => Ok(()),
            len => self.skip(usize::try_from(len).map_err(|_| KafkaCodecError::Malformed(what))?, what),
        }
    }

    /// An array whose elements `element` walks. A count beyond the bytes left cannot be
    /// real (every element takes at least one byte) and is refused before any walking.
    fn array(
        &mut self,
        what: &'static str,
        mut element: impl FnMut(&mut Self) -> Result<(), KafkaCodecError>,
    ) -> Result<(), KafkaCodecError> {
        let count = if self.flexible { i64::from(self.r.uvarint(what)?) - 1 } else { i64::from(self.r.i32(what)?) };
        if count < 0 {
            return Ok(()); // null
        }
        if count as u64 > self.r.remaining() as u64 {
            return Err(KafkaCodecError::Malformed(what));
        }
        self.budget = usize::try_from(count)
            .ok()
            .and_then(|n| self.budget.checked_sub(n))
            .ok_or(KafkaCodecError::Malformed("more elements than the proxy decodes"))?;
        for _ in 0..count {
            element(self)?;
        }
        Ok(())
    }

    /// A tagged field's tag. `kafka-protocol` keeps unknown tags as `i32`, and re-encoding
    /// one over `i32::MAX` writes the field count but drops the field (so the message
    /// after it is corrupt): such a tag is refused, as no Kafka message has one.
    fn tag(&mut self, what: &'static str) -> Result<u32, KafkaCodecError> {
        let tag = self.r.uvarint(what)?;
        match i32::try_from(tag) {
            Ok(_) => Ok(tag),
            Err(_) => Err(KafkaCodecError::Malformed("tag over 2^31 - 1")),
        }
    }

    fn tagged(&mut self, what: &'static str) -> Result<(), KafkaCodecError> {
        self.tagged_with(what, |_, _| Ok(()))
    }

    /// Tagged fields, of which `known` checks those the decoder reads as fields, given
    /// their bytes: it reads them by their own layout, not their declared size, so each must
    /// fill its size exactly.
    fn tagged_with(
        &mut self,
        what: &'static str,
        known: impl Fn(u32, &[u8]) -> Result<(), KafkaCodecError>,
    ) -> Result<(), KafkaCodecError> {
        self.tags(what, |tag, w| Some(w.r.bytes(w.r.remaining(), what).and_then(|field| known(tag, field))))
    }

    /// Tagged fields, where `known` walks those the decoder reads as fields (it returns
    /// `None` for the others, which are kept as raw bytes). The decoder reads a known field
    /// by its own layout, so the walk of one must fill its declared size exactly; it draws
    /// on the same element budget as the rest of the message.
    fn tags(
        &mut self,
        what: &'static str,
        known: impl Fn(u32, &mut Walk<'a>) -> Option<Result<(), KafkaCodecError>>,
    ) -> Result<(), KafkaCodecError> {
        if !self.flexible {
            return Ok(());
        }
        let count = self.r.uvarint(what)?;
        for _ in 0..count {
            let tag = self.tag(what)?;
            let size = usize::try_from(self.r.uvarint(what)?).map_err(|_| KafkaCodecError::Malformed(what))?;
            let field = self.r.bytes(size, what)?;
            let mut inner = Walk { r: Reader::new(field, 0), flexible: true, budget: self.budget };
            if let Some(walked) = known(tag, &mut inner) {
                walked?;
                if inner.r.remaining() != 0 {
                    return Err(KafkaCodecError::Malformed(what));
                }
                self.budget = inner.budget;
            }
        }
        Ok(())
    }
}

/// True when `field` is exactly what `walk` steps over, in a flexible encoding.
fn fills(field: &[u8], walk: impl FnOnce(&mut Walk) -> Result<(), KafkaCodecError>) -> bool {
    let mut w = Walk { r: Reader::new(field, 0), flexible: true, budget: 0 };
    walk(&mut w).is_ok() && w.r.remaining() == 0
}

/// Fetch's known tagged fields (FetchRequest.json): in a partition, ReplicaDirectoryId (tag
/// 0, v17+, a UUID) and HighWatermark (tag 1, v18+, an int64); at the top level, ClusterId
/// (tag 0, v12+, a compact string) and ReplicaState (tag 1, v15+: int32, int64, tags).
fn fetch_partition_tag(v: i16) -> impl Fn(u32, &[u8]) -> Result<(), KafkaCodecError> {
    move |tag, field| match tag {
        0 if v >= 17 && field.len() == 16 => Ok(()),
        1 if v >= 18 && field.len() == 8 => Ok(()),
        0 | 1 => Err(KafkaCodecError::Malformed("fetch partition tagged field")),
        _ => Ok(()),
    }
}

fn fetch_tag(v: i16) -> impl Fn(u32, &[u8]) -> Result<(), KafkaCodecError> {
    move |tag, field| {
        let ok = match tag {
            0 => fills(field, |w| w.string("cluster id").map(|_| ())),
            1 if v >= 15 => fills(field, |w| {
                w.skip(4 + 8, "replica state")?;
                w.tagged("replica state tagged fields")
            }),
            1 => false,
            _ => true,
        };
        ok.then_some(()).ok_or(KafkaCodecError::Malformed("fetch tagged field"))
    }
}

/// True for the requests [`check_request`] walks.
pub fn is_walked(api_key: ApiKey) -> bool {
    matches!(
        api_key,
        ApiKey::Produce | ApiKey::Fetch | ApiKey::ListOffsets | ApiKey::OffsetForLeaderEpoch | ApiKey::DeleteRecords
    )
}

/// Checks a whole request message (prefix included) of one of the walked api keys; other
/// api keys pass unchecked. An error means the message is not what its header says.
pub fn check_request(msg: &[u8]) -> Result<(), KafkaCodecError> {
    let header = RequestHeaderView::parse(msg)?;
    if !is_walked(header.api_key) {
        return Ok(());
    }
    let v = header.api_version;
    let flexible = header.header_version >= 2;
    if flexible {
        // The header's tagged fields are re-encoded with the body: their tags must be
        // keepable. They follow the key, version, correlation id and client id.
        let mut h = Walk { r: Reader::new(msg, LENGTH_PREFIX_LEN + 8), flexible: false, budget: 0 };
        h.string("client id")?;
        h.flexible = true;
        h.tagged("request header tagged fields")?;
    }
    let mut w = Walk { r: Reader::new(msg, header.body_offset), flexible, budget: MAX_ELEMENTS };
    match header.api_key {
        ApiKey::Produce => produce(&mut w, v)?,
        ApiKey::Fetch => fetch(&mut w, v)?,
        ApiKey::ListOffsets => list_offsets(&mut w, v)?,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch(&mut w, v)?,
        _ => delete_records(&mut w)?,
    }
    match w.r.remaining() {
        0 => Ok(()),
        len => Err(KafkaCodecError::TrailingBytes { api_key: header.api_key, version: v, len }),
    }
}

/// A topic's name (up to `last_named`) or id (after it).
fn topic(w: &mut Walk, v: i16, last_named: i16) -> Result<(), KafkaCodecError> {
    if v <= last_named {
        w.string("topic name").map(|_| ())
    } else {
        w.skip(16, "topic id")
    }
}

fn produce(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    w.string("transactional id")?;
    w.skip(2 + 4, "acks and timeout")?;
    w.array("topics", |w| {
        topic(w, v, 12)?;
        w.array("partitions", |w| {
            w.skip(4, "partition")?;
            w.bytes("records")?;
            w.tagged("partition tagged fields")
        })?;
        w.tagged("topic tagged fields")
    })?;
    w.tagged("tagged fields")
}

fn fetch(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    let replica_id = if v <= 14 { 4 } else { 0 };
    let session = if v >= 7 { 8 } else { 0 };
    w.skip(replica_id + 4 + 4 + 4 + 1 + session, "fetch settings")?;
    w.array("topics", |w| {
        topic(w, v, 12)?;
        w.array("partitions", |w| {
            let leader_epoch = if v >= 9 { 4 } else { 0 };
            let last_fetched_epoch = if v >= 12 { 4 } else { 0 };
            let log_start = if v >= 5 { 8 } else { 0 };
            w.skip(4 + leader_epoch + 8 + last_fetched_epoch + log_start + 4, "partition")?;
            w.tagged_with("partition tagged fields", fetch_partition_tag(v))
        })?;
        w.tagged("topic tagged fields")
    })?;
    if v >= 7 {
        w.array("forgotten topics", |w| {
            topic(w, v, 12)?;
            w.array("forgotten partitions", |w| w.skip(4, "partition"))?;
            w.tagged("forgotten topic tagged fields")
        })?;
    }
    if v >= 11 {
        w.string("rack id")?;
    }
    w.tagged_with("tagged fields", fetch_tag(v))
}

fn list_offsets(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    let isolation = if v >= 2 { 1 } else { 0 };
    w.skip(4 + isolation, "replica id")?;
    w.array("topics", |w| {
        w.string("topic name")?;
        w.array("partitions", |w| {
            let leader_epoch = if v >= 4 { 4 } else { 0 };
            w.skip(4 + leader_epoch + 8, "partition")?;
            w.tagged("partition tagged fields")
        })?;
        w.tagged("topic tagged fields")
    })?;
    if v >= 10 {
        w.skip(4, "timeout")?;
    }
    w.tagged("tagged fields")
}

fn offset_for_leader_epoch(w: &mut Walk, v: i16) -> Result<(), KafkaCodecError> {
    if v >= 3 {
        w.skip(4, "replica id")?;
    }
    w.array("topics", |w| {
        w.string("topic name")?;
        w.array("partitions", |w| {
            let current = if v >= 2 { 4 } else { 0 };
            w.skip(4 + current + 4, "partition")?;
            w.tagged("partition tagged fields")
        })?;
        w.tagged("topic tagged fields")
    })?;
    w.tagged("tagged fields")
}

fn delete_records(w: &mut Walk) -> Result<(), KafkaCodecError> {
    w.array("topics", |w| {
        w.string("topic name")?;
        w.array("partitions", |w| {
            w.skip(4 + 8, "partition")?;
            w.tagged("partition tagged fields")
        })?;
        w.tagged("topic tagged fields")
    })?;
    w.skip(4, "timeout")?;
    w.tagged("tagged fields")
}

/// The first `N` string fields of a request's body, for the requests routed by a group or
/// transactional id written first (a `None` is a null string). OffsetFetch v8+,
/// DescribeGroups, DeleteGroups and ConsumerGroupDescribe start with an array: their first
/// element's first string is read.
pub fn leading_strings<const N: usize>(msg: &[u8]) -> Result<[Option<&[u8]>; N], KafkaCodecError> {
    let header = RequestHeaderView::parse(msg)?;
    let mut w = Walk { r: Reader::new(msg, header.body_offset), flexible: header.header_version >= 2, budget: 0 };
    let starts_with_array = match header.api_key {
        ApiKey::OffsetFetch => header.api_version >= 8,
        ApiKey::DescribeGroups | ApiKey::DeleteGroups | ApiKey::ConsumerGroupDescribe => true,
        _ => false,
    };
    if starts_with_array {
        let count = if w.flexible { i64::from(w.r.uvarint("groups")?) - 1 } else { i64::from(w.r.i32("groups")?) };
        if count < 1 {
            return Ok([None; N]);
        }
    }
    let mut out = [None; N];
    for slot in &mut out {
        *slot = w.string("leading string")?;
    }
    Ok(out)
}

/// The first BYTES field of a request's body: SaslAuthenticate's `auth_bytes`, which the
/// proxy reads the SCRAM user name from. A null field reads as empty.
pub fn leading_bytes(msg: &[u8]) -> Result<&[u8], KafkaCodecError> {
    let header = RequestHeaderView::parse(msg)?;
    let mut r = Reader::new(msg, header.body_offset);
    let len = if header.header_version >= 2 {
        i64::from(r.uvarint("auth bytes")?) - 1
    } else {
        i64::from(r.i32("auth bytes")?)
    };
    match usize::try_from(len) {
        Ok(len) => r.bytes(len, "auth bytes"),
        Err(_) => Ok(&[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::{captured, KafkaFrame};
    use bytes::Bytes;

    /// Every walked request captured from a real client walks to its end.
    #[test]
    fn captured_requests_walk_to_their_end() {
        for msg in
            [captured::PRODUCE_V9_REQUEST_ACKS_1, captured::PRODUCE_V7_REQUEST_ACKS_0, captured::FETCH_V12_REQUEST]
        {
            assert_eq!(check_request(msg), Ok(()));
            KafkaFrame::parse_request(&Bytes::from_static(msg)).unwrap();
        }
    }

    /// The 18-byte Metadata-style attack on a walked request: a topics count of 2^31 - 1
    /// is refused before anything is reserved for it.
    #[test]
    fn an_impossible_count_is_refused() {
        // Produce v7: header (key 0, v7, correlation 1, null client id), transactional id
        // null, acks 1, timeout 1000, topics 0x7fffffff.
        let mut msg = vec![0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0, 3, 0xe8];
        msg.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        let len = (msg.len() - 4) as u32;
        msg[..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(check_request(&msg), Err(KafkaCodecError::Malformed("topics")));
        assert!(KafkaFrame::parse_request(&Bytes::from(msg)).is_err());
    }

    /// Re-encoding a decoded request in every version the walk knows gives bytes it walks.
    #[test]
    fn every_version_of_every_walked_request_walks() {
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::StrBytes;
        for api_key in
            [ApiKey::Produce, ApiKey::Fetch, ApiKey::ListOffsets, ApiKey::OffsetForLeaderEpoch, ApiKey::DeleteRecords]
        {
            let range = api_key.valid_versions();
            for v in range.min..=range.max {
                let body = match api_key {
                    ApiKey::Produce => {
                        RequestKind::Produce(ProduceRequest::default().with_acks(1).with_topic_data(vec![
                            produce_request::TopicProduceData::default()
                                .with_name(TopicName(StrBytes::from_static_str("t")))
                                .with_partition_data(vec![produce_request::PartitionProduceData::default()
                                    .with_index(3)
                                    .with_records(Some(Bytes::from_static(b"abc")))]),
                        ]))
                    }
                    ApiKey::Fetch => RequestKind::Fetch(
                        FetchRequest::default()
                            .with_topics(vec![fetch_request::FetchTopic::default()
                                .with_topic(TopicName(StrBytes::from_static_str("t")))
                                .with_partitions(vec![fetch_request::FetchPartition::default()])])
                            .with_forgotten_topics_data(if v >= 7 {
                                vec![fetch_request::ForgottenTopic::default().with_partitions(vec![1, 2])]
                            } else {
                                vec![]
                            }),
                    ),
                    ApiKey::ListOffsets => RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
                        list_offsets_request::ListOffsetsTopic::default()
                            .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
                    ])),
                    ApiKey::OffsetForLeaderEpoch => {
                        RequestKind::OffsetForLeaderEpoch(OffsetForLeaderEpochRequest::default().with_topics(vec![
                            offset_for_leader_epoch_request::OffsetForLeaderTopic::default().with_partitions(vec![
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default(),
                            ]),
                        ]))
                    }
                    _ => RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                        delete_records_request::DeleteRecordsTopic::default()
                            .with_partitions(vec![delete_records_request::DeleteRecordsPartition::default()]),
                    ])),
                };
                let header = RequestHeader::default()
                    .with_request_api_key(api_key as i16)
                    .with_request_api_version(v)
                    .with_correlation_id(7);
                let msg = KafkaFrame::Request { header, body }.to_bytes().unwrap();
                assert_eq!(check_request(&msg), Ok(()), "{api_key:?} v{v}");
                // Cut short anywhere, it never walks.
                for cut in 12..msg.len() {
                    assert!(check_request(&msg[..cut]).is_err(), "{api_key:?} v{v} cut at {cut}");
                }
            }
        }
    }

    /// A Fetch v17 request with one topic and one partition, whose partition ends with the
    /// tagged fields `tags` (count included).
    fn fetch_v17_with_partition_tags(tags: &[u8]) -> Vec<u8> {
        let mut msg = vec![0, 0, 0, 0, 0, 1, 0, 17, 0, 0, 0, 1, 0xff, 0xff, 0];
        msg.extend_from_slice(&[0; 4 + 4 + 4 + 1 + 4 + 4]); // max wait .. session epoch
        msg.push(2); // one topic
        msg.extend_from_slice(&[7; 16]); // topic id
        msg.push(2); // one partition
        msg.extend_from_slice(&[0; 4 + 4 + 8 + 4 + 8 + 4]); // partition .. partition max bytes
        msg.extend_from_slice(tags);
        msg.push(0); // topic tags
        msg.push(1); // no forgotten topics
        msg.push(1); // empty rack id
        msg.push(0); // tags
        let len = (msg.len() - 4) as u32;
        msg[..4].copy_from_slice(&len.to_be_bytes());
        msg
    }

    /// The decoder reads a known tagged field by its layout, not its declared size: a
    /// ReplicaDirectoryId declared 22 bytes long would leave it reading the rest of the
    /// message out of step (and its next count from a UUID's bytes). Such fields must fit.
    #[test]
    fn known_tagged_fields_must_fill_their_size() {
        let mut uuid = vec![1, 0, 16];
        uuid.extend_from_slice(&[9; 16]);
        let good = fetch_v17_with_partition_tags(&uuid);
        assert_eq!(check_request(&good), Ok(()));
        KafkaFrame::parse_request(&Bytes::from(good)).unwrap();
        let mut long = vec![1, 0, 22];
        long.extend_from_slice(&[9; 16]);
        long.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let bad = fetch_v17_with_partition_tags(&long);
        assert!(check_request(&bad).is_err());
        assert!(KafkaFrame::parse_request(&Bytes::from(bad)).is_err());
        // An unknown tag is skipped by its size, by both.
        let unknown = fetch_v17_with_partition_tags(&[1, 5, 3, 1, 2, 3]);
        assert_eq!(check_request(&unknown), Ok(()));
    }

    /// More elements than the proxy decodes are refused, however few bytes each takes.
    #[test]
    fn the_element_budget_bounds_a_request() {
        // Produce v9 (flexible): null transactional id, acks, timeout, then `topics` empty
        // topics (empty name, no partitions, no tags: 3 bytes each).
        let produce = |topics: usize| {
            let mut msg = vec![0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 3, 0xe8];
            let mut n = topics as u32 + 1;
            while n >= 0x80 {
                msg.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            msg.push(n as u8);
            for _ in 0..topics {
                msg.extend_from_slice(&[1, 1, 0]);
            }
            msg.push(0);
            let len = (msg.len() - 4) as u32;
            msg[..4].copy_from_slice(&len.to_be_bytes());
            msg
        };
        assert_eq!(check_request(&produce(MAX_ELEMENTS)), Ok(()));
        assert_eq!(
            check_request(&produce(MAX_ELEMENTS + 1)),
            Err(KafkaCodecError::Malformed("more elements than the proxy decodes"))
        );
    }

    #[test]
    fn leading_strings_of_group_requests() {
        use kafka_protocol::messages::*;
        use kafka_protocol::protocol::StrBytes;
        let heartbeat = KafkaFrame::Request {
            header: RequestHeader::default().with_request_api_key(ApiKey::Heartbeat as i16).with_request_api_version(4),
            body: RequestKind::Heartbeat(
                HeartbeatRequest::default().with_group_id(GroupId(StrBytes::from_static_str("g1"))),
            ),
        }
        .to_bytes()
        .unwrap();
        assert_eq!(leading_strings::<1>(&heartbeat), Ok([Some(&b"g1"[..])]));
        let fetch = KafkaFrame::Request {
            header: RequestHeader::default()
                .with_request_api_key(ApiKey::OffsetFetch as i16)
                .with_request_api_version(8),
            body: RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_groups(vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("g2")))]),
            ),
        }
        .to_bytes()
        .unwrap();
        assert_eq!(leading_strings::<1>(&fetch), Ok([Some(&b"g2"[..])]));
        let txn = KafkaFrame::Request {
            header: RequestHeader::default()
                .with_request_api_key(ApiKey::TxnOffsetCommit as i16)
                .with_request_api_version(3),
            body: RequestKind::TxnOffsetCommit(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(TransactionalId(StrBytes::from_static_str("tx")))
                    .with_group_id(GroupId(StrBytes::from_static_str("g3"))),
            ),
        }
        .to_bytes()
        .unwrap();
        assert_eq!(leading_strings::<2>(&txn), Ok([Some(&b"tx"[..]), Some(&b"g3"[..])]));
    }

    #[test]
    fn leading_bytes_of_sasl_authenticate() {
        use kafka_protocol::messages::*;
        for version in 0..=2 {
            let request = KafkaFrame::Request {
                header: RequestHeader::default()
                    .with_request_api_key(ApiKey::SaslAuthenticate as i16)
                    .with_request_api_version(version),
                body: RequestKind::SaslAuthenticate(
                    SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(b"n,,n=user1,r=abc")),
                ),
            }
            .to_bytes()
            .unwrap();
            assert_eq!(leading_bytes(&request), Ok(&b"n,,n=user1,r=abc"[..]), "v{version}");
            // Cut short: an error, not a panic.
            assert!(leading_bytes(&request[..request.len() - 3]).is_err());
        }
    }
}
