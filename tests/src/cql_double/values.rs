//! Cell values: CQL constants encoded for a column's type, checks on bound values, and the
//! encoders the system tables use. Cells are kept as the bytes of the native protocol, so a
//! bound value is stored as it came and compared byte for byte.

use super::cql::{CqlError, Literal};
use bytes::Bytes;
use shotover_protocols::cassandra::result::ColumnType;
use std::net::IpAddr;

pub(crate) type Cell = Option<Bytes>;

pub(crate) fn text(s: &str) -> Cell {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

pub(crate) fn int(v: i32) -> Cell {
    Some(Bytes::copy_from_slice(&v.to_be_bytes()))
}

pub(crate) fn bigint(v: i64) -> Cell {
    Some(Bytes::copy_from_slice(&v.to_be_bytes()))
}

pub(crate) fn double(v: f64) -> Cell {
    Some(Bytes::copy_from_slice(&v.to_be_bytes()))
}

pub(crate) fn boolean(v: bool) -> Cell {
    Some(Bytes::copy_from_slice(&[u8::from(v)]))
}

pub(crate) fn uuid(v: [u8; 16]) -> Cell {
    Some(Bytes::copy_from_slice(&v))
}

pub(crate) fn blob(v: &[u8]) -> Cell {
    Some(Bytes::copy_from_slice(v))
}

pub(crate) fn inet(ip: IpAddr) -> Cell {
    match ip {
        IpAddr::V4(v4) => Some(Bytes::copy_from_slice(&v4.octets())),
        IpAddr::V6(v6) => Some(Bytes::copy_from_slice(&v6.octets())),
    }
}

/// A list or set of cells: `[int n]` then each as `[bytes]`.
pub(crate) fn collection(items: &[Cell]) -> Cell {
    let mut out = Vec::new();
    out.extend_from_slice(&(items.len() as i32).to_be_bytes());
    for item in items {
        put_cell(&mut out, item);
    }
    Some(Bytes::from(out))
}

pub(crate) fn text_list(items: &[&str]) -> Cell {
    collection(&items.iter().map(|s| text(s)).collect::<Vec<_>>())
}

/// A map of cells: `[int n]` then key and value, each as `[bytes]`.
pub(crate) fn map(entries: &[(Cell, Cell)]) -> Cell {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as i32).to_be_bytes());
    for (k, v) in entries {
        put_cell(&mut out, k);
        put_cell(&mut out, v);
    }
    Some(Bytes::from(out))
}

pub(crate) fn text_map(entries: &[(&str, &str)]) -> Cell {
    map(&entries.iter().map(|(k, v)| (text(k), text(v))).collect::<Vec<_>>())
}

fn put_cell(out: &mut Vec<u8>, cell: &Cell) {
    match cell {
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_be_bytes());
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
}

/// The elements of a serialized list or set (a bound `IN ?` value). Every length is checked.
pub(crate) fn decode_collection(value: &[u8]) -> Result<Vec<Cell>, CqlError> {
    let bad = || CqlError::invalid("Invalid collection value: malformed list or set");
    let mut rest = value;
    let mut take = |n: usize| -> Result<&[u8], CqlError> {
        let (head, tail) = rest.split_at_checked(n).ok_or_else(bad)?;
        rest = tail;
        Ok(head)
    };
    let read_i32 = |b: &[u8]| -> Result<i32, CqlError> { Ok(i32::from_be_bytes(b.try_into().map_err(|_| bad())?)) };
    let n = read_i32(take(4)?)?;
    let mut items = Vec::new();
    for _ in 0..n.max(0) {
        let len = read_i32(take(4)?)?;
        if len < 0 {
            items.push(None);
        } else {
            items.push(Some(Bytes::copy_from_slice(take(len as usize)?)));
        }
    }
    Ok(items)
}

/// The type as CQL names it in error messages.
pub(crate) fn type_name(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Custom(c) => format!("'{c}'"),
        ColumnType::Ascii => "ascii".into(),
        ColumnType::Bigint => "bigint".into(),
        ColumnType::Blob => "blob".into(),
        ColumnType::Boolean => "boolean".into(),
        ColumnType::Counter => "counter".into(),
        ColumnType::Decimal => "decimal".into(),
        ColumnType::Double => "double".into(),
        ColumnType::Float => "float".into(),
        ColumnType::Int => "int".into(),
        ColumnType::Timestamp => "timestamp".into(),
        ColumnType::Uuid => "uuid".into(),
        ColumnType::Varchar => "text".into(),
        ColumnType::Varint => "varint".into(),
        ColumnType::Timeuuid => "timeuuid".into(),
        ColumnType::Inet => "inet".into(),
        ColumnType::Date => "date".into(),
        ColumnType::Time => "time".into(),
        ColumnType::Smallint => "smallint".into(),
        ColumnType::Tinyint => "tinyint".into(),
        ColumnType::Duration => "duration".into(),
        ColumnType::List(t) => format!("list<{}>", type_name(t)),
        ColumnType::Set(t) => format!("set<{}>", type_name(t)),
        ColumnType::Map(k, v) => format!("map<{}, {}>", type_name(k), type_name(v)),
        ColumnType::Udt { keyspace, name, .. } => format!("{keyspace}.{name}"),
        ColumnType::Tuple(types) => {
            format!("tuple<{}>", types.iter().map(type_name).collect::<Vec<_>>().join(", "))
        }
    }
}

