//! v5 segments: the framing layer that wraps CQL frames once STARTUP has been answered.
//!
//! All integers here are little-endian. A segment is a header, a CRC24 of that header, a
//! payload of at most 128 KiB - 1, and a CRC32 of the payload:
//! ```text
//! uncompressed: [3 bytes: payload len (17 bits) | self-contained (1 bit) | padding (6)]
//!               [CRC24 of those 3 bytes: 3 bytes] [payload] [CRC32 of payload: 4 bytes]
//! lz4:          [5 bytes: compressed len (17) | uncompressed len (17) | self-contained (1) | padding (5)]
//!               [CRC24 of those 5 bytes: 3 bytes] [LZ4 block] [CRC32 of the block: 4 bytes]
//! ```
//! CRC24 starts at 0x875060 with polynomial 0x1974F0B, fed the header bytes in order; CRC32
//! is the usual CRC32 over the bytes FA 2D 55 CA followed by the payload. An LZ4 segment with
//! uncompressed length 0 carries its payload uncompressed.
//!
//! A *self-contained* segment holds one or more whole frames. A frame too large for one
//! segment is cut across a run of segments that are not self-contained, and is whole only
//! when the run has delivered all of its bytes.

use super::framing::frame_len_max;
use super::header::{HEADER_LEN, MAX_BODY_LEN};
use super::{compression, CassandraCodecError, Compression, Result};
use bytes::{Bytes, BytesMut};
use cassandra_protocol::crc::{crc24, crc32};

/// Largest payload of one segment.
pub const MAX_PAYLOAD_LEN: usize = (1 << 17) - 1;
const CRC24_LEN: usize = 3;
const CRC32_LEN: usize = 4;

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Bytes of payload on the wire.
    pub payload_len: usize,
    /// For LZ4 segments, the payload's length once decompressed; 0 means "not compressed".
    pub uncompressed_len: usize,
    pub self_contained: bool,
    /// Header plus its CRC24: 6 uncompressed, 8 with LZ4.
    pub header_len: usize,
}

impl SegmentHeader {
    /// Total length of the segment on the wire.
    pub fn segment_len(&self) -> usize {
        self.header_len + self.payload_len + CRC32_LEN
    }
}

fn header_bytes_len(compression: Compression) -> Result<usize> {
    match compression {
        Compression::None => Ok(3),
        Compression::Lz4 => Ok(5),
        Compression::Snappy => Err(CassandraCodecError::UnsupportedCompression("snappy in protocol v5".into())),
    }
}

fn le(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |acc, &b| acc << 8 | u64::from(b))
}

fn crc24_of(bytes: &[u8]) -> u32 {
    // cassandra-protocol's CRC24 keeps its value within 24 bits, in an i32.
    crc24(bytes) as u32 & 0x00ff_ffff
}

/// Reads and checks the header at the start of `buf`; `Ok(None)` until it has all arrived.
pub fn parse_header(buf: &[u8], compression: Compression) -> Result<Option<SegmentHeader>> {
    let n = header_bytes_len(compression)?;
    let Some(header) = buf.get(..n + CRC24_LEN) else {
        return Ok(None);
    };
    let (fields, crc) = header.split_at(n);
    let (actual, computed) = (le(crc) as u32, crc24_of(fields));
    if actual != computed {
        return Err(CassandraCodecError::SegmentHeaderCrc { actual, computed });
    }
    let fields = le(fields);
    let mask = MAX_PAYLOAD_LEN as u64;
    Ok(Some(if n == 3 {
        SegmentHeader {
            payload_len: (fields & mask) as usize,
            uncompressed_len: 0,
            self_contained: fields >> 17 & 1 == 1,
            header_len: n + CRC24_LEN,
        }
    } else {
        SegmentHeader {
            payload_len: (fields & mask) as usize,
            uncompressed_len: (fields >> 17 & mask) as usize,
            self_contained: fields >> 34 & 1 == 1,
            header_len: n + CRC24_LEN,
        }
    }))
}

