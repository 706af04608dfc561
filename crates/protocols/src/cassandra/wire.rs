//! The protocol's notations (section 3 of the spec): a bounds-checked reader over a body, and
//! writers for the same types.
//!
//! Every length read from the wire is checked against the bytes that are really left before
//! anything is sliced or allocated; counts are never used as capacities. Byte values are
//! zero-copy slices of the body ([`Bytes::slice`]).

use super::{CassandraCodecError, Consistency, Result};
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A `[value]`: bound variables in QUERY, EXECUTE and BATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Length -1.
    Null,
    /// Length -2 (v4+): leaves the column unchanged.
    NotSet,
    Bytes(Bytes),
}

/// Reads the notations from a body, front to back.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// Goes back to a position from [`Reader::position`].
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos;
    }

    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn slice(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(CassandraCodecError::Truncated(what))?;
        let s = self.buf.get(self.pos..end).ok_or(CassandraCodecError::Truncated(what))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let s = self.slice(N, what)?;
        s.try_into().map_err(|_| CassandraCodecError::Truncated(what))
    }

    /// `n` bytes, sharing the body's memory.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        let start = self.pos;
        self.slice(n, what)?;
        Ok(self.buf.slice(start..self.pos))
    }

    /// Everything left.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.buf.len());
        self.pos = self.buf.len();
        self.buf.slice(start..)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// An `[int]` that must not be negative: a count or a length.
    pub fn count(&mut self, what: &'static str) -> Result<usize> {
        let n = self.i32(what)?;
        usize::try_from(n).map_err(|_| CassandraCodecError::InvalidLength { what, len: i64::from(n) })
    }

    fn utf8(&mut self, n: usize, what: &'static str) -> Result<String> {
        let s = self.slice(n, what)?;
        std::str::from_utf8(s).map(str::to_owned).map_err(|_| CassandraCodecError::InvalidUtf8(what))
    }

    /// `[string]`: a `[short]` length and UTF-8.
    pub fn string(&mut self, what: &'static str) -> Result<String> {
        let n = self.u16(what)?;
        self.utf8(usize::from(n), what)
    }

    /// `[long string]`: an `[int]` length and UTF-8.
    pub fn long_string(&mut self, what: &'static str) -> Result<String> {
        let n = self.count(what)?;
        self.utf8(n, what)
    }

    /// `[string list]`.
    pub fn string_list(&mut self, what: &'static str) -> Result<Vec<String>> {
        let n = self.u16(what)?;
        (0..n).map(|_| self.string(what)).collect()
    }

    /// `[string map]`, in wire order.
    pub fn string_map(&mut self, what: &'static str) -> Result<Vec<(String, String)>> {
        let n = self.u16(what)?;
        (0..n).map(|_| Ok((self.string(what)?, self.string(what)?))).collect()
    }

    /// `[string multimap]`, in wire order.
    pub fn string_multimap(&mut self, what: &'static str) -> Result<Vec<(String, Vec<String>)>> {
        let n = self.u16(what)?;
        (0..n).map(|_| Ok((self.string(what)?, self.string_list(what)?))).collect()
    }

    /// `[bytes]`: `None` for a negative length (null).
    pub fn bytes(&mut self, what: &'static str) -> Result<Option<Bytes>> {
        let n = self.i32(what)?;
        match usize::try_from(n) {
            Ok(n) => Ok(Some(self.take(n, what)?)),
            Err(_) => Ok(None),
        }
    }

    /// `[short bytes]`.
    pub fn short_bytes(&mut self, what: &'static str) -> Result<Bytes> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    /// `[bytes map]`, in wire order.
    pub fn bytes_map(&mut self, what: &'static str) -> Result<Vec<(String, Option<Bytes>)>> {
        let n = self.u16(what)?;
        (0..n).map(|_| Ok((self.string(what)?, self.bytes(what)?))).collect()
    }

    /// `[value]`.
    pub fn value(&mut self, what: &'static str) -> Result<Value> {
        let n = self.i32(what)?;
        match n {
            -1 => Ok(Value::Null),
            -2 => Ok(Value::NotSet),
            n if n < 0 => Err(CassandraCodecError::InvalidLength { what, len: i64::from(n) }),
            n => Ok(Value::Bytes(self.take(n as usize, what)?)),
        }
    }

    /// `[uuid]`.
    pub fn uuid(&mut self, what: &'static str) -> Result<[u8; 16]> {
        self.array(what)
    }

    /// `[inet]`: address length (4 or 16), address, `[int]` port.
    pub fn inet(&mut self, what: &'static str) -> Result<SocketAddr> {
        let ip = match self.u8(what)? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?)),
            16 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?)),
            n => return Err(CassandraCodecError::InvalidLength { what, len: i64::from(n) }),
        };
        let port = self.i32(what)?;
        let port =
            u16::try_from(port).map_err(|_| CassandraCodecError::InvalidValue { what, value: i64::from(port) })?;
        Ok(SocketAddr::new(ip, port))
    }

    /// `[consistency]`.
    pub fn consistency(&mut self, what: &'static str) -> Result<Consistency> {
        let n = self.i16(what)?;
        Consistency::try_from(n).map_err(|_| CassandraCodecError::InvalidValue { what, value: i64::from(n) })
    }
}

