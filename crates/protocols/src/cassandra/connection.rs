//! CQL frames on one connection, either side of the proxy: cutting them from the bytes
//! read, and writing them, with the connection's own transport state.
//!
//! Both the client connection and the upstream connection negotiate for themselves: the
//! STARTUP that passes through sets version and compression on each, and READY (in v5)
//! switches each to segments. So each side keeps its own [`CqlWire`] and feeds it every
//! frame it reads and writes; frames themselves travel through the chain as plain frames
//! (v3/v4 bodies stay compressed as they came; v5 frames are never compressed, their
//! segments are).

use crate::cassandra::header::{HEADER_LEN, MAX_BODY_LEN};
use crate::cassandra::segment::{encode_segments, SegmentDecoder};
use crate::cassandra::{framing, CassandraCodecError, CassandraCodecState, Compression};
use bytes::{Bytes, BytesMut};

/// One connection's CQL transport state.
#[derive(Debug)]
pub struct CqlWire {
    pub state: CassandraCodecState,
    segments: SegmentDecoder,
    /// Largest frame accepted, header included.
    max_frame: usize,
}

impl Default for CqlWire {
    fn default() -> Self {
        CqlWire::with_max_frame(HEADER_LEN + MAX_BODY_LEN)
    }
}

impl CqlWire {
    pub fn new() -> Self {
        Self::default()
    }

    /// A connection whose frames may be at most `max_frame` bytes, header included (a
    /// source's `max_request_bytes`): a frame announcing more is refused at its header.
    pub fn with_max_frame(max_frame: usize) -> Self {
        CqlWire {
            state: CassandraCodecState::default(),
            segments: SegmentDecoder::with_max_frame(max_frame),
            max_frame,
        }
    }

    /// How frame bodies read now are compressed (v3/v4); none in v5.
    pub fn frame_compression(&self) -> Compression {
        self.state.frame_compression()
    }

    /// Cuts every whole frame off the front of `buf` into `frames`.
    pub fn decode(&mut self, buf: &mut BytesMut, frames: &mut Vec<Bytes>) -> Result<(), CassandraCodecError> {
        loop {
            if let Some(compression) = self.state.segment_compression() {
                return self.segments.decode(buf, compression, frames);
            }
            // Before segments start, every frame may be part of the handshake.
            let Some(len) = framing::frame_len_max(buf, self.max_frame)? else { return Ok(()) };
            let frame = buf.split_to(len).freeze();
            self.state.observe(&frame)?;
            frames.push(frame);
        }
    }

    /// Appends `frames` to `out` as this connection expects them: raw before segments
    /// start, in segments after (the READY that starts them is itself written raw).
    pub fn encode(&mut self, frames: &[Bytes], out: &mut BytesMut) -> Result<(), CassandraCodecError> {
        let mut first_segmented = frames.len();
        for (i, frame) in frames.iter().enumerate() {
            if self.state.segments {
                first_segmented = i;
                break;
            }
            out.extend_from_slice(frame);
            self.state.observe(frame)?;
        }
        if let (Some(rest), Some(compression)) = (frames.get(first_segmented..), self.state.segment_compression()) {
            if !rest.is_empty() {
                let mut segmented = Vec::with_capacity(rest.iter().map(Bytes::len).sum::<usize>() + 16);
                encode_segments(rest.iter().map(|f| &f[..]), compression, &mut segmented)?;
                out.extend_from_slice(&segmented);
            }
        }
        Ok(())
    }
}
