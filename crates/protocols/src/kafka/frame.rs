//! Parsing one whole Kafka message into a frame, and encoding frames.
//!
//! A frame holds `kafka-protocol`'s header and body types. A request carries its api key
//! and version in its header; a response does not, so the frame keeps the pair it was
//! parsed with (from [`super::InFlightRequests`]) and is encoded back in that same version.
//!
//! Parsing is zero-copy where `kafka-protocol` allows it: strings, record batches and other
//! byte fields are [`Bytes`] slices of the message.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::api::{request_api_key, response_api_key};
use super::framing::{check_whole, LENGTH_PREFIX_LEN};
use super::header::request_ids;
use super::{ApiKey, KafkaCodecError, RequestHeader, RequestKind, ResponseError, ResponseHeader, ResponseKind};

/// A parsed Kafka message.
#[derive(Debug, Clone, PartialEq)]
pub enum KafkaFrame {
    Request {
        header: RequestHeader,
        body: RequestKind,
    },
    Response {
        /// The api key of the request this answers.
        api_key: ApiKey,
        /// The version of the request this answers, and of this response.
        api_version: i16,
        header: ResponseHeader,
        body: ResponseKind,
    },
}

impl KafkaFrame {
    /// Parses a whole request message (length prefix included).
    pub fn parse_request(msg: &Bytes) -> Result<Self, KafkaCodecError> {
        check_whole(msg)?;
        let ids = request_ids(msg)?;
        let api_key = ids.known_api_key()?;
        let version = check_version(api_key, ids.api_version)?;
        // The requests the proxy decodes to route them are walked first: see `walk`.
        super::walk::check_request(msg)?;
        let mut buf = msg.slice(LENGTH_PREFIX_LEN..);
        let header = RequestHeader::decode(&mut buf, api_key.request_header_version(version))
            .map_err(|e| decode_error(api_key, version, "request header", e))?;
        let body =
            RequestKind::decode(api_key, &mut buf, version).map_err(|e| decode_error(api_key, version, "", e))?;
        no_trailing_bytes(&buf, api_key, version)?;
        Ok(KafkaFrame::Request { header, body })
    }

    /// Parses a whole response message (length prefix included) to a request of `api_key`
    /// at `api_version`.
    ///
    /// A broker answers an ApiVersions request of a version it does not support with a v0
    /// body carrying UNSUPPORTED_VERSION (so the client learns which versions to use). Such
    /// a response parses as v0, and `api_version` in the frame is then 0.
    pub fn parse_response(msg: &Bytes, api_key: ApiKey, api_version: i16) -> Result<Self, KafkaCodecError> {
        let result = Self::parse_response_at(msg, api_key, api_version);
        // Decoding another version's bytes as v0 could reserve room for a count that is not
        // one (see "Untrusted input"): only a body laid out exactly as v0 is decoded so.
        if result.is_err() && api_key == ApiKey::ApiVersions && api_version > 0 && is_api_versions_v0(msg) {
            if let Ok(frame) = Self::parse_response_at(msg, api_key, 0) {
                if let KafkaFrame::Response { body: ResponseKind::ApiVersions(body), .. } = &frame {
                    if body.error_code == ResponseError::UnsupportedVersion.code() {
                        return Ok(frame);
                    }
                }
            }
        }
        result
    }

    fn parse_response_at(msg: &Bytes, api_key: ApiKey, api_version: i16) -> Result<Self, KafkaCodecError> {
        check_whole(msg)?;
        let version = check_version(api_key, api_version)?;
        // Only walked responses reach the decoder: see `walk`.
        super::walk::check_response(msg, api_key, version)?;
        Self::decode_response(msg, api_key, version)
    }

    /// A response decoded without the walk: for the tests' responses of kinds the proxy
    /// does not decode (built by the proxy itself, so their counts are real).
    #[cfg(test)]
    pub(crate) fn parse_response_unwalked(msg: &Bytes, api_key: ApiKey, version: i16) -> Result<Self, KafkaCodecError> {
        Self::decode_response(msg, api_key, version)
    }

    fn decode_response(msg: &Bytes, api_key: ApiKey, version: i16) -> Result<Self, KafkaCodecError> {
        let mut buf = msg.slice(LENGTH_PREFIX_LEN..);
        let header = ResponseHeader::decode(&mut buf, api_key.response_header_version(version))
            .map_err(|e| decode_error(api_key, version, "response header", e))?;
        let body =
            ResponseKind::decode(api_key, &mut buf, version).map_err(|e| decode_error(api_key, version, "", e))?;
        no_trailing_bytes(&buf, api_key, version)?;
        Ok(KafkaFrame::Response { api_key, api_version: version, header, body })
    }