fn short_len(len: usize, what: &'static str) -> Result<u16> {
    u16::try_from(len).map_err(|_| CassandraCodecError::TooLongToEncode { what, len })
}

fn int_len(len: usize, what: &'static str) -> Result<i32> {
    i32::try_from(len).map_err(|_| CassandraCodecError::TooLongToEncode { what, len })
}

pub(crate) fn put_u16(out: &mut Vec<u8>, n: u16) {
    out.extend_from_slice(&n.to_be_bytes());
}

pub(crate) fn put_i32(out: &mut Vec<u8>, n: i32) {
    out.extend_from_slice(&n.to_be_bytes());
}

pub(crate) fn put_i64(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(&n.to_be_bytes());
}

/// A count written as `[short]`.
pub(crate) fn put_short_count(out: &mut Vec<u8>, n: usize, what: &'static str) -> Result<()> {
    put_u16(out, short_len(n, what)?);
    Ok(())
}

/// A count written as `[int]`.
pub(crate) fn put_int_count(out: &mut Vec<u8>, n: usize, what: &'static str) -> Result<()> {
    put_i32(out, int_len(n, what)?);
    Ok(())
}

pub(crate) fn put_string(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<()> {
    put_u16(out, short_len(s.len(), what)?);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

pub(crate) fn put_long_string(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<()> {
    put_i32(out, int_len(s.len(), what)?);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

pub(crate) fn put_string_list(out: &mut Vec<u8>, list: &[String], what: &'static str) -> Result<()> {
    put_short_count(out, list.len(), what)?;
    list.iter().try_for_each(|s| put_string(out, s, what))
}

pub(crate) fn put_string_map(out: &mut Vec<u8>, map: &[(String, String)], what: &'static str) -> Result<()> {
    put_short_count(out, map.len(), what)?;
    map.iter().try_for_each(|(k, v)| {
        put_string(out, k, what)?;
        put_string(out, v, what)
    })
}

pub(crate) fn put_string_multimap(out: &mut Vec<u8>, map: &[(String, Vec<String>)], what: &'static str) -> Result<()> {
    put_short_count(out, map.len(), what)?;
    map.iter().try_for_each(|(k, v)| {
        put_string(out, k, what)?;
        put_string_list(out, v, what)
    })
}

/// `[bytes]`; `None` is written as null (-1).
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>, what: &'static str) -> Result<()> {
    match b {
        Some(b) => {
            put_i32(out, int_len(b.len(), what)?);
            out.extend_from_slice(b);
        }
        None => put_i32(out, -1),
    }
    Ok(())
}

pub(crate) fn put_short_bytes(out: &mut Vec<u8>, b: &[u8], what: &'static str) -> Result<()> {
    put_u16(out, short_len(b.len(), what)?);
    out.extend_from_slice(b);
    Ok(())
}

pub(crate) fn put_bytes_map(out: &mut Vec<u8>, map: &[(String, Option<Bytes>)], what: &'static str) -> Result<()> {
    put_short_count(out, map.len(), what)?;
    map.iter().try_for_each(|(k, v)| {
        put_string(out, k, what)?;
        put_bytes(out, v.as_deref(), what)
    })
}

pub(crate) fn put_value(out: &mut Vec<u8>, v: &Value, what: &'static str) -> Result<()> {
    match v {
        Value::Null => put_i32(out, -1),
        Value::NotSet => put_i32(out, -2),
        Value::Bytes(b) => put_bytes(out, Some(b), what)?,
    }
    Ok(())
}

pub(crate) fn put_inet(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(16);
            out.extend_from_slice(&ip.octets());
        }
    }
    put_i32(out, i32::from(addr.port()));
}

pub(crate) fn put_consistency(out: &mut Vec<u8>, c: Consistency) {
    out.extend_from_slice(&i16::from(c).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_past_the_end_are_errors() {
        let b = Bytes::from_static(&[0, 0, 0, 100, b'a']);
        assert_eq!(Reader::new(&b).long_string("q"), Err(CassandraCodecError::Truncated("q")));
        let b = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Reader::new(&b).long_string("q"), Err(CassandraCodecError::InvalidLength { what: "q", len: -1 }));
        assert_eq!(Reader::new(&b).bytes("b"), Ok(None));
        assert_eq!(Reader::new(&b).value("v"), Ok(Value::Null));
        let b = Bytes::from_static(&[0xff, 0xff, 0xff, 0xfd]);
        assert_eq!(Reader::new(&b).value("v"), Err(CassandraCodecError::InvalidLength { what: "v", len: -3 }));
        // A huge count of strings stops at the first missing one, allocating nothing up front.
        let b = Bytes::from_static(&[0xff, 0xff, 0, 1, b'x']);
        assert_eq!(Reader::new(&b).string_list("l"), Err(CassandraCodecError::Truncated("l")));
        let b = Bytes::from_static(&[0, 2, 0xc3, 0x28]);
        assert_eq!(Reader::new(&b).string("s"), Err(CassandraCodecError::InvalidUtf8("s")));
        let b = Bytes::from_static(&[5, 1, 2, 3, 4, 5]);
        assert!(Reader::new(&b).inet("i").is_err());
        let b = Bytes::from_static(&[0, 0x0b]);
        assert!(Reader::new(&b).consistency("c").is_err());
    }

    #[test]
    fn notations_round_trip() {
        let mut out = Vec::new();
        put_string(&mut out, "k", "s").unwrap();
        put_long_string(&mut out, "SELECT", "q").unwrap();
        put_string_map(&mut out, &[("a".into(), "b".into())], "m").unwrap();
        put_bytes(&mut out, None, "b").unwrap();
        put_value(&mut out, &Value::NotSet, "v").unwrap();
        put_inet(&mut out, &"[::1]:9042".parse().unwrap());
        put_consistency(&mut out, Consistency::LocalQuorum);
        put_short_bytes(&mut out, &[7; 3], "id").unwrap();
        let b = Bytes::from(out);
        let mut r = Reader::new(&b);
        assert_eq!(r.string("s").unwrap(), "k");
        assert_eq!(r.long_string("q").unwrap(), "SELECT");
        assert_eq!(r.string_map("m").unwrap(), vec![("a".to_string(), "b".to_string())]);
        assert_eq!(r.bytes("b").unwrap(), None);
        assert_eq!(r.value("v").unwrap(), Value::NotSet);
        assert_eq!(r.inet("i").unwrap(), "[::1]:9042".parse().unwrap());
        assert_eq!(r.consistency("c").unwrap(), Consistency::LocalQuorum);
        assert_eq!(&r.short_bytes("id").unwrap()[..], &[7; 3]);
        assert_eq!(r.remaining(), 0);
        assert!(put_string(&mut Vec::new(), &"x".repeat(70_000), "s").is_err());
    }
}
