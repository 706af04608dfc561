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
}