    /// The correlation id in the header.
    pub fn correlation_id(&self) -> i32 {
        match self {
            KafkaFrame::Request { header, .. } => header.correlation_id,
            KafkaFrame::Response { header, .. } => header.correlation_id,
        }
    }

    /// The api key and version of the message (for a response: of its request).
    pub fn api_key_and_version(&self) -> Result<(ApiKey, i16), KafkaCodecError> {
        match self {
            KafkaFrame::Request { header, .. } => {
                let api_key = ApiKey::try_from(header.request_api_key)
                    .map_err(|()| KafkaCodecError::UnknownApiKey(header.request_api_key))?;
                Ok((api_key, header.request_api_version))
            }
            KafkaFrame::Response { api_key, api_version, .. } => Ok((*api_key, *api_version)),
        }
    }

    /// Appends the whole message, length prefix included, to `out`. The body must be of the
    /// api key the header (or, for a response, `api_key`) names.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), KafkaCodecError> {
        let start = out.len();
        out.put_i32(0);
        let (api_key, version) = self.api_key_and_version()?;
        let result = match self {
            KafkaFrame::Request { header, body } => {
                if request_api_key(body) != Some(api_key) {
                    return Err(KafkaCodecError::BodyMismatch { header: api_key as i16, body: request_api_key(body) });
                }
                header.encode(out, api_key.request_header_version(version)).and_then(|()| body.encode(out, version))
            }
            KafkaFrame::Response { header, body, .. } => {
                if response_api_key(body) != Some(api_key) {
                    return Err(KafkaCodecError::BodyMismatch { header: api_key as i16, body: response_api_key(body) });
                }
                header.encode(out, api_key.response_header_version(version)).and_then(|()| body.encode(out, version))
            }
        };
        if let Err(e) = result {
            out.truncate(start);
            return Err(KafkaCodecError::Encode { api_key, version, reason: format!("{e:#}") });
        }
        let len = out.len() - start - LENGTH_PREFIX_LEN;
        let Ok(len) = i32::try_from(len) else {
            out.truncate(start);
            return Err(KafkaCodecError::TooLarge { len, max: i32::MAX as usize });
        };
        if let Some(prefix) = out.get_mut(start..start + LENGTH_PREFIX_LEN) {
            prefix.copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }

    /// The whole message as bytes, length prefix included.
    pub fn to_bytes(&self) -> Result<Bytes, KafkaCodecError> {
        let mut out = BytesMut::new();
        self.encode(&mut out)?;
        Ok(out.freeze())
    }
}

/// True when a response message is laid out as an ApiVersions v0 response: a correlation
/// id, an error code, and an array of (api key, min version, max version), nothing more.
fn is_api_versions_v0(msg: &[u8]) -> bool {
    let mut r = super::wire::Reader::new(msg, LENGTH_PREFIX_LEN + 4);
    let (Ok(_), Ok(count)) = (r.i16("error code"), r.i32("api keys")) else { return false };
    usize::try_from(count).is_ok_and(|n| n.checked_mul(6) == Some(r.remaining()))
}

fn check_version(api_key: ApiKey, version: i16) -> Result<i16, KafkaCodecError> {
    let range = api_key.valid_versions();
    if version < range.min || version > range.max {
        return Err(KafkaCodecError::UnsupportedVersion { api_key, version });
    }
    Ok(version)
}

fn decode_error(api_key: ApiKey, version: i16, part: &str, e: impl std::fmt::Display) -> KafkaCodecError {
    let reason = if part.is_empty() { format!("{e:#}") } else { format!("{part}: {e:#}") };
    KafkaCodecError::Decode { api_key, version, reason }
}

