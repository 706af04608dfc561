//! What a Valkey request is, read straight from its bytes.
//!
//! [`RequestView`] finds the command name and argument count of a request without building
//! a frame, so per-message work such as counting and filtering stays cheap.
//! [`classify`] sorts commands into the query types that QueryTypeFilter filters on.

use super::framing::parse_len;
pub use super::special::Special;

/// The kinds of query a filter can allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryType {
    /// Reads data, or changes only connection state (PING, AUTH, SELECT, MULTI, ...).
    Read,
    /// Changes data without returning what was there.
    Write,
    /// Reads and changes data in one command (INCR, GETDEL, LPOP, ...).
    ReadWrite,
    /// Changes what the keyspace is rather than a value (FLUSHALL, FUNCTION LOAD, ...).
    SchemaChange,
    /// Publishes or subscribes.
    PubSubMessage,
}

/// The command name and argument count of one request message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestView<'a> {
    /// The command name as sent (any case).
    pub name: &'a [u8],
    /// Number of arguments after the name.
    pub argc: usize,
    /// What the name says about the command's effect on its connection, read once here.
    pub special: Special,
}

impl<'a> RequestView<'a> {
    /// Reads a whole request message; `None` if it is not a command (empty, or not an array
    /// of bulk strings).
    pub fn new(raw: &'a [u8]) -> Option<Self> {
        if raw.first() == Some(&b'*') {
            let (count, rest) = line(raw.get(1..)?)?;
            let count = usize::try_from(parse_len(count).ok()?).ok()?;
            let rest = rest.strip_prefix(b"$")?;
            let (len, rest) = line(rest)?;
            let len = usize::try_from(parse_len(len).ok()?).ok()?;
            let name = rest.get(..len)?;
            Some(RequestView { name, argc: count.checked_sub(1)?, special: Special::of(name) })
        } else {
            let mut words = raw.split(|c| c.is_ascii_whitespace()).filter(|w| !w.is_empty());
            let name = words.next()?;
            Some(RequestView { name, argc: words.count(), special: Special::of(name) })
        }
    }

    /// The name upper-cased into `buf`, or `None` when longer than `buf`.
    pub fn upper<'b>(&self, buf: &'b mut [u8; 32]) -> Option<&'b [u8]> {
        let out = buf.get_mut(..self.name.len())?;
        out.copy_from_slice(self.name);
        out.make_ascii_uppercase();
        Some(out)
    }

    /// True when the command name equals `upper` (given in upper case), ignoring case.
    pub fn is(&self, upper: &str) -> bool {
        self.name.eq_ignore_ascii_case(upper.as_bytes())
    }
}

fn line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(b'\r', buf)?;
    Some((buf.get(..end)?, buf.get(end + 2..)?))
}

/// As [`line`], for the short length lines of RESP (`*3`, `$5`): a plain scan, which for a
/// few bytes costs less than memchr's setup.
fn short_line(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().take(24).position(|&c| c == b'\r')?;
    Some((buf.get(..end)?, buf.get(end + 2..)?))
}