fn mismatch(lit: &Literal, ty: &ColumnType, column: &str) -> CqlError {
    let shown = match lit {
        Literal::Str(s) | Literal::Number(s) => s.clone(),
        Literal::Bool(b) => b.to_string(),
        other => other.kind().to_lowercase(),
    };
    CqlError::invalid(format!("Invalid {} constant ({shown}) for \"{column}\" of type {}", lit.kind(), type_name(ty)))
}

/// Encodes a constant for a column of type `ty`; `None` is null.
pub(crate) fn encode_literal(lit: &Literal, ty: &ColumnType, column: &str) -> Result<Cell, CqlError> {
    let err = || mismatch(lit, ty, column);
    let int_of = |s: &str| -> Result<i128, CqlError> { s.parse::<i128>().map_err(|_| err()) };
    Ok(match (lit, ty) {
        (Literal::Null, _) => None,
        (Literal::Str(s), ColumnType::Varchar) => text(s),
        (Literal::Str(s), ColumnType::Ascii) if s.is_ascii() => text(s),
        (Literal::Number(n), ColumnType::Int) => int(i32::try_from(int_of(n)?).map_err(|_| err())?),
        (Literal::Number(n), ColumnType::Bigint | ColumnType::Counter) => {
            bigint(i64::try_from(int_of(n)?).map_err(|_| err())?)
        }
        (Literal::Number(n), ColumnType::Smallint) => {
            Some(Bytes::copy_from_slice(&i16::try_from(int_of(n)?).map_err(|_| err())?.to_be_bytes()))
        }
        (Literal::Number(n), ColumnType::Tinyint) => {
            Some(Bytes::copy_from_slice(&i8::try_from(int_of(n)?).map_err(|_| err())?.to_be_bytes()))
        }
        (Literal::Number(n), ColumnType::Varint) => Some(Bytes::from(varint(int_of(n)?))),
        (Literal::Number(n), ColumnType::Double) => double(n.parse::<f64>().map_err(|_| err())?),
        (Literal::Number(n), ColumnType::Float) => {
            Some(Bytes::copy_from_slice(&n.parse::<f32>().map_err(|_| err())?.to_be_bytes()))
        }
        (Literal::Bool(b), ColumnType::Boolean) => boolean(*b),
        (Literal::Uuid(u), ColumnType::Uuid | ColumnType::Timeuuid) => uuid(*u),
        (Literal::Blob(b), ColumnType::Blob) => blob(b),
        (Literal::Number(n), ColumnType::Timestamp) => bigint(i64::try_from(int_of(n)?).map_err(|_| err())?),
        (Literal::Str(s), ColumnType::Timestamp) => bigint(
            parse_timestamp(s)
                .ok_or_else(|| CqlError::invalid(format!("Unable to coerce '{s}' to a formatted date (long)")))?,
        ),
        (Literal::Str(s), ColumnType::Date) => {
            let days = parse_date(s).ok_or_else(|| CqlError::invalid(format!("Unable to coerce '{s}' to a date")))?;
            let raw = u32::try_from(days + (1i64 << 31)).map_err(|_| err())?;
            Some(Bytes::copy_from_slice(&raw.to_be_bytes()))
        }
        (Literal::Number(n), ColumnType::Date) => {
            Some(Bytes::copy_from_slice(&u32::try_from(int_of(n)?).map_err(|_| err())?.to_be_bytes()))
        }
        (Literal::Str(s), ColumnType::Time) => {
            bigint(parse_time(s).ok_or_else(|| CqlError::invalid(format!("Unable to coerce '{s}' to a time")))?)
        }
        (Literal::Number(n), ColumnType::Time) => bigint(i64::try_from(int_of(n)?).map_err(|_| err())?),
        (Literal::Str(s), ColumnType::Inet) => inet(
            s.parse::<IpAddr>().map_err(|_| CqlError::invalid(format!("Unable to make inet address from '{s}'")))?,
        ),
        (Literal::List(items), ColumnType::List(t)) | (Literal::Set(items), ColumnType::Set(t)) => {
            collection(&items.iter().map(|i| encode_element(i, t, column)).collect::<Result<Vec<_>, _>>()?)
        }
        (Literal::Map(entries), ColumnType::List(_) | ColumnType::Set(_)) if entries.is_empty() => collection(&[]),
        (Literal::Map(entries), ColumnType::Map(kt, vt)) => map(&entries
            .iter()
            .map(|(k, v)| Ok((encode_element(k, kt, column)?, encode_element(v, vt, column)?)))
            .collect::<Result<Vec<_>, CqlError>>()?),
        (_, ColumnType::Decimal | ColumnType::Duration | ColumnType::Udt { .. } | ColumnType::Tuple(_)) => {
            return Err(CqlError::unsupported(&format!("constants of type {}; bind a value instead", type_name(ty))))
        }
        _ => return Err(err()),
    })
}

