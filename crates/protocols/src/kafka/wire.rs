//! Bounds-checked reads of Kafka's primitive wire types from a byte slice.
//!
//! The cheap paths (header fields, correlation ids, `acks`) read a few fields with this
//! cursor instead of decoding a whole message. Every read checks its bounds and reports a
//! [`KafkaCodecError`], so no input can make it panic or allocate.

use super::KafkaCodecError;

/// A read position in one message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    /// Offset of the next unread byte.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], KafkaCodecError> {
        let end = self.pos.checked_add(len).ok_or(KafkaCodecError::Truncated(what))?;
        let out = self.buf.get(self.pos..end).ok_or(KafkaCodecError::Truncated(what))?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], KafkaCodecError> {
        let bytes = self.bytes(N, what)?;
        bytes.try_into().map_err(|_| KafkaCodecError::Truncated(what))
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, KafkaCodecError> {
        self.array(what).map(i16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, KafkaCodecError> {
        self.array(what).map(i32::from_be_bytes)
    }

    /// An unsigned LEB128 varint of at most 5 bytes (a `u32`).
    pub(crate) fn uvarint(&mut self, what: &'static str) -> Result<u32, KafkaCodecError> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let [b] = self.array::<1>(what)?;
            let bits = u32::from(b & 0x7f);
            if i == 4 && bits > 0x0f {
                return Err(KafkaCodecError::Malformed(what));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(KafkaCodecError::Malformed(what))
    }

    /// A `NULLABLE_STRING`: an `i16` length, -1 for null, then that many bytes.
    pub(crate) fn nullable_string(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, KafkaCodecError> {
        match self.i16(what)? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| KafkaCodecError::Malformed(what))?;
                self.bytes(len, what).map(Some)
            }
        }
    }

    /// A `COMPACT_NULLABLE_STRING`: a varint of length + 1, 0 for null, then the bytes.
    pub(crate) fn compact_nullable_string(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, KafkaCodecError> {
        match self.uvarint(what)? {
            0 => Ok(None),
            n => {
                let len = usize::try_from(n - 1).map_err(|_| KafkaCodecError::Malformed(what))?;
                self.bytes(len, what).map(Some)
            }
        }
    }

    /// Skips a `TAG_BUFFER`: a varint count of (tag, size, bytes) fields.
    pub(crate) fn skip_tagged_fields(&mut self, what: &'static str) -> Result<(), KafkaCodecError> {
        let count = self.uvarint(what)?;
        for _ in 0..count {
            self.uvarint(what)?;
            let size = self.uvarint(what)?;
            let size = usize::try_from(size).map_err(|_| KafkaCodecError::Malformed(what))?;
            self.bytes(size, what)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(Reader::new(&[0x00], 0).uvarint("v"), Ok(0));
        assert_eq!(Reader::new(&[0x7f], 0).uvarint("v"), Ok(127));
        assert_eq!(Reader::new(&[0x80, 0x01], 0).uvarint("v"), Ok(128));
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f], 0).uvarint("v"), Ok(u32::MAX));
        assert_eq!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x1f], 0).uvarint("v"), Err(KafkaCodecError::Malformed("v")));
        assert_eq!(Reader::new(&[0x80; 6], 0).uvarint("v"), Err(KafkaCodecError::Malformed("v")));
        assert_eq!(Reader::new(&[0x80], 0).uvarint("v"), Err(KafkaCodecError::Truncated("v")));
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(&[0xff, 0xff, 0x00, 0x02, b'h', b'i', 0x00, 0x03, b'a'], 0);
        assert_eq!(r.nullable_string("s"), Ok(None));
        assert_eq!(r.nullable_string("s"), Ok(Some(&b"hi"[..])));
        assert_eq!(r.nullable_string("s"), Err(KafkaCodecError::Truncated("s")));
        assert_eq!(Reader::new(&[0x80, 0x00], 0).nullable_string("s"), Err(KafkaCodecError::Malformed("s")));
        let mut r = Reader::new(&[0x00, 0x03, b'h', b'i', 0x05], 0);
        assert_eq!(r.compact_nullable_string("s"), Ok(None));
        assert_eq!(r.compact_nullable_string("s"), Ok(Some(&b"hi"[..])));
        assert_eq!(r.compact_nullable_string("s"), Err(KafkaCodecError::Truncated("s")));
    }

    #[test]
    fn tagged_fields() {
        let mut r = Reader::new(&[0x02, 0x00, 0x01, 0xaa, 0x05, 0x00, 0x42], 0);
        assert_eq!(r.skip_tagged_fields("t"), Ok(()));
        assert_eq!(r.pos(), 6);
        let mut r = Reader::new(&[0x01, 0x00, 0x09, 0xaa], 0);
        assert_eq!(r.skip_tagged_fields("t"), Err(KafkaCodecError::Truncated("t")));
    }
}