/// Length of the first whole segment in `buf`; `Ok(None)` means more bytes are needed.
/// Checks the header's CRC24 (cheap), not yet the payload's CRC32.
pub fn segment_len(buf: &[u8], compression: Compression) -> Result<Option<usize>> {
    Ok(parse_header(buf, compression)?.map(|h| h.segment_len()).filter(|&len| buf.len() >= len))
}

/// Turns a stream of segments into whole frames, keeping the part of a large frame that a
/// run of non-self-contained segments has delivered so far. One per connection direction.
#[derive(Debug)]
pub struct SegmentDecoder {
    partial: BytesMut,
    /// Largest frame accepted, header included.
    max_frame: usize,
}

impl Default for SegmentDecoder {
    fn default() -> Self {
        SegmentDecoder { partial: BytesMut::new(), max_frame: HEADER_LEN + MAX_BODY_LEN }
    }
}

impl SegmentDecoder {
    pub fn new() -> Self {
        SegmentDecoder::default()
    }

    /// A decoder that refuses frames over `max_frame` bytes, header included.
    pub fn with_max_frame(max_frame: usize) -> Self {
        SegmentDecoder { partial: BytesMut::new(), max_frame }
    }

    /// True while a large frame is part way through arriving.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Decodes every whole segment at the front of `buf`, removing it, and pushes each
    /// completed frame to `frames`. Bytes of an incomplete segment stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut, compression: Compression, frames: &mut Vec<Bytes>) -> Result<()> {
        while let Some(len) = segment_len(buf, compression)? {
            let segment = buf.split_to(len).freeze();
            self.decode_segment(&segment, compression, frames)?;
        }
        Ok(())
    }

    /// Decodes one whole segment (as measured by [`segment_len`]) and pushes each frame it
    /// completes to `frames`. Frames of an uncompressed self-contained segment share its memory.
    pub fn decode_segment(&mut self, segment: &Bytes, compression: Compression, frames: &mut Vec<Bytes>) -> Result<()> {
        let header = parse_header(segment, compression)?.ok_or(CassandraCodecError::Truncated("segment header"))?;
        let payload_end = header.header_len + header.payload_len;
        let (Some(payload), Some(crc)) =
            (segment.get(header.header_len..payload_end), segment.get(payload_end..payload_end + CRC32_LEN))
        else {
            return Err(CassandraCodecError::Truncated("segment"));
        };
        let (actual, computed) = (le(crc) as u32, crc32(payload));
        if actual != computed {
            return Err(CassandraCodecError::SegmentPayloadCrc { actual, computed });
        }
        let payload = if header.uncompressed_len == 0 {
            segment.slice(header.header_len..payload_end)
        } else {
            Bytes::from(compression::lz4_decompress(payload, header.uncompressed_len)?)
        };

        if header.self_contained {
            if self.has_partial() {
                return Err(CassandraCodecError::SegmentSequence("self-contained segment inside a large frame"));
            }
            let mut rest = payload;
            while !rest.is_empty() {
                let len = frame_len_max(&rest, self.max_frame)?
                    .ok_or(CassandraCodecError::SegmentSequence("self-contained segment ends inside a frame"))?;
                frames.push(rest.split_to(len));
            }
        } else {
            self.partial.extend_from_slice(&payload);
            while let Some(len) = frame_len_max(&self.partial, self.max_frame)? {
                frames.push(self.partial.split_to(len).freeze());
            }
        }
        Ok(())
    }
}

/// Appends one segment carrying `payload` (at most [`MAX_PAYLOAD_LEN`] bytes). With LZ4 the
/// payload is sent compressed only when that makes it smaller, as the drivers do.
pub fn encode_segment(payload: &[u8], self_contained: bool, compression: Compression, out: &mut Vec<u8>) -> Result<()> {
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(CassandraCodecError::TooLongToEncode { what: "segment payload", len: payload.len() });
    }
    let n = header_bytes_len(compression)?;
    let compressed = match compression {
        Compression::Lz4 => Some(lz4_flex::block::compress(payload)).filter(|c| c.len() < payload.len()),
        _ => None,
    };
    let (body, fields) = match &compressed {
        Some(c) => (&c[..], c.len() as u64 | (payload.len() as u64) << 17 | u64::from(self_contained) << 34),
        None if n == 5 => (payload, payload.len() as u64 | u64::from(self_contained) << 34),
        None => (payload, payload.len() as u64 | u64::from(self_contained) << 17),
    };
    let start = out.len();
    out.extend_from_slice(&fields.to_le_bytes()[..n]);
    let crc = crc24_of(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes()[..CRC24_LEN]);
    out.extend_from_slice(body);
    out.extend_from_slice(&crc32(body).to_le_bytes());
    Ok(())
}