fn encode_element(lit: &Literal, ty: &ColumnType, column: &str) -> Result<Cell, CqlError> {
    match encode_literal(lit, ty, column)? {
        None => Err(CqlError::invalid("null is not supported inside collections")),
        some => Ok(some),
    }
}

/// Two's complement, big-endian, as few bytes as hold the value.
fn varint(v: i128) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

/// Checks a bound value the way Cassandra does for fixed-size types (empty values are
/// allowed), and that text is UTF-8.
pub(crate) fn check_bound(value: &[u8], ty: &ColumnType, column: &str) -> Result<(), CqlError> {
    let fixed = match ty {
        ColumnType::Int | ColumnType::Float | ColumnType::Date => Some(4),
        ColumnType::Bigint | ColumnType::Counter | ColumnType::Double | ColumnType::Timestamp | ColumnType::Time => {
            Some(8)
        }
        ColumnType::Uuid | ColumnType::Timeuuid => Some(16),
        ColumnType::Boolean | ColumnType::Tinyint => Some(1),
        ColumnType::Smallint => Some(2),
        _ => None,
    };
    if let Some(n) = fixed {
        if !value.is_empty() && value.len() != n {
            return Err(CqlError::invalid(format!(
                "Expected {n} or 0 byte {} for \"{column}\" ({})",
                type_name(ty),
                value.len()
            )));
        }
    }
    match ty {
        ColumnType::Inet if !matches!(value.len(), 0 | 4 | 16) => {
            Err(CqlError::invalid(format!("Invalid inet address for \"{column}\" ({} bytes)", value.len())))
        }
        ColumnType::Varchar if std::str::from_utf8(value).is_err() => {
            Err(CqlError::invalid(format!("Invalid UTF-8 bytes for \"{column}\"")))
        }
        ColumnType::Ascii if !value.is_ascii() => {
            Err(CqlError::invalid(format!("Invalid byte for ascii for \"{column}\"")))
        }
        _ => Ok(()),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn number(s: &str, min: i64, max: i64) -> Option<i64> {
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok().filter(|n| (min..=max).contains(n))
}

/// `yyyy-mm-dd` as days since the epoch.
fn parse_date(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, '-');
    let y = number(parts.next()?, 0, 999_999)?;
    let m = number(parts.next()?, 1, 12)?;
    let d = number(parts.next()?, 1, 31)?;
    Some(days_from_civil(y, m, d))
}

/// `hh:mm[:ss[.fffffffff]]` as nanoseconds since midnight.
fn parse_time(s: &str) -> Option<i64> {
    let (hms, frac) = match s.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (s, None),
    };
    let mut parts = hms.split(':');
    let h = number(parts.next()?, 0, 23)?;
    let m = number(parts.next()?, 0, 59)?;
    let sec = match parts.next() {
        Some(p) => number(p, 0, 59)?,
        None => 0,
    };
    if parts.next().is_some() {
        return None;
    }
    let nanos = match frac {
        Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<i64>().ok()? * 10i64.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
        None => 0,
    };
    Some(((h * 60 + m) * 60 + sec) * 1_000_000_000 + nanos)
}

