//! Frame body compression in v3 and v4, negotiated by STARTUP's `COMPRESSION` option and
//! flagged per frame by header flag 0x01.
//!
//! ```text
//! lz4:    [u32 big-endian uncompressed length][LZ4 block]
//! snappy: [Snappy raw block]
//! ```
//! v5 never compresses frames: its segments do ([`super::segment`]), with LZ4 only.
//!
//! Decompression refuses an announced length over the frame limit, or over what the
//! compressed bytes could possibly expand to, before allocating anything.

use super::header::{flags, version_from_byte, HEADER_LEN, MAX_BODY_LEN};
use super::{CassandraCodecError, Result, Version};
use bytes::Bytes;

/// The compression a connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Snappy,
}

/// The most an LZ4 block can expand: each extra length byte of a match adds 255 bytes.
const LZ4_MAX_RATIO: usize = 255;
/// The most a Snappy block can expand: a 3-byte copy writes at most 64 bytes.
const SNAPPY_MAX_RATIO: usize = 32;

impl Compression {
    /// The compression named by STARTUP's `COMPRESSION` option (case-insensitive, as
    /// Cassandra reads it); no option is [`Compression::None`].
    pub fn from_startup_option(option: Option<&str>) -> Result<Self> {
        match option {
            None => Ok(Compression::None),
            Some(name) if name.eq_ignore_ascii_case("lz4") => Ok(Compression::Lz4),
            Some(name) if name.eq_ignore_ascii_case("snappy") => Ok(Compression::Snappy),
            Some(other) => Err(CassandraCodecError::UnsupportedCompression(other.to_owned())),
        }
    }

    /// The option value for STARTUP.
    pub fn startup_option(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Lz4 => Some("lz4"),
            Compression::Snappy => Some("snappy"),
        }
    }
}

/// Decompresses a v3/v4 frame body.
pub fn decompress_body(body: &[u8], compression: Compression) -> Result<Vec<u8>> {
    match compression {
        Compression::None => Err(CassandraCodecError::CompressionNotNegotiated),
        Compression::Lz4 => {
            let Some((len, block)) = body.split_first_chunk::<4>() else {
                return Err(CassandraCodecError::Truncated("lz4 uncompressed length"));
            };
            let len = u32::from_be_bytes(*len) as usize;
            check_expansion(len, block.len(), LZ4_MAX_RATIO)?;
            if len == 0 {
                return Ok(Vec::new());
            }
            lz4_decompress(block, len)
        }
        Compression::Snappy => {
            let len = snap::raw::decompress_len(body).map_err(|e| CassandraCodecError::Decompression(e.to_string()))?;
            check_expansion(len, body.len(), SNAPPY_MAX_RATIO)?;
            snap::raw::Decoder::new()
                .decompress_vec(body)
                .map_err(|e| CassandraCodecError::Decompression(e.to_string()))
        }
    }
}

/// Compresses a v3/v4 frame body.
pub fn compress_body(body: &[u8], compression: Compression) -> Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(body.to_vec()),
        Compression::Lz4 => {
            let len = u32::try_from(body.len())
                .map_err(|_| CassandraCodecError::TooLongToEncode { what: "lz4 body", len: body.len() })?;
            let mut out = Vec::with_capacity(4 + lz4_flex::block::get_maximum_output_size(body.len()));
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&lz4_flex::block::compress(body));
            Ok(out)
        }
        Compression::Snappy => {
            let too_long = |_| CassandraCodecError::TooLongToEncode { what: "snappy body", len: body.len() };
            snap::raw::Encoder::new().compress_vec(body).map_err(too_long)
        }
    }
}

/// A whole frame with its body decompressed and the compression flag cleared. Frames
/// without the flag, and v5 frames (where the flag is ignored), come back unchanged and
/// uncopied.
pub fn decompress_frame(frame: &Bytes, compression: Compression) -> Result<Bytes> {
    let (Some(&version), Some(&flag_bits)) = (frame.first(), frame.get(1)) else {
        return Err(CassandraCodecError::Truncated("frame header"));
    };
    if flag_bits & flags::COMPRESSION == 0 || version_from_byte(version)? >= Version::V5 {
        return Ok(frame.clone());
    }
    let (header, body) = split_frame(frame)?;
    // An empty body has nothing to decompress, whatever the flag says.
    let body = if body.is_empty() { Vec::new() } else { decompress_body(body, compression)? };
    Ok(Bytes::from(rebuild(header, flag_bits & !flags::COMPRESSION, &body)?))
}

/// A whole uncompressed v3/v4 frame with its body compressed and the flag set. With
/// [`Compression::None`], for v5 frames, or for an empty body, the frame is returned as is.
pub fn compress_frame(frame: &[u8], compression: Compression) -> Result<Vec<u8>> {
    let (header, body) = split_frame(frame)?;
    if compression == Compression::None || body.is_empty() || version_from_byte(header[0])? >= Version::V5 {
        return Ok(frame.to_vec());
    }
    let body = compress_body(body, compression)?;
    rebuild(header, header[1] | flags::COMPRESSION, &body)
}

