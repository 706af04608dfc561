//! Request and response headers read straight from the bytes.
//!
//! ```text
//! request header v1:  api_key i16 | api_version i16 | correlation_id i32 | client_id NULLABLE_STRING
//! request header v2:  v1, then TAG_BUFFER (flexible versions)
//! response header v0: correlation_id i32
//! response header v1: correlation_id i32 | TAG_BUFFER (flexible versions)
//! ```
//!
//! The header version follows from the api key and version (`kafka-protocol`'s tables).
//! The client id stays a non-compact string even in header v2. ApiVersions responses always
//! use header v0, so a client that does not know the broker's versions can read them.

use super::framing::LENGTH_PREFIX_LEN;
use super::wire::Reader;
use super::{ApiKey, KafkaCodecError};

/// The fixed fields at the start of every request, in every version, of every api key
/// (known to this crate or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestIds {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RequestIds {
    /// The api key, if `kafka-protocol` knows it.
    pub fn known_api_key(&self) -> Result<ApiKey, KafkaCodecError> {
        ApiKey::try_from(self.api_key).map_err(|()| KafkaCodecError::UnknownApiKey(self.api_key))
    }
}

/// Reads api key, version and correlation id of a whole request message (prefix included).
pub fn request_ids(msg: &[u8]) -> Result<RequestIds, KafkaCodecError> {
    let mut r = Reader::new(msg, LENGTH_PREFIX_LEN);
    Ok(RequestIds {
        api_key: r.i16("request header")?,
        api_version: r.i16("request header")?,
        correlation_id: r.i32("request header")?,
    })
}

/// The whole request header of a message, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeaderView<'a> {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub correlation_id: i32,
    /// The client id as sent (not checked for UTF-8); `None` when null.
    pub client_id: Option<&'a [u8]>,
    /// 1, or 2 for flexible versions.
    pub header_version: i16,
    /// Offset of the request body in the message.
    pub body_offset: usize,
}

impl<'a> RequestHeaderView<'a> {
    /// Reads the header of a whole request message (prefix included). Fails for an api key
    /// `kafka-protocol` does not know, whose header version is unknown.
    pub fn parse(msg: &'a [u8]) -> Result<Self, KafkaCodecError> {
        let ids = request_ids(msg)?;
        let api_key = ids.known_api_key()?;
        let header_version = api_key.request_header_version(ids.api_version);
        let mut r = Reader::new(msg, LENGTH_PREFIX_LEN + 8);
        let client_id = r.nullable_string("client id")?;
        if header_version >= 2 {
            r.skip_tagged_fields("request header tagged fields")?;
        }
        Ok(RequestHeaderView {
            api_key,
            api_version: ids.api_version,
            correlation_id: ids.correlation_id,
            client_id,
            header_version,
            body_offset: r.pos(),
        })
    }
}

/// Offset of the body in a whole response message for `api_key` at `api_version`.
pub fn response_body_offset(msg: &[u8], api_key: ApiKey, api_version: i16) -> Result<usize, KafkaCodecError> {
    let mut r = Reader::new(msg, LENGTH_PREFIX_LEN);
    r.i32("response header")?;
    if api_key.response_header_version(api_version) >= 1 {
        r.skip_tagged_fields("response header tagged fields")?;
    }
    Ok(r.pos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::captured;

    #[test]
    fn api_versions_v3_1_header() {
        let msg = captured::API_VERSIONS_V3_REQUEST;
        let ids = request_ids(msg).unwrap();
        assert_eq!(ids, RequestIds { api_key: 18, api_version: 3, correlation_id: 1 });
        let view = RequestHeaderView::parse(msg).unwrap();
        assert_eq!(view.api_key, ApiKey::ApiVersions);
        assert_eq!(view.header_version, 2);
        assert_eq!(view.client_id, Some(&b"rdkafka"[..]));
        // prefix 4 + fixed 8 + client id 2 + 7 + tag buffer 1
        assert_eq!(view.body_offset, 22);
    }

    #[test]
    fn metadata_v7_1_header() {
        let view = RequestHeaderView::parse(captured::METADATA_V7_REQUEST).unwrap();
        assert_eq!(view.api_key, ApiKey::Metadata);
        assert_eq!(view.header_version, 1);
        assert_eq!(view.client_id, Some(&b"kafka-python-producer-1"[..]));
        assert_eq!(view.body_offset, 4 + 8 + 2 + 23);
    }

    #[test]
    fn unknown_api_key_still_has_ids() {
        let msg = [0, 0, 0, 10, 0x03, 0xe7, 0, 1, 0, 0, 0, 7, 0xff, 0xff];
        let ids = request_ids(&msg).unwrap();
        assert_eq!(ids, RequestIds { api_key: 999, api_version: 1, correlation_id: 7 });
        assert_eq!(RequestHeaderView::parse(&msg), Err(KafkaCodecError::UnknownApiKey(999)));
    }

    #[test]
    fn truncated_headers() {
        assert_eq!(request_ids(&[0, 0, 0, 4, 0, 3, 0, 1]), Err(KafkaCodecError::Truncated("request header")));
        // Metadata v1, null client id is fine; a client id longer than the message is not.
        let ok = [0, 0, 0, 10, 0, 3, 0, 1, 0, 0, 0, 7, 0xff, 0xff];
        assert_eq!(RequestHeaderView::parse(&ok).unwrap().client_id, None);
        let bad = [0, 0, 0, 10, 0, 3, 0, 1, 0, 0, 0, 7, 0x00, 0x09];
        assert_eq!(RequestHeaderView::parse(&bad), Err(KafkaCodecError::Truncated("client id")));
        // ApiVersions v3 (header v2) whose tag buffer is missing.
        let bad = [0, 0, 0, 10, 0, 18, 0, 3, 0, 0, 0, 7, 0xff, 0xff];
        assert_eq!(RequestHeaderView::parse(&bad), Err(KafkaCodecError::Truncated("request header tagged fields")));
    }

    #[test]
    fn response_offsets() {
        // ApiVersions: header v0 in every version.
        assert_eq!(response_body_offset(captured::API_VERSIONS_V3_RESPONSE, ApiKey::ApiVersions, 3), Ok(8));
        // Metadata v9+: header v1 with an (empty) tag buffer.
        assert_eq!(response_body_offset(&[0, 0, 0, 5, 0, 0, 0, 1, 0], ApiKey::Metadata, 9), Ok(9));
        assert_eq!(response_body_offset(&[0, 0, 0, 5, 0, 0, 0, 1, 0], ApiKey::Metadata, 8), Ok(8));
    }
}