fn no_trailing_bytes(buf: &Bytes, api_key: ApiKey, version: i16) -> Result<(), KafkaCodecError> {
    match buf.remaining() {
        0 => Ok(()),
        len => Err(KafkaCodecError::TrailingBytes { api_key, version, len }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::captured;

    fn request_round_trip(raw: &'static [u8]) -> KafkaFrame {
        let msg = Bytes::from_static(raw);
        let frame = KafkaFrame::parse_request(&msg).unwrap();
        assert_eq!(frame.to_bytes().unwrap(), msg, "{frame:?}");
        frame
    }

    fn response_round_trip(raw: &'static [u8], api_key: ApiKey, version: i16) -> KafkaFrame {
        let msg = Bytes::from_static(raw);
        let frame = KafkaFrame::parse_response(&msg, api_key, version).unwrap();
        assert_eq!(frame.to_bytes().unwrap(), msg, "{frame:?}");
        frame
    }

    #[test]
    fn api_versions_v3_1_round_trip() {
        let frame = request_round_trip(captured::API_VERSIONS_V3_REQUEST);
        let KafkaFrame::Request { header, body: RequestKind::ApiVersions(body) } = frame else {
            panic!("not an ApiVersions request");
        };
        assert_eq!(header.client_id.as_deref(), Some("rdkafka"));
        assert_eq!(&*body.client_software_name, "confluent-kafka-python");
        let frame = response_round_trip(captured::API_VERSIONS_V3_RESPONSE, ApiKey::ApiVersions, 3);
        let KafkaFrame::Response { body: ResponseKind::ApiVersions(body), .. } = frame else {
            panic!("not an ApiVersions response");
        };
        assert_eq!(body.error_code, 0);
        assert!(body.api_keys.iter().any(|k| k.api_key == 0 && k.max_version == 9));
    }

    #[test]
    fn api_versions_v4_1_round_trip() {
        request_round_trip(captured::API_VERSIONS_V4_REQUEST);
        // The broker answers an unsupported ApiVersions version in v0: recorded as a v4
        // request, the response still parses (as v0) and encodes back the same.
        let frame = response_round_trip(captured::API_VERSIONS_V0_UNSUPPORTED_RESPONSE, ApiKey::ApiVersions, 4);
        assert!(matches!(
            frame,
            KafkaFrame::Response { api_version: 0, body: ResponseKind::ApiVersions(ref b), .. } if b.error_code == 35
        ));
        // Any other response that does not parse at its version is still an error.
        let v3 = Bytes::from_static(captured::API_VERSIONS_V3_RESPONSE);
        assert!(KafkaFrame::parse_response(&v3, ApiKey::ApiVersions, 2).is_err());
    }

    #[test]
    fn api_versions_v2_1_round_trip() {
        request_round_trip(captured::API_VERSIONS_V2_REQUEST);
        response_round_trip(captured::API_VERSIONS_V2_RESPONSE, ApiKey::ApiVersions, 2);
    }

    #[test]
    fn api_versions_v0_1_round_trip() {
        request_round_trip(captured::API_VERSIONS_V0_REQUEST);
        response_round_trip(captured::API_VERSIONS_V0_RESPONSE, ApiKey::ApiVersions, 0);
    }

    #[test]
    fn metadata_v12_1_round_trip() {
        let frame = request_round_trip(captured::METADATA_V12_REQUEST);
        let KafkaFrame::Request { body: RequestKind::Metadata(body), .. } = frame else {
            panic!("not a Metadata request");
        };
        let topics = body.topics.unwrap_or_default();
        assert_eq!(topics.first().and_then(|t| t.name.as_ref()).map(|n| &*n.0), Some("test"));
        request_round_trip(captured::METADATA_V12_REQUEST_NO_TOPICS);
        let frame = response_round_trip(captured::METADATA_V12_RESPONSE, ApiKey::Metadata, 12);
        let KafkaFrame::Response { body: ResponseKind::Metadata(body), .. } = frame else {
            panic!("not a Metadata response");
        };
        assert_eq!(body.brokers.first().map(|b| (&*b.host, b.port)), Some(("127.0.0.1", 19094)));
    }

    #[test]
    fn metadata_v7_1_round_trip() {
        request_round_trip(captured::METADATA_V7_REQUEST);
        request_round_trip(captured::METADATA_V7_REQUEST_TOPIC);
        response_round_trip(captured::METADATA_V7_RESPONSE, ApiKey::Metadata, 7);
    }

    #[test]
    fn produce_v9_1_round_trip() {
        let frame = request_round_trip(captured::PRODUCE_V9_REQUEST_ACKS_1);
        let KafkaFrame::Request { body: RequestKind::Produce(body), .. } = frame else {
            panic!("not a Produce request");
        };
        assert_eq!(body.acks, 1);
        assert_eq!(body.topic_data.first().map(|t| &*t.name.0), Some("test"));
        request_round_trip(captured::PRODUCE_V9_REQUEST_ACKS_0);
        request_round_trip(captured::PRODUCE_V9_REQUEST_ACKS_1_KAFKA_PYTHON);
        response_round_trip(captured::PRODUCE_V9_RESPONSE, ApiKey::Produce, 9);
    }

    #[test]
    fn produce_v7_1_round_trip() {
        request_round_trip(captured::PRODUCE_V7_REQUEST_ACKS_ALL);
        request_round_trip(captured::PRODUCE_V7_REQUEST_ACKS_0);
        response_round_trip(captured::PRODUCE_V7_RESPONSE, ApiKey::Produce, 7);
    }

    #[test]
    fn find_coordinator_v2_1_round_trip() {
        request_round_trip(captured::FIND_COORDINATOR_V2_REQUEST);
        response_round_trip(captured::FIND_COORDINATOR_V2_RESPONSE, ApiKey::FindCoordinator, 2);
    }

    #[test]
    fn find_coordinator_v4_1_round_trip() {
        request_round_trip(captured::FIND_COORDINATOR_V4_REQUEST);
        response_round_trip(captured::FIND_COORDINATOR_V4_RESPONSE, ApiKey::FindCoordinator, 4);
    }

    #[test]
    fn join_group_v5_1_round_trip() {
        request_round_trip(captured::JOIN_GROUP_V5_REQUEST);
    }

    #[test]
    fn join_group_v7_1_round_trip() {
        request_round_trip(captured::JOIN_GROUP_V7_REQUEST);
    }

    #[test]
    fn fetch_v12_1_round_trip() {
        let frame = request_round_trip(captured::FETCH_V12_REQUEST);
        let KafkaFrame::Request { body: RequestKind::Fetch(body), .. } = frame else {
            panic!("not a Fetch request");
        };
        let partition = body.topics.first().and_then(|t| t.partitions.first()).map(|p| p.fetch_offset);
        assert_eq!(partition, Some(5));
        request_round_trip(captured::FETCH_V12_REQUEST_KAFKA_PYTHON);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for raw in [captured::PRODUCE_V9_REQUEST_ACKS_1, captured::METADATA_V12_REQUEST, captured::FETCH_V12_REQUEST] {
            for cut in 0..raw.len() {
                let mut msg = raw[..cut].to_vec();
                // Keep the prefix consistent so the body decoder, not the length check, fails.
                if let Some(prefix) = msg.get_mut(..4) {
                    prefix.copy_from_slice(&u32::try_from(cut.saturating_sub(4)).unwrap().to_be_bytes());
                }
                assert!(KafkaFrame::parse_request(&Bytes::from(msg)).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn malformed_requests() {
        let unknown = Bytes::from_static(&[0, 0, 0, 8, 0x03, 0xe7, 0, 1, 0, 0, 0, 7]);
        assert_eq!(KafkaFrame::parse_request(&unknown), Err(KafkaCodecError::UnknownApiKey(999)));
        // Produce v2: older than kafka-protocol 0.18 decodes.
        let old = Bytes::from_static(&[0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0, 7]);
        assert_eq!(
            KafkaFrame::parse_request(&old),
            Err(KafkaCodecError::UnsupportedVersion { api_key: ApiKey::Produce, version: 2 })
        );
        let mut extra = captured::METADATA_V12_REQUEST.to_vec();
        extra.push(0);
        extra[3] += 1;
        assert_eq!(
            KafkaFrame::parse_request(&Bytes::from(extra)),
            Err(KafkaCodecError::TrailingBytes { api_key: ApiKey::Metadata, version: 12, len: 1 })
        );
        let short = Bytes::from_static(&captured::METADATA_V12_REQUEST[..20]);
        assert!(matches!(KafkaFrame::parse_request(&short), Err(KafkaCodecError::LengthMismatch { .. })));
    }

    #[test]
    fn mismatched_body_is_not_encoded() {
        let frame = KafkaFrame::Request {
            header: RequestHeader::default().with_request_api_key(3).with_request_api_version(12),
            body: RequestKind::Produce(Default::default()),
        };
        assert_eq!(frame.to_bytes(), Err(KafkaCodecError::BodyMismatch { header: 3, body: Some(ApiKey::Produce) }));
    }
}
