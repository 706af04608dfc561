//! Frame boundaries in a CQL byte stream.
//!
//! A frame announces its body length in its header, so finding where it ends reads 9 bytes
//! and allocates nothing. The same function finds frames inside a v5 segment's payload.
//!
//! ```text
//! 04 00 0005 07 00000033 | 0000002c "SELECT ..." 0001 00    a v4 QUERY: 9 + 0x33 bytes
//! ```

use super::header::{opcode_from_byte, version_from_byte, HEADER_LEN, MAX_BODY_LEN};
use super::{CassandraCodecError, Result};

/// Length of the first whole frame in `buf`.
///
/// `Ok(None)` means more bytes are needed. A bad version byte (not 3, 4 or 5; the Python
/// driver opens with 0x42, DSE v2, to negotiate), an unknown opcode or a body over 256 MiB is
/// an error as soon as the byte that shows it has arrived: see
/// [`super::response::unsupported_version_response`] for the reply drivers expect to the first.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>> {
    frame_len_max(buf, HEADER_LEN + MAX_BODY_LEN)
}

/// [`frame_len`] with frames limited to `max` bytes, header included: a header that
/// announces more is refused as soon as its length has arrived, before any of the body.
pub fn frame_len_max(buf: &[u8], max: usize) -> Result<Option<usize>> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    version_from_byte(version)?;
    if let Some(&opcode) = buf.get(4) {
        opcode_from_byte(opcode)?;
    }
    let Some(&[l0, l1, l2, l3]) = buf.get(5..HEADER_LEN) else {
        return Ok(None);
    };
    let body_len = u32::from_be_bytes([l0, l1, l2, l3]);
    let len = HEADER_LEN + body_len as usize;
    if body_len as usize > MAX_BODY_LEN || len > max {
        return Err(CassandraCodecError::FrameTooLarge(u64::from(body_len)));
    }
    Ok((buf.len() >= len).then_some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::captures::{hex, OPTIONS_DSE_V2, STARTUP_V4_LZ4};

    #[test]
    fn startup_v4_1() {
        let frame = hex(STARTUP_V4_LZ4);
        assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
        for cut in 0..frame.len() {
            assert_eq!(frame_len(&frame[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn options_v5_1() {
        let frame = hex("050000000500000000");
        assert_eq!(frame_len(&frame), Ok(Some(9)));
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(frame_len(&two), Ok(Some(9)), "only the first frame");
    }

    #[test]
    fn malformed_headers() {
        // OPTIONS from the python driver's first try: DSE v2.
        assert_eq!(frame_len(&hex(OPTIONS_DSE_V2)), Err(CassandraCodecError::UnsupportedVersion(0x42)));
        assert_eq!(frame_len(&[0x02]), Err(CassandraCodecError::UnsupportedVersion(2)));
        assert_eq!(frame_len(&[0x04, 0, 0, 0, 0x04]), Err(CassandraCodecError::UnknownOpcode(4)));
        assert_eq!(frame_len(&[0x04, 0, 0, 0, 0x11]), Err(CassandraCodecError::UnknownOpcode(0x11)));
        assert_eq!(
            frame_len(&[0x04, 0, 0, 0, 0x07, 0x10, 0, 0, 1]),
            Err(CassandraCodecError::FrameTooLarge(0x1000_0001))
        );
        assert_eq!(
            frame_len(&[0x04, 0, 0, 0, 0x07, 0xff, 0xff, 0xff, 0xff]),
            Err(CassandraCodecError::FrameTooLarge(u64::from(u32::MAX)))
        );
        // The limit itself is allowed (and incomplete here).
        assert_eq!(frame_len(&[0x84, 0, 0, 0, 0x08, 0x10, 0, 0, 0]), Ok(None));
    }

    #[test]
    fn a_lower_limit_refuses_at_the_header() {
        // A QUERY announcing a 1 GiB body: refused at its 9th byte, nothing else read.
        let huge = [0x04, 0, 0, 1, 0x07, 0x40, 0, 0, 0];
        assert_eq!(frame_len_max(&huge, 65_536), Err(CassandraCodecError::FrameTooLarge(0x4000_0000)));
        // The limit counts the header: 9 + 65 527 fits in 65 536, one more does not.
        let at = [0x04, 0, 0, 1, 0x07, 0, 0, 0xff, 0xf7];
        assert_eq!(frame_len_max(&at, 65_536), Ok(None));
        let over = [0x04, 0, 0, 1, 0x07, 0, 0, 0xff, 0xf8];
        assert_eq!(frame_len_max(&over, 65_536), Err(CassandraCodecError::FrameTooLarge(0xfff8)));
    }
}