/// Appends whole frames as segments: frames are packed into self-contained segments of up
/// to [`MAX_PAYLOAD_LEN`] bytes, and a frame larger than that is cut across a run of
/// segments that are not self-contained.
pub fn encode_segments<'a>(
    frames: impl IntoIterator<Item = &'a [u8]>,
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut pending = Vec::new();
    for frame in frames {
        if frame.len() > MAX_PAYLOAD_LEN {
            if !pending.is_empty() {
                encode_segment(&pending, true, compression, out)?;
                pending.clear();
            }
            for chunk in frame.chunks(MAX_PAYLOAD_LEN) {
                encode_segment(chunk, false, compression, out)?;
            }
            continue;
        }
        if pending.len() + frame.len() > MAX_PAYLOAD_LEN {
            encode_segment(&pending, true, compression, out)?;
            pending.clear();
        }
        pending.extend_from_slice(frame);
    }
    if !pending.is_empty() {
        encode_segment(&pending, true, compression, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::captures::*;
    use crate::cassandra::header::{self, FrameHeader};
    use crate::cassandra::Opcode;

    fn decode_all(wire: &[u8], compression: Compression) -> Result<(Vec<Bytes>, BytesMut)> {
        let mut buf = BytesMut::from(wire);
        let mut frames = Vec::new();
        SegmentDecoder::new().decode(&mut buf, compression, &mut frames)?;
        Ok((frames, buf))
    }

    #[test]
    fn crc_reference_values() {
        // Check values of the v5 CRCs as other implementations publish them.
        assert_eq!(crc24_of(b"123456789"), 0x4b3f02);
        assert_eq!(crc32(b"123456789"), 0xe2a261a7);
    }

    #[test]
    fn register_v5_1() {
        let (frames, rest) = decode_all(&hex(REGISTER_V5_SEGMENT), Compression::None).unwrap();
        assert!(rest.is_empty());
        assert_eq!(frames.len(), 1);
        assert_eq!(header::opcode(&frames[0]), Ok(Opcode::Register));
        // Our encoder writes the driver's bytes back.
        let mut out = Vec::new();
        encode_segments([&frames[0][..]], Compression::None, &mut out).unwrap();
        assert_eq!(out, hex(REGISTER_V5_SEGMENT));
    }

    #[test]
    fn register_v5_lz4_1() {
        let wire = hex(REGISTER_V5_LZ4_SEGMENT);
        let (frames, rest) = decode_all(&wire, Compression::Lz4).unwrap();
        assert!(rest.is_empty());
        assert_eq!(frames.len(), 1);
        let plain = decode_all(&hex(REGISTER_V5_SEGMENT), Compression::None).unwrap().0;
        assert_eq!(frames, plain);
        // Read as uncompressed, the header CRC does not match.
        assert!(matches!(decode_all(&wire, Compression::None), Err(CassandraCodecError::SegmentHeaderCrc { .. })));
    }

    #[test]
    fn two_frames_v5_1() {
        for (wire, c) in [(SEGMENT_V5_NONE_1, Compression::None), (SEGMENT_V5_LZ4_1, Compression::Lz4)] {
            let (frames, _) = decode_all(&hex(wire), c).unwrap();
            assert_eq!(frames, vec![Bytes::from(hex(QUERY_V5_1)), Bytes::from(hex(PREPARE_V5_1))]);
            // Uncompressed, our encoder writes the driver's bytes exactly.
            if c == Compression::None {
                let mut out = Vec::new();
                encode_segments(frames.iter().map(|f| &f[..]), c, &mut out).unwrap();
                assert_eq!(out, hex(wire));
            }
        }
    }

    /// The python driver's QUERY of `SELECT * FROM ks.t WHERE k IN (0,...,39999)`, stream 23:
    /// 228,940 bytes, which it sends as two segments that are not self-contained.
    fn big_query_v5() -> Vec<u8> {
        let list: Vec<String> = (0..40000).map(|i| i.to_string()).collect();
        let query = format!("SELECT * FROM ks.t WHERE k IN ({})", list.join(","));
        let mut body = Vec::new();
        body.extend_from_slice(&(query.len() as u32).to_be_bytes());
        body.extend_from_slice(query.as_bytes());
        body.extend_from_slice(&[0x00, 0x01, 0, 0, 0, 0]);
        let mut frame = FrameHeader {
            version: crate::cassandra::Version::V5,
            response: false,
            flags: 0,
            stream_id: 23,
            opcode: Opcode::Query,
            body_len: body.len() as u32,
        }
        .to_bytes()
        .to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn big_query_v5_1() {
        let frame = big_query_v5();
        assert_eq!(frame.len(), 228_940);
        let mut out = Vec::new();
        encode_segments([&frame[..]], Compression::None, &mut out).unwrap();
        // Headers and CRC32s as the python driver wrote them.
        assert_eq!(&out[..6], &hex("ffff013891fe")[..]);
        assert_eq!(&out[6 + 131_071..10 + 131_071], &hex("573fc12c")[..]);
        let second = 10 + 131_071;
        assert_eq!(&out[second..second + 6], &hex("4d7e01e81fc6")[..]);
        assert_eq!(&out[out.len() - 4..], &hex("e45216c1")[..]);
        assert_eq!(out.len(), 228_960);
        let (frames, rest) = decode_all(&out, Compression::None).unwrap();
        assert!(rest.is_empty());
        assert_eq!(frames, vec![Bytes::from(frame.clone())]);

        // The same with LZ4: the driver's headers give the sizes its compressor reached; ours
        // differ, so check that ours decode and are marked not self-contained.
        let mut out = Vec::new();
        encode_segments([&frame[..]], Compression::Lz4, &mut out).unwrap();
        let h = parse_header(&out, Compression::Lz4).unwrap().unwrap();
        assert!(!h.self_contained);
        assert_eq!(h.uncompressed_len, MAX_PAYLOAD_LEN);
        assert_eq!(decode_all(&out, Compression::Lz4).unwrap().0, vec![Bytes::from(frame)]);
    }

    #[test]
    fn segments_arrive_in_pieces() {
        let frame = big_query_v5();
        let mut wire = Vec::new();
        encode_segments([&hex(QUERY_V5_1)[..], &frame[..], &hex(PREPARE_V5_1)[..]], Compression::None, &mut wire)
            .unwrap();
        let mut decoder = SegmentDecoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in wire.chunks(7777) {
            buf.extend_from_slice(piece);
            decoder.decode(&mut buf, Compression::None, &mut frames).unwrap();
        }
        assert!(buf.is_empty() && !decoder.has_partial());
        assert_eq!(frames, vec![Bytes::from(hex(QUERY_V5_1)), Bytes::from(frame), Bytes::from(hex(PREPARE_V5_1))]);
    }

    #[test]
    fn round_trip_many_sizes() {
        // Deterministic property test: frames of many sizes, packed, unpacked, both codecs.
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            seed >> 8
        };
        for round in 0..12 {
            let frames: Vec<Vec<u8>> = (0..1 + next() % 6)
                .map(|i| {
                    let body_len = match next() % 4 {
                        0 => next() % 16,
                        1 => next() % 4000,
                        2 => MAX_PAYLOAD_LEN as u32 - 9 + next() % 3,
                        _ => next() % 300_000,
                    } as usize;
                    let mut f = vec![0x85, 0, 0, i as u8, 0x08];
                    f.extend_from_slice(&(body_len as u32).to_be_bytes());
                    f.extend((0..body_len).map(|j| if round % 2 == 0 { (j % 7) as u8 } else { next() as u8 }));
                    f
                })
                .collect();
            for c in [Compression::None, Compression::Lz4] {
                let mut wire = Vec::new();
                encode_segments(frames.iter().map(|f| &f[..]), c, &mut wire).unwrap();
                let (got, rest) = decode_all(&wire, c).unwrap();
                assert!(rest.is_empty());
                assert_eq!(
                    got.iter().map(|f| &f[..]).collect::<Vec<_>>(),
                    frames.iter().map(|f| &f[..]).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..5000 {
            let len = (next() % 200) as usize;
            let payload: Vec<u8> = (0..len).map(|_| (next() % 6) as u8).collect();
            for c in [Compression::None, Compression::Lz4] {
                // Valid header and CRCs around random payloads and random LZ4 blocks.
                let mut wire = Vec::new();
                let n = if c == Compression::None { 3 } else { 5 };
                let fields = len as u64
                    | u64::from(next() % 300) << 17
                    | u64::from(next() & 1) << (if n == 3 { 17 } else { 34 });
                let fields = if n == 3 { fields & 0x3_ffff } else { fields };
                wire.extend_from_slice(&fields.to_le_bytes()[..n]);
                let crc = crc24_of(&wire);
                wire.extend_from_slice(&crc.to_le_bytes()[..3]);
                wire.extend_from_slice(&payload);
                wire.extend_from_slice(&crc32(&payload).to_le_bytes());
                let _ = decode_all(&wire, c);
                let _ = decode_all(&payload, c);
            }
        }
    }

    #[test]
    fn corrupt_segments_are_errors() {
        let mut wire = hex(REGISTER_V5_SEGMENT);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(matches!(decode_all(&wire, Compression::None), Err(CassandraCodecError::SegmentPayloadCrc { .. })));
        let mut wire = hex(REGISTER_V5_SEGMENT);
        wire[10] ^= 1;
        assert!(matches!(decode_all(&wire, Compression::None), Err(CassandraCodecError::SegmentPayloadCrc { .. })));
        let mut wire = hex(REGISTER_V5_SEGMENT);
        wire[0] ^= 1;
        assert!(matches!(decode_all(&wire, Compression::None), Err(CassandraCodecError::SegmentHeaderCrc { .. })));
        assert!(segment_len(&[0; 2], Compression::Snappy).is_err());

        // A self-contained segment whose payload stops inside a frame.
        let frame = hex(QUERY_V5_1);
        let mut wire = Vec::new();
        encode_segment(&frame[..20], true, Compression::None, &mut wire).unwrap();
        assert!(matches!(decode_all(&wire, Compression::None), Err(CassandraCodecError::SegmentSequence(_))));
        // A self-contained segment while a large frame is incomplete.
        let mut wire = Vec::new();
        encode_segment(&frame[..20], false, Compression::None, &mut wire).unwrap();
        encode_segment(&frame, true, Compression::None, &mut wire).unwrap();
        assert!(matches!(decode_all(&wire, Compression::None), Err(CassandraCodecError::SegmentSequence(_))));
        // A payload that is not a frame.
        let mut wire = Vec::new();
        encode_segment(&[0x42; 12], true, Compression::None, &mut wire).unwrap();
        assert_eq!(decode_all(&wire, Compression::None), Err(CassandraCodecError::UnsupportedVersion(0x42)));
        // An LZ4 segment whose block does not expand to the announced length.
        let mut wire = Vec::new();
        let fields: u64 = 3 | 50 << 17 | 1 << 34;
        wire.extend_from_slice(&fields.to_le_bytes()[..5]);
        let crc = crc24_of(&wire);
        wire.extend_from_slice(&crc.to_le_bytes()[..3]);
        wire.extend_from_slice(&[0x10, b'a', 0]);
        wire.extend_from_slice(&crc32(&[0x10, b'a', 0]).to_le_bytes());
        assert!(matches!(decode_all(&wire, Compression::Lz4), Err(CassandraCodecError::Decompression(_))));
        assert!(encode_segment(&vec![0; MAX_PAYLOAD_LEN + 1], true, Compression::None, &mut Vec::new()).is_err());
    }
}