/// `yyyy-mm-dd[(T| )hh:mm[:ss[.fff]]][Z|(+|-)hh[:]mm]` as milliseconds since the epoch,
/// UTC unless a zone is given.
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = match s.find(['T', ' ']) {
        Some(i) => (s.get(..i)?, s.get(i + 1..)?),
        None => (s, ""),
    };
    if s.len() > date.len() && rest.is_empty() {
        return None;
    }
    let days = parse_date(date)?;
    let (time, offset_minutes) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let zone = rest.get(i + 1..)?.replace(':', "");
        let sign = if rest.get(i..i + 1)? == "-" { -1 } else { 1 };
        let hours = number(zone.get(..2)?, 0, 23)?;
        let minutes = if zone.len() > 2 { number(zone.get(2..)?, 0, 59)? } else { 0 };
        (rest.get(..i)?, sign * (hours * 60 + minutes))
    } else {
        (rest, 0)
    };
    let nanos = if time.is_empty() { 0 } else { parse_time(time)? };
    Some(days * 86_400_000 + nanos / 1_000_000 - offset_minutes * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(lit: Literal, ty: ColumnType) -> Result<Cell, CqlError> {
        encode_literal(&lit, &ty, "c")
    }

    #[test]
    fn literals() {
        assert_eq!(enc(Literal::Number("42".into()), ColumnType::Int).unwrap(), int(42));
        assert_eq!(enc(Literal::Number("-1".into()), ColumnType::Bigint).unwrap(), bigint(-1));
        assert!(enc(Literal::Number("3000000000".into()), ColumnType::Int).is_err());
        assert!(enc(Literal::Number("1.5".into()), ColumnType::Int).is_err());
        assert_eq!(enc(Literal::Number("1.5".into()), ColumnType::Double).unwrap(), double(1.5));
        assert_eq!(enc(Literal::Str("x".into()), ColumnType::Varchar).unwrap(), text("x"));
        let err = enc(Literal::Str("x".into()), ColumnType::Int).unwrap_err();
        assert_eq!(err.message, "Invalid STRING constant (x) for \"c\" of type int");
        assert_eq!(enc(Literal::Null, ColumnType::Int).unwrap(), None);
        assert_eq!(enc(Literal::Str("10.0.0.1".into()), ColumnType::Inet).unwrap(), blob(&[10, 0, 0, 1]));
        assert_eq!(enc(Literal::Number("128".into()), ColumnType::Varint).unwrap(), blob(&[0, 128]));
        assert_eq!(enc(Literal::Number("-129".into()), ColumnType::Varint).unwrap(), blob(&[0xff, 0x7f]));
        assert_eq!(enc(Literal::Number("0".into()), ColumnType::Varint).unwrap(), blob(&[0]));
        let list = Literal::List(vec![Literal::Number("1".into()), Literal::Number("2".into())]);
        assert_eq!(enc(list, ColumnType::List(Box::new(ColumnType::Int))).unwrap(), collection(&[int(1), int(2)]));
        let m = Literal::Map(vec![(Literal::Str("k".into()), Literal::Str("v".into()))]);
        let ty = ColumnType::Map(Box::new(ColumnType::Varchar), Box::new(ColumnType::Varchar));
        assert_eq!(enc(m, ty).unwrap(), text_map(&[("k", "v")]));
        assert_eq!(enc(Literal::Map(vec![]), ColumnType::Set(Box::new(ColumnType::Int))).unwrap(), collection(&[]));
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("2024-02-29 12:34:56.789"), Some(1_709_210_096_789));
        assert_eq!(parse_timestamp("2024-02-29T12:34:56Z"), Some(1_709_210_096_000));
        assert_eq!(parse_timestamp("2024-02-29T14:34:56+0200"), Some(1_709_210_096_000));
        assert_eq!(parse_timestamp("2024-02-29T10:34:56-02:00"), Some(1_709_210_096_000));
        assert_eq!(parse_timestamp("1969-12-31 23:59:59"), Some(-1000));
        for bad in ["", "2024-13-01", "2024-01-01 25:00", "x", "2024-01-01T", "99999999999-01-01", "2024-01-01 1:2:3:4"]
        {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(parse_time("01:00:00.5"), Some(3_600_500_000_000));
        let d = enc(Literal::Str("1970-01-02".into()), ColumnType::Date).unwrap().unwrap();
        assert_eq!(&d[..], &(0x8000_0001u32).to_be_bytes());
    }

    #[test]
    fn bound_values() {
        assert!(check_bound(&[0, 0, 0, 1], &ColumnType::Int, "k").is_ok());
        assert!(check_bound(&[], &ColumnType::Int, "k").is_ok());
        assert_eq!(
            check_bound(&[0, 1], &ColumnType::Int, "k").unwrap_err().message,
            "Expected 4 or 0 byte int for \"k\" (2)"
        );
        assert!(check_bound(&[0xc3, 0x28], &ColumnType::Varchar, "k").is_err());
        assert!(check_bound(&[1, 2, 3], &ColumnType::Inet, "k").is_err());
        assert_eq!(decode_collection(&collection(&[text("a"), None]).unwrap()).unwrap(), vec![text("a"), None]);
        for bad in [&[0, 0, 0][..], &[0, 0, 0, 1, 0, 0, 0, 9, 1], &[0, 0, 0, 2, 0, 0, 0, 0]] {
            assert!(decode_collection(bad).is_err());
        }
        // A huge count with nothing behind it stops at the first missing length.
        assert!(decode_collection(&[0x7f, 0xff, 0xff, 0xff]).is_err());
    }
}
