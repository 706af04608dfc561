//! Message boundaries in a Kafka byte stream.
//!
//! Every Kafka request and response is a 4-byte big-endian length, then that many bytes.
//! Finding the end of a message reads only the prefix: no parse, no allocation.
//!
//! ```text
//! 00 00 00 0e | 00 12 00 03 00 00 00 01 00 04 61 62 63 64 ...
//!   length 14 | api_key 18 (ApiVersions), version 3, correlation 1, client id "abcd"
//! ```

use super::wire::Reader;
use super::KafkaCodecError;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Largest message accepted (the prefix excluded): 100 MiB, the broker's default
/// `socket.request.max.bytes`. Fetch responses are capped by `fetch.max.bytes` (50 MiB by
/// default), so one limit serves both directions. A prefix over it is refused at once,
/// before the bytes arrive, so a bad prefix cannot make the proxy buffer 2 GiB.
pub const MAX_MESSAGE_LEN: usize = 100 * 1024 * 1024;

/// Smallest length a prefix may declare: every message starts with at least a
/// correlation id (responses) or api key and version (requests).
pub const MIN_MESSAGE_LEN: usize = 4;

/// Total length (prefix included) of the first whole message in `buf`, or `Ok(None)` when
/// more bytes are needed. Refuses a negative length, one under [`MIN_MESSAGE_LEN`] and one
/// over [`MAX_MESSAGE_LEN`].
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, KafkaCodecError> {
    message_len_max(buf, MAX_MESSAGE_LEN)
}

/// [`message_len`] with a limit of `max` bytes instead of [`MAX_MESSAGE_LEN`].
pub fn message_len_max(buf: &[u8], max: usize) -> Result<Option<usize>, KafkaCodecError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let declared = i32::from_be_bytes(*prefix);
    let len = usize::try_from(declared).map_err(|_| KafkaCodecError::NegativeLength(declared))?;
    if len < MIN_MESSAGE_LEN {
        return Err(KafkaCodecError::TooShort { len });
    }
    if len > max {
        return Err(KafkaCodecError::TooLarge { len, max });
    }
    let total = len + LENGTH_PREFIX_LEN;
    Ok((buf.len() >= total).then_some(total))
}

/// At most this much is reserved ahead for a message still arriving: enough for the
/// batches clients send (librdkafka's default `message.max.bytes` is 1 MB), while a length
/// prefix alone cannot make the proxy reserve [`MAX_MESSAGE_LEN`].
pub const RESERVE_AHEAD: usize = 16 * 1024 * 1024;

/// Reserves room in `buf` for the rest of the message it starts with, once the length prefix
/// is in: a large message is then read into one allocation, instead of one that grows (and
/// copies what it holds) as the message arrives. Does nothing for a message already whole,
/// or a prefix [`message_len`] refuses.
pub fn reserve_rest(buf: &mut bytes::BytesMut) {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>() else { return };
    let Ok(len) = usize::try_from(i32::from_be_bytes(*prefix)) else { return };
    let total = len.saturating_add(LENGTH_PREFIX_LEN).min(RESERVE_AHEAD);
    if let Some(more) = total.checked_sub(buf.len()).filter(|m| *m > 0) {
        buf.reserve(more);
    }
}

/// Checks that `msg` is exactly one message: its prefix declares the rest of it.
pub(crate) fn check_whole(msg: &[u8]) -> Result<(), KafkaCodecError> {
    let declared = Reader::new(msg, 0).i32("length prefix")?;
    let declared = usize::try_from(declared).map_err(|_| KafkaCodecError::NegativeLength(declared))?;
    let actual = msg.len() - LENGTH_PREFIX_LEN;
    if declared != actual {
        return Err(KafkaCodecError::LengthMismatch { declared, actual });
    }
    Ok(())
}

/// The correlation id of a response: its first 4 bytes after the prefix, in every version.
pub fn response_correlation_id(msg: &[u8]) -> Result<i32, KafkaCodecError> {
    Reader::new(msg, LENGTH_PREFIX_LEN).i32("response header")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::captured;

    #[test]
    fn api_versions_v3_1_framing() {
        let msg = captured::API_VERSIONS_V3_REQUEST;
        assert_eq!(message_len(msg), Ok(Some(msg.len())));
        for cut in 0..msg.len() {
            assert_eq!(message_len(&msg[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = msg.to_vec();
        two.extend_from_slice(msg);
        assert_eq!(message_len(&two), Ok(Some(msg.len())));
    }

    #[test]
    fn bad_prefixes() {
        assert_eq!(message_len(&[0xff, 0xff, 0xff, 0xff]), Err(KafkaCodecError::NegativeLength(-1)));
        assert_eq!(message_len(&[0x80, 0, 0, 0]), Err(KafkaCodecError::NegativeLength(i32::MIN)));
        assert_eq!(message_len(&[0, 0, 0, 3]), Err(KafkaCodecError::TooShort { len: 3 }));
        let over = u32::try_from(MAX_MESSAGE_LEN + 1).unwrap().to_be_bytes();
        assert_eq!(
            message_len(&over),
            Err(KafkaCodecError::TooLarge { len: MAX_MESSAGE_LEN + 1, max: MAX_MESSAGE_LEN })
        );
        let at = u32::try_from(MAX_MESSAGE_LEN).unwrap().to_be_bytes();
        assert_eq!(message_len(&at), Ok(None));
        assert_eq!(message_len_max(&[0, 0, 0, 9], 8), Err(KafkaCodecError::TooLarge { len: 9, max: 8 }));
    }

    #[test]
    fn correlation_id_of_a_response() {
        assert_eq!(response_correlation_id(captured::API_VERSIONS_V3_RESPONSE), Ok(1));
        assert_eq!(response_correlation_id(&[0, 0, 0, 4, 0, 0, 1]), Err(KafkaCodecError::Truncated("response header")));
    }

    #[test]
    fn whole_message_check() {
        assert_eq!(check_whole(&[0, 0, 0, 4, 1, 2, 3, 4]), Ok(()));
        assert_eq!(
            check_whole(&[0, 0, 0, 5, 1, 2, 3, 4]),
            Err(KafkaCodecError::LengthMismatch { declared: 5, actual: 4 })
        );
        assert_eq!(check_whole(&[0, 0]), Err(KafkaCodecError::Truncated("length prefix")));
    }

    #[test]
    fn the_rest_of_a_message_is_reserved_up_to_a_bound() {
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&1_000_000i32.to_be_bytes());
        buf.extend_from_slice(&[0; 10]);
        reserve_rest(&mut buf);
        assert!(buf.capacity() >= 1_000_004);
        let mut huge = bytes::BytesMut::new();
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        reserve_rest(&mut huge);
        assert!(huge.capacity() >= RESERVE_AHEAD && huge.capacity() < 2 * RESERVE_AHEAD);
        let mut negative = bytes::BytesMut::new();
        negative.extend_from_slice(&(-1i32).to_be_bytes());
        reserve_rest(&mut negative);
        assert!(negative.capacity() < 64);
    }
}