/// Encodes a command as clients send it: a RESP array of bulk strings.
pub fn encode(parts: &[&[u8]]) -> bytes::Bytes {
    use bytes::BufMut;
    let mut out = bytes::BytesMut::with_capacity(16 + parts.iter().map(|p| p.len() + 16).sum::<usize>());
    out.put_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.put_slice(format!("${}\r\n", part.len()).as_bytes());
        out.put_slice(part);
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

/// True when `raw` is exactly one command as clients send it: an array (`*N`) of N bulk
/// strings and nothing else. Such a request gets exactly one reply, which is what lets the
/// proxy share a connection between clients; inline commands and other RESP values (which a
/// server may answer with several replies) are not.
pub fn is_command_array(raw: &[u8]) -> bool {
    let Some(rest) = raw.strip_prefix(b"*") else { return false };
    let Some((count, mut rest)) = line(rest) else { return false };
    let Some(count) = parse_len(count).ok().and_then(|c| usize::try_from(c).ok()) else { return false };
    if count == 0 {
        return false;
    }
    for _ in 0..count {
        let Some(item) = rest.strip_prefix(b"$") else { return false };
        let Some((len, after)) = line(item) else { return false };
        let Some(len) = parse_len(len).ok().and_then(|l| usize::try_from(l).ok()) else { return false };
        if after.get(len..len.saturating_add(2)) != Some(b"\r\n".as_slice()) {
            return false;
        }
        rest = after.get(len + 2..).unwrap_or_default();
    }
    rest.is_empty()
}

/// The leading string elements of an array (`*`) or push (`>`) message, or the words of an
/// inline request; stops at the first element that is not a bulk or simple string.
/// Allocates: for the rare messages whose contents matter to the proxy.
pub fn array_strings(raw: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    match raw.first() {
        Some(b'*' | b'>') => {
            let Some((_, mut rest)) = line(raw) else {
                return out;
            };
            loop {
                match rest.first() {
                    Some(b'$') => {
                        let Some((len, r)) = line(&rest[1..]) else {
                            break;
                        };
                        let Some(len) = parse_len(len).ok().and_then(|l| usize::try_from(l).ok()) else {
                            break;
                        };
                        let Some(item) = r.get(..len) else { break };
                        out.push(item);
                        rest = r.get(len + 2..).unwrap_or_default();
                    }
                    Some(b'+') => {
                        let Some((item, r)) = line(&rest[1..]) else {
                            break;
                        };
                        out.push(item);
                        rest = r;
                    }
                    _ => break,
                }
            }
        }
        Some(_) => out.extend(raw.split(|c| c.is_ascii_whitespace()).filter(|w| !w.is_empty())),
        None => {}
    }
    out
}

/// Element `n` of a request (0 is its name), as [`array_strings`] would give it, without
/// allocating for an array (an inline request, rare, is split as there).
pub fn request_word(raw: &[u8], n: usize) -> Option<&[u8]> {
    if raw.first() != Some(&b'*') {
        return array_strings(raw).get(n).copied();
    }
    let (_, mut rest) = line(raw)?;
    for i in 0..=n {
        let (item, after) = match rest.first() {
            Some(b'$') => {
                let (len, r) = line(rest.get(1..)?)?;
                let len = usize::try_from(parse_len(len).ok()?).ok()?;
                (r.get(..len)?, r.get(len.checked_add(2)?..).unwrap_or_default())
            }
            Some(b'+') => line(rest.get(1..)?)?,
            _ => return None,
        };
        if i == n {
            return Some(item);
        }
        rest = after;
    }
    None
}

/// The first elements of a request (its name, then its first arguments) into `out`, read in
/// one pass without allocating: how many were found (fewer when the request has fewer, or
/// is not an array). Routing needs only these for most commands.
pub fn leading_words<'a>(raw: &'a [u8], out: &mut [&'a [u8]]) -> usize {
    if raw.first() != Some(&b'*') {
        let words = array_strings(raw);
        let n = words.len().min(out.len());
        for (slot, word) in out.iter_mut().zip(words) {
            *slot = word;
        }
        return n;
    }
    let Some((_, rest)) = short_line(raw) else { return 0 };
    bulk_words(rest, out)
}

/// The strings at the start of `rest` (the elements of a request after its header, or after
/// some of its elements) into `out`, as [`leading_words`] reads them: how many were found.
pub fn bulk_words<'a>(mut rest: &'a [u8], out: &mut [&'a [u8]]) -> usize {
    let mut found = 0;
    for slot in out.iter_mut() {
        let (item, after) = match rest.split_first() {
            Some((b'$', len_line)) => {
                let Some((len, r)) = short_line(len_line) else { break };
                let Some(len) = parse_len(len).ok().and_then(|l| usize::try_from(l).ok()) else { break };
                let Some(item) = r.get(..len) else { break };
                (item, r.get(len + 2..).unwrap_or_default())
            }
            // A simple string, as `request_word` reads it.
            Some((b'+', r)) => {
                let Some(parts) = line(r) else { break };
                parts
            }
            _ => break,
        };
        *slot = item;
        found += 1;
        rest = after;
    }
    found
}

/// The arguments of a request (its name excluded); see [`array_strings`].
pub fn request_args(raw: &[u8]) -> Vec<&[u8]> {
    let mut args = array_strings(raw);
    if !args.is_empty() {
        args.remove(0);
    }
    args
}

/// True for commands that may wait for long before the server answers them (see
/// [`Special::Blocking`]).
pub fn may_block(view: &RequestView<'_>) -> bool {
    view.special == Special::Blocking
}

/// Classifies an upper-cased command name. Unknown commands are [`QueryType::Write`], the
/// conservative choice: a deny list of writes also stops commands the proxy cannot name.
pub fn classify(upper: &[u8]) -> QueryType {
    known_class(upper).unwrap_or(QueryType::Write)
}

/// True for the command names [`classify`] knows.
pub fn is_known(upper: &[u8]) -> bool {
    known_class(upper).is_some()
}

fn known_class(upper: &[u8]) -> Option<QueryType> {
    use QueryType::*;
    Some(match upper {
        // Reads of data.
        b"GET"
        | b"MGET"
        | b"GETRANGE"
        | b"SUBSTR"
        | b"STRLEN"
        | b"EXISTS"
        | b"TYPE"
        | b"TTL"
        | b"PTTL"
        | b"EXPIRETIME"
        | b"PEXPIRETIME"
        | b"KEYS"
        | b"SCAN"
        | b"RANDOMKEY"
        | b"DBSIZE"
        | b"DUMP"
        | b"OBJECT"
        | b"LCS"
        | b"GETBIT"
        | b"BITCOUNT"
        | b"BITPOS"
        | b"BITFIELD_RO"
        | b"HGET"
        | b"HMGET"
        | b"HGETALL"
        | b"HKEYS"
        | b"HVALS"
        | b"HLEN"
        | b"HEXISTS"
        | b"HSTRLEN"
        | b"HSCAN"
        | b"HRANDFIELD"
        | b"LRANGE"
        | b"LLEN"
        | b"LINDEX"
        | b"LPOS"
        | b"SMEMBERS"
        | b"SISMEMBER"
        | b"SMISMEMBER"
        | b"SCARD"
        | b"SRANDMEMBER"
        | b"SSCAN"
        | b"SINTER"
        | b"SINTERCARD"
        | b"SUNION"
        | b"SDIFF"
        | b"ZRANGE"
        | b"ZRANGEBYSCORE"
        | b"ZREVRANGEBYSCORE"
        | b"ZRANGEBYLEX"
        | b"ZREVRANGEBYLEX"
        | b"ZREVRANGE"
        | b"ZRANK"
        | b"ZREVRANK"
        | b"ZSCORE"
        | b"ZMSCORE"
        | b"ZCARD"
        | b"ZCOUNT"
        | b"ZLEXCOUNT"
        | b"ZSCAN"
        | b"ZRANDMEMBER"
        | b"ZINTER"
        | b"ZUNION"
        | b"ZDIFF"
        | b"ZINTERCARD"
        | b"PFCOUNT"
        | b"GEOPOS"
        | b"GEODIST"
        | b"GEOHASH"
        | b"GEORADIUS_RO"
        | b"GEORADIUSBYMEMBER_RO"
        | b"GEOSEARCH"
        | b"XRANGE"
        | b"XREVRANGE"
        | b"XLEN"
        | b"XREAD"
        | b"XINFO"
        | b"XPENDING"
        | b"TOUCH"
        | b"EVAL_RO"
        | b"EVALSHA_RO"
        | b"FCALL_RO"
        | b"SORT_RO" => Read,
        // Connection, server-information and transaction control: they change no data.
        // (Server administration such as CONFIG, ACL or SHUTDOWN is deliberately absent, so
        // it counts as a write and an allow list of reads stops it.)
        b"PING" | b"ECHO" | b"AUTH" | b"HELLO" | b"SELECT" | b"QUIT" | b"RESET" | b"CLIENT" | b"COMMAND" | b"INFO"
        | b"TIME" | b"LASTSAVE" | b"ROLE" | b"LOLWUT" | b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH"
        | b"READONLY" | b"READWRITE" | b"WAIT" | b"WAITAOF" => Read,
        // Writes that return no previous value.
        b"SET" | b"SETNX" | b"SETEX" | b"PSETEX" | b"MSET" | b"MSETNX" | b"APPEND" | b"DEL" | b"UNLINK" | b"EXPIRE"
        | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" | b"PERSIST" | b"RENAME" | b"RENAMENX" | b"RESTORE" | b"COPY"
        | b"MOVE" | b"SETRANGE" | b"SETBIT" | b"HSET" | b"HSETNX" | b"HMSET" | b"HDEL" | b"LPUSH" | b"RPUSH"
        | b"LPUSHX" | b"RPUSHX" | b"LINSERT" | b"LSET" | b"LREM" | b"LTRIM" | b"SADD" | b"SREM" | b"SINTERSTORE"
        | b"SUNIONSTORE" | b"SDIFFSTORE" | b"ZADD" | b"ZREM" | b"ZREMRANGEBYSCORE" | b"ZREMRANGEBYRANK"
        | b"ZREMRANGEBYLEX" | b"ZINTERSTORE" | b"ZUNIONSTORE" | b"ZDIFFSTORE" | b"ZRANGESTORE" | b"PFADD"
        | b"PFMERGE" | b"GEOADD" | b"GEOSEARCHSTORE" | b"XADD" | b"XDEL" | b"XTRIM" | b"XACK" | b"XGROUP"
        | b"XSETID" | b"BITOP" => Write,
        // Reads and writes at once.
        b"GETSET" | b"GETDEL" | b"GETEX" | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY" | b"INCRBYFLOAT" | b"HINCRBY"
        | b"HINCRBYFLOAT" | b"ZINCRBY" | b"LPOP" | b"RPOP" | b"BLPOP" | b"BRPOP" | b"LMPOP" | b"BLMPOP"
        | b"RPOPLPUSH" | b"BRPOPLPUSH" | b"LMOVE" | b"BLMOVE" | b"SPOP" | b"SMOVE" | b"ZPOPMIN" | b"ZPOPMAX"
        | b"BZPOPMIN" | b"BZPOPMAX" | b"ZMPOP" | b"BZMPOP" | b"BITFIELD" | b"SORT" | b"XREADGROUP" | b"XCLAIM"
        | b"XAUTOCLAIM" | b"EVAL" | b"EVALSHA" | b"FCALL" | b"GEORADIUS" | b"GEORADIUSBYMEMBER" => ReadWrite,
        // The shape of the keyspace, scripts and functions.
        b"FLUSHALL" | b"FLUSHDB" | b"SWAPDB" | b"FUNCTION" | b"SCRIPT" | b"MODULE" => SchemaChange,
        b"PUBLISH" | b"SPUBLISH" | b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
        | b"SUNSUBSCRIBE" | b"PUBSUB" => PubSubMessage,
        _ => return None,
    })
}

/// The cluster slot of a key: CRC16 of the key, or of its `{hash tag}` when it has one (the
/// bytes between its first `{` and the first `}` after it, if any are between).
///
/// One slot per routed request: redis-protocol's `redis_keyslot` (the tests' reference) walks
/// the key a byte at a time, 3.5 % of a worker routing GETs; `crc`'s slice-by-16 table takes
/// sixteen bytes a step.
pub fn key_slot(key: &[u8]) -> u16 {
    const XMODEM: crc::Crc<u16, crc::Table<16>> = crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_XMODEM);
    let tag = memchr::memchr(b'{', key).and_then(|open| {
        let after = key.get(open + 1..)?;
        let close = memchr::memchr(b'}', after)?;
        after.get(..close).filter(|tag| !tag.is_empty())
    });
    XMODEM.checksum(tag.unwrap_or(key)) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_are_valkeys() {
        // Valkey's own answers (`CLUSTER KEYSLOT`), then redis-protocol's on awkward keys.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"key:__rand_int__"), 13782);
        let keys: [&[u8]; 12] = [
            b"",
            b"{",
            b"}",
            b"{}",
            b"{}x",
            b"x{}",
            b"{a}",
            b"a{b}c{d}",
            b"a{{b}}",
            b"}{a}",
            b"{a",
            b"0123456789abcdefghijklmnopqrstuvwxyz{tag}",
        ];
        for key in keys {
            assert_eq!(key_slot(key), redis_protocol::redis_keyslot(key), "{:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn request_words_are_what_array_strings_gives() {
        for raw in [
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"[..],
            b"*2\r\n+GET\r\n$0\r\n\r\n",
            b"*2\r\n$3\r\nGET\r\n:1\r\n",
            b"*2\r\n$3\r\nGET\r\n$9\r\nshort\r\n",
            b"*1\r\n$3\r\nGE",
            b"GET  key  \r\n",
            b"",
        ] {
            let words = array_strings(raw);
            for n in 0..4 {
                assert_eq!(request_word(raw, n), words.get(n).copied(), "{:?} word {n}", String::from_utf8_lossy(raw));
            }
            let mut leading: [&[u8]; 2] = [b""; 2];
            let found = leading_words(raw, &mut leading);
            assert_eq!(&leading[..found], &words[..words.len().min(2)], "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn command_arrays_and_everything_else() {
        assert!(is_command_array(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n"));
        assert!(is_command_array(b"*1\r\n$0\r\n\r\n"));
        for not in [
            &b"GET a\r\n"[..],
            b"$3\r\nfoo\r\n",
            b"%1\r\n+a\r\n+b\r\n",
            b"*2\r\n$3\r\nGET\r\n:1\r\n",
            b"*1\r\n$3\r\nGET\r\n$1\r\na\r\n",
            b"*2\r\n$3\r\nGET\r\n",
            b"*0\r\n",
            b"*1\r\n$5\r\nGET\r\n",
        ] {
            assert!(!is_command_array(not), "{:?}", String::from_utf8_lossy(not));
        }
    }

    #[test]
    fn view_of_array_and_inline() {
        let v = RequestView::new(b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n").unwrap();
        assert_eq!((v.name, v.argc), (&b"set"[..], 2));
        assert!(v.is("SET"));
        let v = RequestView::new(b"PING\r\n").unwrap();
        assert_eq!((v.name, v.argc), (&b"PING"[..], 0));
        assert_eq!(RequestView::new(b"*0\r\n"), None);
        assert_eq!(RequestView::new(b"*1\r\n:1\r\n"), None);
    }

    #[test]
    fn args() {
        assert_eq!(request_args(b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$2\r\nbc\r\n"), vec![&b"a"[..], b"bc"]);
        assert_eq!(request_args(b"subscribe a b\r\n"), vec![&b"a"[..], b"b"]);
        assert_eq!(array_strings(b">3\r\n+message\r\n$1\r\nc\r\n:1\r\n"), vec![&b"message"[..], b"c"]);
        assert_eq!(array_strings(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"), vec![&b"unsubscribe"[..]]);
    }

    #[test]
    fn classification() {
        let mut buf = [0u8; 32];
        let name = RequestView::new(b"*1\r\n$4\r\nincr\r\n").unwrap();
        assert_eq!(classify(name.upper(&mut buf).unwrap()), QueryType::ReadWrite);
        assert_eq!(classify(b"GET"), QueryType::Read);
        assert_eq!(classify(b"SET"), QueryType::Write);
        assert_eq!(classify(b"FLUSHALL"), QueryType::SchemaChange);
        assert_eq!(classify(b"PUBLISH"), QueryType::PubSubMessage);
        assert_eq!(classify(b"NOSUCHCOMMAND"), QueryType::Write);
        assert_eq!(classify(b"CONFIG"), QueryType::Write);
        assert!(is_known(b"GET") && !is_known(b"NOSUCHCOMMAND"));
    }
}
