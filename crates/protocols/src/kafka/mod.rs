//! Kafka wire protocol: framing, cheap header reads, lazy parsing and proxy helpers.
//!
//! Every function takes a whole message *including* its 4-byte length prefix, exactly as
//! [`framing::message_len`] delimits it on the wire, so a proxy can forward the same bytes
//! it was given. Messages are plain bytes until someone asks for a [`KafkaFrame`]; the
//! message types are those of the [`kafka_protocol`] crate, re-exported here.
//!
//! Layout:
//! - [`framing`]: is a whole message buffered, and how long is it? No allocation.
//! - [`header`]: api key, version, correlation id and client id read straight from the bytes.
//! - [`produce`]: `acks` of a Produce request, and whether a request gets a response at all.
//! - [`state`]: per-connection [`InFlightRequests`], matching responses to their requests.
//! - [`frame`]: [`KafkaFrame`], parsed on demand and encoded back in the same version.
//! - [`api`]: the api key of a parsed body, default responses, `throttle_time_ms`.
//! - [`rewrite`]: point every broker in Metadata, FindCoordinator and DescribeCluster
//!   responses at the proxy.
//! - [`error_response`]: the error codes of the responses the proxy answers itself.
//! - [`classify`]: the [`QueryType`] of each api key, for QueryTypeFilter.
//! - [`walk`]: steps over the fields of the requests the cluster sink decodes, and of every
//!   response the proxy decodes, so that `kafka-protocol` never reserves room for elements
//!   that are not there.
//! - [`safe_error`]: error responses to client requests (refused, throttled) built from the
//!   raw bytes, without running `kafka-protocol`'s decoders on them.
//!
//! Start at [`framing::message_len`], then [`header::request_ids`] and
//! [`InFlightRequests::record`].
//!
//! # Untrusted input
//! The cheap paths (framing, header, produce, state, classify) are hand-written and
//! bounds-checked: no input makes them panic, and framing and header reads never allocate.
//! Full parsing ([`KafkaFrame::parse_request`], [`KafkaFrame::parse_response`], and so
//! [`rewrite::rewrite_brokers`], and the tests' oracle for `safe_error`) runs
//! `kafka-protocol` 0.18's decoders, which reserve every array's capacity from the element
//! count on the wire before reading an element (`Vec::with_capacity(n)` in
//! `protocol/types.rs`). The 18-byte Metadata v0 request
//! `00 00 00 0e 00 03 00 00 00 00 00 01 ff ff 7f ff ff ff` (topics: 2^31 - 1 of them) asks
//! for 144 GiB, and the failed allocation aborts the process: no error, no panic to catch.
//! Until `kafka-protocol` bounds that capacity by the bytes remaining (upstream pull
//! requests #152, #161 and #200 propose it), nothing reaches those decoders unwalked:
//! [`KafkaFrame::parse_request`] decodes only the requests [`walk::check_request`] walks,
//! and [`KafkaFrame::parse_response`] only the responses [`walk::check_response`] walks
//! (or that hold no array); other kinds get [`KafkaCodecError::NotWalked`]. A request is
//! parsed only when a transform needs its frame. To answer a client
//! request the proxy refuses itself, use [`safe_error::safe_error_response`], which never
//! decodes the request.

pub mod api;
pub mod classify;
#[cfg(test)]
mod error_oracle;
pub mod error_response;
pub mod frame;
pub mod framing;
pub mod header;
pub mod produce;
pub mod rewrite;
pub mod safe_error;
pub mod state;
pub mod walk;
mod wire;

#[cfg(test)]
pub(crate) mod captured;

pub use crate::valkey::command::QueryType;
pub use frame::KafkaFrame;
pub use kafka_protocol;
pub use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
pub use kafka_protocol::ResponseError;
pub use state::InFlightRequests;

/// Why bytes could not be read or written as Kafka protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KafkaCodecError {
    #[error("Kafka protocol error: negative message length {0}")]
    NegativeLength(i32),
    #[error("Kafka protocol error: message length {len} is under the minimum of 4 bytes")]
    TooShort { len: usize },
    #[error("Kafka protocol error: message of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("Kafka protocol error: length prefix says {declared} bytes but the message has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("Kafka protocol error: message ends inside its {0}")]
    Truncated(&'static str),
    #[error("Kafka protocol error: malformed {0}")]
    Malformed(&'static str),
    #[error("Kafka protocol error: unknown api key {0}")]
    UnknownApiKey(i16),
    #[error("Kafka protocol error: {api_key:?} version {version} is not supported")]
    UnsupportedVersion { api_key: ApiKey, version: i16 },
    #[error("Kafka protocol error: {api_key:?} is not a {expected:?} request")]
    WrongApiKey { api_key: i16, expected: ApiKey },
    #[error("Kafka protocol error: cannot decode {api_key:?} v{version}: {reason}")]
    Decode { api_key: ApiKey, version: i16, reason: String },
    #[error("Kafka protocol error: {len} bytes left over after {api_key:?} v{version}")]
    TrailingBytes { api_key: ApiKey, version: i16, len: usize },
    #[error("Kafka protocol error: cannot encode {api_key:?} v{version}: {reason}")]
    Encode { api_key: ApiKey, version: i16, reason: String },
    #[error("Kafka protocol error: the header's api key {header} does not match its {body:?} body")]
    BodyMismatch { header: i16, body: Option<ApiKey> },
    #[error("Kafka protocol error: response to unknown correlation id {0}")]
    UnknownCorrelationId(i32),
    #[error("Kafka protocol error: {0:?} responses are not decoded by the proxy (their arrays are not walked)")]
    NotWalked(ApiKey),
    #[error("Kafka protocol error: a {api_key:?} v{version} response has no field to carry an error code")]
    NoErrorField { api_key: ApiKey, version: i16 },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheap paths run on every message, so they must survive any bytes: flip bytes of
    /// real messages at random (a fixed-seed generator) and check nothing panics. Full
    /// parsing is left out: see "Untrusted input" above.
    #[test]
    fn cheap_paths_survive_mutations() {
        let messages = [
            captured::API_VERSIONS_V3_REQUEST,
            captured::API_VERSIONS_V3_RESPONSE,
            captured::METADATA_V12_REQUEST,
            captured::METADATA_V7_REQUEST,
            captured::PRODUCE_V9_REQUEST_ACKS_1,
            captured::PRODUCE_V7_REQUEST_ACKS_0,
            captured::FETCH_V12_REQUEST,
            captured::JOIN_GROUP_V5_REQUEST,
        ];
        let mut seed: u64 = 0x5eed;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        let mut state = InFlightRequests::new();
        for raw in messages {
            for _ in 0..2000 {
                let mut msg = raw.to_vec();
                for _ in 0..=next() % 4 {
                    let i = next() % msg.len();
                    if let Some(b) = msg.get_mut(i) {
                        *b = next() as u8;
                    }
                }
                msg.truncate(next() % (msg.len() + 1));
                let _ = framing::message_len(&msg);
                let _ = framing::response_correlation_id(&msg);
                let _ = header::request_ids(&msg);
                let _ = header::RequestHeaderView::parse(&msg);
                let _ = header::response_body_offset(&msg, ApiKey::Metadata, 12);
                let _ = produce::produce_acks(&msg);
                let _ = produce::expects_response(&msg);
                let _ = state.record(&msg);
                let _ = state.take_for_response(&msg);
                if let Ok(ids) = header::request_ids(&msg) {
                    let _ = classify::classify_raw(ids.api_key);
                }
            }
        }
    }
}
