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
