//! Per-connection codec state: the protocol version, the negotiated compression, and whether
//! v5 segments are on.
//!
//! The handshake decides all three:
//! ```text
//! client: OPTIONS (any version, unframed)   server: SUPPORTED (unframed)
//! client: STARTUP {COMPRESSION: lz4}         -> on_startup: version, compression
//! server: READY or AUTHENTICATE (unframed)   -> on_ready: v5 turns segments on
//! ...everything after is framed in v5; in v3/v4 bodies may carry the compression flag
//! ```
//! Feed every frame of the handshake to [`CassandraCodecState::observe`]; it only reads the
//! header of frames it has no use for.

use super::compression::Compression;
use super::header::{self, RESPONSE_BIT};
use super::request::Startup;
use super::wire::Reader;
use super::{CassandraCodecError, Opcode, Result, Version};
use bytes::Bytes;

/// What one connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CassandraCodecState {
    /// The version of the last STARTUP; `None` before it.
    pub version: Option<Version>,
    /// The STARTUP's `COMPRESSION` option: frame bodies in v3/v4, segments in v5.
    pub compression: Compression,
    /// True once a v5 STARTUP has been answered: from then on frames travel in segments.
    pub segments: bool,
}

impl CassandraCodecState {
    pub fn new() -> Self {
        CassandraCodecState::default()
    }

    /// Records a client's STARTUP frame: its version and `COMPRESSION` option. Segments stay
    /// off until [`CassandraCodecState::on_ready`]. A STARTUP is never compressed.
    pub fn on_startup(&mut self, frame: &[u8]) -> Result<()> {
        let h = header::FrameHeader::parse(frame)?;
        if h.opcode != Opcode::Startup || h.response {
            return Err(CassandraCodecError::UnexpectedOpcode { opcode: h.opcode, response: h.response });
        }
        let body = frame
            .get(header::HEADER_LEN..header::HEADER_LEN + h.body_len as usize)
            .ok_or(CassandraCodecError::Truncated("frame body"))?;
        let body = Bytes::copy_from_slice(body);
        let startup = Startup::parse(&mut Reader::new(&body))?;
        let compression = Compression::from_startup_option(startup.get("COMPRESSION"))?;
        if h.version >= Version::V5 && compression == Compression::Snappy {
            return Err(CassandraCodecError::UnsupportedCompression("snappy in protocol v5".into()));
        }
        *self = CassandraCodecState { version: Some(h.version), compression, segments: false };
        Ok(())
    }

    /// Records the server's READY or AUTHENTICATE to the STARTUP: in v5, segments start now
    /// (for the frames after this one).
    pub fn on_ready(&mut self) {
        self.segments = self.version.is_some_and(|v| v >= Version::V5);
    }

    /// Looks at one frame of the handshake, in either direction, and calls
    /// [`CassandraCodecState::on_startup`] or [`CassandraCodecState::on_ready`] as it fits.
    pub fn observe(&mut self, frame: &[u8]) -> Result<()> {
        let response = frame.first().is_some_and(|v| v & RESPONSE_BIT != 0);
        match (header::opcode(frame)?, response) {
            (Opcode::Startup, false) => self.on_startup(frame),
            (Opcode::Ready | Opcode::Authenticate, true) if self.version.is_some() && !self.segments => {
                self.on_ready();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The compression of v3/v4 frame bodies (none in v5, where segments compress).
    pub fn frame_compression(&self) -> Compression {
        match self.version {
            Some(v) if v >= Version::V5 => Compression::None,
            _ => self.compression,
        }
    }

    /// The compression of segments, when they are on.
    pub fn segment_compression(&self) -> Option<Compression> {
        self.segments.then_some(self.compression)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::captures::*;

    #[test]
    fn handshake_v5_1() {
        let mut state = CassandraCodecState::new();
        state.observe(&hex("050000000500000000")).unwrap();
        assert_eq!(state, CassandraCodecState::default());
        state.observe(&hex(STARTUP_V5_LZ4)).unwrap();
        assert_eq!(
            state,
            CassandraCodecState { version: Some(Version::V5), compression: Compression::Lz4, segments: false }
        );
        assert_eq!(state.segment_compression(), None);
        state.observe(&hex("850000010200000000")).unwrap();
        assert!(state.segments);
        assert_eq!(state.segment_compression(), Some(Compression::Lz4));
        assert_eq!(state.frame_compression(), Compression::None);
    }

    #[test]
    fn handshake_v4_1() {
        let mut state = CassandraCodecState::new();
        state.observe(&hex(STARTUP_V4_LZ4)).unwrap();
        // AUTHENTICATE answers the STARTUP too.
        let class = b"org.apache.cassandra.auth.PasswordAuthenticator";
        let mut authenticate = vec![0x84, 0, 0, 1, 0x03, 0, 0, 0, 2 + class.len() as u8, 0, class.len() as u8];
        authenticate.extend_from_slice(class);
        state.observe(&authenticate).unwrap();
        assert_eq!(
            state,
            CassandraCodecState { version: Some(Version::V4), compression: Compression::Lz4, segments: false }
        );
        assert_eq!(state.frame_compression(), Compression::Lz4);
    }

    #[test]
    fn handshake_v3_1() {
        let mut state = CassandraCodecState::new();
        state.on_startup(&hex(STARTUP_V3)).unwrap();
        state.on_ready();
        assert_eq!(
            state,
            CassandraCodecState { version: Some(Version::V3), compression: Compression::None, segments: false }
        );
        assert!(state.on_startup(&hex(QUERY_V3_1)).is_err());
        assert!(state.on_startup(&hex(STARTUP_V3)[..20]).is_err());
    }
}
