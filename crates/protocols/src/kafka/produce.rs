//! `acks` of a Produce request, read without decoding it, and whether a request is answered.
//!
//! A Produce request with `acks = 0` gets no response from the broker, so the proxy must not
//! wait for one (nor record it in [`super::InFlightRequests`]). Every other request, of
//! every api key, gets exactly one response.
//!
//! ```text
//! Produce v0-2:  acks i16 | timeout_ms i32 | topics ...
//! Produce v3-8:  transactional_id NULLABLE_STRING | acks i16 | ...
//! Produce v9+:   transactional_id COMPACT_NULLABLE_STRING | acks i16 | ...   (header v2)
//! ```

use super::framing::LENGTH_PREFIX_LEN;
use super::header::request_ids;
use super::wire::Reader;
use super::{ApiKey, KafkaCodecError};

/// The `acks` of a whole Produce request message: 0 (no response), 1 (leader) or -1 (all).
pub fn produce_acks(msg: &[u8]) -> Result<i16, KafkaCodecError> {
    let ids = request_ids(msg)?;
    if ids.api_key != ApiKey::Produce as i16 {
        return Err(KafkaCodecError::WrongApiKey { api_key: ids.api_key, expected: ApiKey::Produce });
    }
    let version = ids.api_version;
    let mut r = Reader::new(msg, LENGTH_PREFIX_LEN + 8);
    r.nullable_string("client id")?;
    if ApiKey::Produce.request_header_version(version) >= 2 {
        r.skip_tagged_fields("request header tagged fields")?;
    }
    if version >= 9 {
        r.compact_nullable_string("transactional id")?;
    } else if version >= 3 {
        r.nullable_string("transactional id")?;
    }
    r.i16("acks")
}

/// Whether the broker answers this whole request message: false only for Produce with
/// `acks = 0`. Reads the header (and for Produce, up to `acks`) without decoding the body.
pub fn expects_response(msg: &[u8]) -> Result<bool, KafkaCodecError> {
    let ids = request_ids(msg)?;
    if ids.api_key != ApiKey::Produce as i16 {
        return Ok(true);
    }
    Ok(produce_acks(msg)? != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::captured;

    #[test]
    fn produce_v9_1_acks() {
        assert_eq!(produce_acks(captured::PRODUCE_V9_REQUEST_ACKS_1), Ok(1));
        assert_eq!(expects_response(captured::PRODUCE_V9_REQUEST_ACKS_1), Ok(true));
    }

    #[test]
    fn produce_v9_2_acks_0() {
        assert_eq!(produce_acks(captured::PRODUCE_V9_REQUEST_ACKS_0), Ok(0));
        assert_eq!(expects_response(captured::PRODUCE_V9_REQUEST_ACKS_0), Ok(false));
        assert_eq!(produce_acks(captured::PRODUCE_V9_REQUEST_ACKS_1_KAFKA_PYTHON), Ok(1));
    }

    #[test]
    fn produce_v7_1_acks() {
        assert_eq!(produce_acks(captured::PRODUCE_V7_REQUEST_ACKS_ALL), Ok(-1));
        assert_eq!(expects_response(captured::PRODUCE_V7_REQUEST_ACKS_ALL), Ok(true));
        assert_eq!(produce_acks(captured::PRODUCE_V7_REQUEST_ACKS_0), Ok(0));
        assert_eq!(expects_response(captured::PRODUCE_V7_REQUEST_ACKS_0), Ok(false));
    }

    /// Hand-built: versions older than the ones `kafka-protocol` decodes still work here.
    #[test]
    fn produce_v2_1_acks_first() {
        let msg = [0, 0, 0, 0x14, 0, 0, 0, 2, 0, 0, 0, 9, 0, 1, b'c', 0, 0, 0, 0, 0x75, 0x30, 0, 0, 0, 0];
        assert_eq!(produce_acks(&msg[..msg.len() - 2]), Ok(0));
        let acks_1 = [0, 0, 0, 0x0c, 0, 0, 0, 1, 0, 0, 0, 9, 0xff, 0xff, 0, 1];
        assert_eq!(expects_response(&acks_1), Ok(true));
    }

    #[test]
    fn produce_v3_1_transactional() {
        let msg = [0, 0, 0, 0x11, 0, 0, 0, 3, 0, 0, 0, 9, 0xff, 0xff, 0, 3, b't', b'x', b'n', 0, 0];
        assert_eq!(produce_acks(&msg), Ok(0));
    }

    #[test]
    fn other_requests_expect_responses() {
        assert_eq!(expects_response(captured::METADATA_V12_REQUEST), Ok(true));
        assert_eq!(expects_response(captured::API_VERSIONS_V0_REQUEST), Ok(true));
        // An api key nobody knows still gets its response.
        assert_eq!(expects_response(&[0, 0, 0, 8, 0x03, 0xe7, 0, 1, 0, 0, 0, 7]), Ok(true));
        assert_eq!(
            produce_acks(captured::METADATA_V12_REQUEST),
            Err(KafkaCodecError::WrongApiKey { api_key: 3, expected: ApiKey::Produce })
        );
    }

    #[test]
    fn truncated_produce() {
        let msg = captured::PRODUCE_V9_REQUEST_ACKS_1;
        // Cut right before acks: the prefix does not matter here, only the bytes present.
        let body = 4 + 8 + 2 + 7 + 1 + 1;
        assert_eq!(produce_acks(&msg[..body]), Err(KafkaCodecError::Truncated("acks")));
        assert_eq!(produce_acks(&msg[..body + 2]), Ok(1));
        assert_eq!(expects_response(&msg[..6]), Err(KafkaCodecError::Truncated("request header")));
    }
}