fn split_frame(frame: &[u8]) -> Result<(&[u8; HEADER_LEN], &[u8])> {
    let (header, body) =
        frame.split_first_chunk::<HEADER_LEN>().ok_or(CassandraCodecError::Truncated("frame header"))?;
    let announced = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let body = body.get(..announced).ok_or(CassandraCodecError::Truncated("frame body"))?;
    Ok((header, body))
}

fn rebuild(header: &[u8; HEADER_LEN], flag_bits: u8, body: &[u8]) -> Result<Vec<u8>> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l as usize <= MAX_BODY_LEN)
        .ok_or(CassandraCodecError::FrameTooLarge(body.len() as u64))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header[..5]);
    out[1] = flag_bits;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

fn check_expansion(len: usize, compressed: usize, ratio: usize) -> Result<()> {
    if len > MAX_BODY_LEN {
        return Err(CassandraCodecError::FrameTooLarge(len as u64));
    }
    if len > compressed.saturating_mul(ratio).saturating_add(64) {
        return Err(CassandraCodecError::InvalidLength { what: "uncompressed length", len: len as i64 });
    }
    Ok(())
}

/// Decompresses an LZ4 block that must expand to exactly `len` bytes.
pub(crate) fn lz4_decompress(block: &[u8], len: usize) -> Result<Vec<u8>> {
    let out = lz4_flex::block::decompress(block, len).map_err(|e| CassandraCodecError::Decompression(e.to_string()))?;
    if out.len() != len {
        return Err(CassandraCodecError::Decompression(format!("lz4 block gave {} bytes, not {len}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::captures::{hex, QUERY_V4_LZ4_1};
    use crate::cassandra::header::FrameHeader;

    #[test]
    fn query_v4_lz4_1() {
        // A QUERY the python driver compressed with LZ4.
        let frame = Bytes::from(hex(QUERY_V4_LZ4_1));
        let plain = decompress_frame(&frame, Compression::Lz4).unwrap();
        let h = FrameHeader::parse(&plain).unwrap();
        assert_eq!(h.flags & flags::COMPRESSION, 0);
        assert_eq!(h.body_len as usize, plain.len() - HEADER_LEN);
        let query = "SELECT * FROM system.peers WHERE peer = '127.0.0.1' AND data_center = 'dc1' ALLOW FILTERING";
        assert_eq!(&plain[13..13 + query.len()], query.as_bytes());
        // Without negotiated compression the flag is an error.
        assert_eq!(decompress_frame(&frame, Compression::None), Err(CassandraCodecError::CompressionNotNegotiated));
        // Our compression reads back the same.
        let again = compress_frame(&plain, Compression::Lz4).unwrap();
        assert_eq!(decompress_frame(&Bytes::from(again), Compression::Lz4).unwrap(), plain);
    }

    #[test]
    fn round_trip_bodies() {
        // A deterministic spread of sizes and contents (a property test without a crate).
        let mut seed = 0x2545_f491_u32;
        for n in [0usize, 1, 2, 15, 16, 17, 255, 256, 4096, 70_000] {
            let body: Vec<u8> = (0..n)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    if i % 3 == 0 {
                        b'a'
                    } else {
                        seed as u8
                    }
                })
                .collect();
            for c in [Compression::Lz4, Compression::Snappy] {
                let packed = compress_body(&body, c).unwrap();
                assert_eq!(decompress_body(&packed, c).unwrap(), body, "{c:?} {n}");
                let mut frame = vec![0x84, 0x00, 0x00, 0x07, 0x08];
                frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
                frame.extend_from_slice(&body);
                let packed = compress_frame(&frame, c).unwrap();
                assert_eq!(decompress_frame(&Bytes::from(packed), c).unwrap(), frame, "{c:?} {n}");
            }
        }
    }

    #[test]
    fn bombs_and_garbage_are_errors() {
        // 10 bytes claiming 4 GiB, and claiming more than LZ4 can expand to.
        assert!(matches!(
            decompress_body(&[0xff, 0xff, 0xff, 0xff, 0, 0], Compression::Lz4),
            Err(CassandraCodecError::FrameTooLarge(_))
        ));
        assert!(matches!(
            decompress_body(&[0x00, 0x10, 0x00, 0x00, 0x1f, 0x00], Compression::Lz4),
            Err(CassandraCodecError::InvalidLength { .. })
        ));
        assert!(matches!(decompress_body(&[0, 0], Compression::Lz4), Err(CassandraCodecError::Truncated(_))));
        assert!(matches!(
            decompress_body(&[0, 0, 0, 8, 0xff, 0xff, 0xff], Compression::Lz4),
            Err(CassandraCodecError::Decompression(_))
        ));
        assert!(decompress_body(&[0xff, 0xff, 0xff, 0xff, 0x0f], Compression::Snappy).is_err());
        assert!(decompress_body(&[0x05, 0xff], Compression::Snappy).is_err());
        assert_eq!(Compression::from_startup_option(Some("LZ4")), Ok(Compression::Lz4));
        assert_eq!(Compression::from_startup_option(Some("snappy")), Ok(Compression::Snappy));
        assert!(Compression::from_startup_option(Some("zstd")).is_err());
    }
}
