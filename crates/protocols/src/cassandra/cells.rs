//! Typed cell values (the protocol's section 6) for the few types the proxy reads and writes
//! itself: the columns of `system.local`, `system.peers` and the schema tables.
//!
//! A cell is the raw `[bytes]` of a row (see [`super::result::Rows`]). Decoders return `None`
//! for bytes that are not a valid value of the type: a cell from the network is never
//! trusted to be the right length.

use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `inet`: 4 or 16 bytes.
pub fn inet(cell: &[u8]) -> Option<IpAddr> {
    match cell.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(cell).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(cell).ok()?))),
        _ => None,
    }
}

pub fn encode_inet(ip: IpAddr) -> Bytes {
    match ip {
        IpAddr::V4(ip) => Bytes::copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => Bytes::copy_from_slice(&ip.octets()),
    }
}

/// `int`: 4 bytes, big-endian.
pub fn int(cell: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(cell.try_into().ok()?))
}

pub fn encode_int(n: i32) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

/// `uuid` and `timeuuid`: 16 bytes.
pub fn uuid(cell: &[u8]) -> Option<[u8; 16]> {
    cell.try_into().ok()
}

/// `varchar`, `text` and `ascii`: UTF-8.
pub fn text(cell: &[u8]) -> Option<&str> {
    std::str::from_utf8(cell).ok()
}

/// Reads an `[int]` length (v3+ collections) and that many bytes.
fn element<'a>(cell: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = cell.split_first_chunk::<4>()?;
    let len = usize::try_from(i32::from_be_bytes(*len)).ok()?;
    let (value, rest) = (rest.get(..len)?, rest.get(len..)?);
    *cell = rest;
    Some(value)
}

/// The element count of a v3+ collection; refuses counts the cell cannot hold (each
/// element takes at least its 4-byte length).
fn count(cell: &mut &[u8], per_element: usize) -> Option<usize> {
    let (n, rest) = cell.split_first_chunk::<4>()?;
    let n = usize::try_from(i32::from_be_bytes(*n)).ok()?;
    if n.checked_mul(per_element)? > rest.len() {
        return None;
    }
    *cell = rest;
    Some(n)
}

/// `set<text>` or `list<text>` (protocol v3+ layout).
pub fn text_set(mut cell: &[u8]) -> Option<Vec<String>> {
    let n = count(&mut cell, 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(text(element(&mut cell)?)?.to_string());
    }
    cell.is_empty().then_some(out)
}

/// A `set<text>` (or `list<text>`) cell, protocol v3+ layout.
pub fn encode_text_set<S: AsRef<str>>(items: &[S]) -> Bytes {
    let mut out = Vec::with_capacity(4 + items.iter().map(|s| 4 + s.as_ref().len()).sum::<usize>());
    out.extend_from_slice(&(items.len() as i32).to_be_bytes());
    for item in items {
        out.extend_from_slice(&(item.as_ref().len() as i32).to_be_bytes());
        out.extend_from_slice(item.as_ref().as_bytes());
    }
    Bytes::from(out)
}

/// `map<text, text>` (protocol v3+ layout).
pub fn text_map(mut cell: &[u8]) -> Option<Vec<(String, String)>> {
    let n = count(&mut cell, 8)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let key = text(element(&mut cell)?)?.to_string();
        let value = text(element(&mut cell)?)?.to_string();
        out.push((key, value));
    }
    cell.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_sets_round_trip_and_bad_lengths_are_refused() {
        let cell = encode_text_set(&["-3", "42"]);
        assert_eq!(text_set(&cell), Some(vec!["-3".to_string(), "42".to_string()]));
        assert_eq!(text_set(&encode_text_set::<&str>(&[])), Some(vec![]));
        // A count larger than the bytes, a length past the end, a negative length, trailing bytes.
        assert_eq!(text_set(&[0, 0, 0, 9, 0, 0, 0, 0]), None);
        assert_eq!(text_set(&[0, 0, 0, 1, 0, 0, 0, 5, b'a']), None);
        assert_eq!(text_set(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(text_set(&[0, 0, 0, 0, 1]), None);
    }

    #[test]
    fn maps_inets_ints_and_uuids() {
        let mut cell = vec![0, 0, 0, 1];
        for s in ["class", "SimpleStrategy"] {
            cell.extend_from_slice(&(s.len() as i32).to_be_bytes());
            cell.extend_from_slice(s.as_bytes());
        }
        assert_eq!(text_map(&cell), Some(vec![("class".into(), "SimpleStrategy".into())]));
        assert_eq!(text_map(&cell[..cell.len() - 1]), None);
        assert_eq!(inet(&[127, 0, 0, 2]), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(inet(&[1, 2, 3]), None);
        assert_eq!(inet(&encode_inet("::1".parse().unwrap())), Some("::1".parse().unwrap()));
        assert_eq!(int(&encode_int(9042)), Some(9042));
        assert_eq!(int(&[0, 1]), None);
        assert_eq!(uuid(&[7; 16]), Some([7; 16]));
        assert_eq!(uuid(&[7; 15]), None);
    }
}
