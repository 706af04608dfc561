//! What ValkeyCache asks Valkey, and whether Valkey can be asked.
//!
//! A partition is a Valkey hash (see [`super::key`]): one field per cached request, plus
//! the field `~gen`, the partition's generation. An entry (a cached table) has a
//! generation key of its own. A generation is a random token, never a counter: a counter
//! starts again from 1 when Valkey evicts it or comes back from an older snapshot, and
//! would bring back fields it had voided. Each read or partition operation is one Lua
//! script, so that it is atomic:
//! - [`lookup`]: the request's field, if it was stored under the table's current
//!   generation; otherwise the two generations, read before Cassandra is asked;
//! - [`fill`]: stores Cassandra's answer only if neither generation moved meanwhile, so
//!   that a read that raced a write never stores the old rows after the write's
//!   invalidation;
//! - [`invalidate`]: deletes the partition's fields and gives it a new generation;
//! - [`invalidate_table`]: gives the table a new generation (a `SET`), which voids every
//!   field stored under the old one.

use crate::message::{Message, Protocol};
use bytes::Bytes;
use shotover_protocols::valkey::ValkeyFrame as BytesFrame;
use std::cell::Cell;
use std::time::{Duration, Instant};

const LOOKUP: &str = "local t = redis.call('GET', KEYS[2]) or ''
local r = redis.call('HMGET', KEYS[1], ARGV[1], '~gen')
local v = r[1]
if v then
  local at = string.find(v, ':', 1, true)
  if at and string.sub(v, 1, at - 1) == t then return {1, string.sub(v, at + 1)} end
end
return {0, r[2] or '', t}";

const FILL: &str = "if (redis.call('HGET', KEYS[1], '~gen') or '') == ARGV[2]
  and (redis.call('GET', KEYS[2]) or '') == ARGV[3] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':' .. ARGV[4])
  return 1
end
return 0";

const INVALIDATE: &str = "redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '~gen', ARGV[1])
return 1";

/// How long the cache is left alone after a failure before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn command(parts: &[&[u8]]) -> Message {
    Message::from_bytes(shotover_protocols::valkey::command::encode(parts), Protocol::Valkey, Instant::now())
}

pub(super) fn lookup(partition: &[u8], table: &[u8], field: &[u8]) -> Message {
    command(&[b"EVAL", LOOKUP.as_bytes(), b"2", partition, table, field])
}

pub(super) fn fill(partition: &[u8], table: &[u8], field: &[u8], gens: &Generations, frame: &[u8]) -> Message {
    command(&[b"EVAL", FILL.as_bytes(), b"2", partition, table, field, &gens.partition, &gens.table, frame])
}

pub(super) fn invalidate(partition: &[u8]) -> Message {
    command(&[b"EVAL", INVALIDATE.as_bytes(), b"1", partition, &token()])
}

pub(super) fn invalidate_table(table: &[u8]) -> Message {
    command(&[b"SET", table, &token()])
}

/// A new generation: 16 random bytes in hex (no `:`, which separates a field's generation
/// from its frame).
fn token() -> Vec<u8> {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    chacha20poly1305::aead::OsRng.fill_bytes(&mut bytes);
    bytes.iter().flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]).collect()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The generations a lookup that missed read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Generations {
    partition: Bytes,
    table: Bytes,
}

/// What a lookup found.
#[derive(Debug, PartialEq)]
pub(super) enum Found {
    /// The cached response frame.
    Hit(Bytes),
    Miss(Generations),
}

/// Reads a lookup's reply (borrowing its elements: nothing is copied but the two `Bytes`
/// handles); `Err` says what was wrong with it.
pub(super) fn found(reply: &mut Message) -> Result<Found, String> {
    succeeded(reply)?;
    let items = match reply.frame() {
        Ok(crate::message::Frame::Valkey(BytesFrame::Array { data, .. })) => data,
        Ok(crate::message::Frame::Valkey(BytesFrame::Null)) => return Err("a nil reply".into()),
        Ok(other) => return Err(format!("an unexpected reply: {other:?}")),
        Err(e) => return Err(e.to_string()),
    };
    match items.as_slice() {
        [BytesFrame::Number { data: 1, .. }, frame] => Ok(Found::Hit(bulk(frame)?)),
        [BytesFrame::Number { data: 0, .. }, partition, table] => {
            Ok(Found::Miss(Generations { partition: bulk(partition)?, table: bulk(table)? }))
        }
        other => Err(format!("an unexpected reply: {other:?}")),
    }
}

/// Whether a reply is a success (not an error, nor something unparsable).
pub(super) fn succeeded(reply: &mut Message) -> Result<(), String> {
    match reply.frame() {
        Ok(crate::message::Frame::Valkey(BytesFrame::SimpleError { data, .. })) => Err(data.to_string()),
        Ok(crate::message::Frame::Valkey(BytesFrame::BlobError { data, .. })) => {
            Err(String::from_utf8_lossy(data).into_owned())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn bulk(frame: &BytesFrame) -> Result<Bytes, String> {
    match frame {
        BytesFrame::BlobString { data, .. } => Ok(data.clone()),
        other => Err(format!("an unexpected reply: {other:?}")),
    }
}

/// Whether this core may use the cache: after a failure it is left alone for
/// [`RETRY_AFTER`], and one WARN is logged per outage.
#[derive(Default)]
pub(super) struct Health {
    retry_at: Cell<Option<Instant>>,
    down: Cell<bool>,
}

impl Health {
    pub(super) fn usable(&self) -> bool {
        self.retry_at.get().is_none_or(|at| Instant::now() >= at)
    }

    pub(super) fn failed(&self, why: &str) {
        if !self.down.replace(true) {
            tracing::warn!(
                "ValkeyCache: the cache failed ({why}); requests are served by Cassandra alone until it is back"
            );
        }
        self.retry_at.set(Some(Instant::now() + RETRY_AFTER));
    }

    pub(super) fn worked(&self) {
        self.retry_at.set(None);
        if self.down.replace(false) {
            tracing::info!("ValkeyCache: the cache is back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(raw: &'static [u8]) -> Message {
        Message::from_bytes(Bytes::from_static(raw), Protocol::Valkey, Instant::now())
    }

    #[test]
    fn lookup_replies_are_read() {
        assert_eq!(found(&mut reply(b"*2\r\n:1\r\n$3\r\nabc\r\n")), Ok(Found::Hit(Bytes::from_static(b"abc"))));
        let miss = Generations { partition: Bytes::new(), table: Bytes::from_static(b"3") };
        assert_eq!(found(&mut reply(b"*3\r\n:0\r\n$0\r\n\r\n$1\r\n3\r\n")), Ok(Found::Miss(miss)));
        assert!(found(&mut reply(b"-ERR no\r\n")).unwrap_err().contains("no"));
        assert!(found(&mut reply(b"*1\r\n:1\r\n")).is_err());
        assert!(found(&mut reply(b"$-1\r\n")).is_err());
    }

    #[test]
    fn generations_are_random_tokens() {
        let (a, b) = (token(), token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.iter().all(u8::is_ascii_hexdigit));
    }
}
