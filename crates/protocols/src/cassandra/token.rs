//! Where a partition lives: its routing key and its Murmur3 token, as Cassandra's
//! `Murmur3Partitioner` computes them.
//!
//! - The routing key of a single-column partition key is that column's value. For a
//!   composite key, each component is written as a `[short]` length, the bytes, and a 0.
//! - The token is the first 64 bits of Cassandra's MurmurHash3 x64/128 of the key (which
//!   treats tail bytes as signed, unlike the reference hash; `cassandra-protocol` has it),
//!   with `i64::MIN` moved to `i64::MAX`: the minimum is reserved for the ring's start.

use cassandra_protocol::token::Murmur3Token;

/// The token of a routing key.
pub fn token(routing_key: &[u8]) -> i64 {
    match Murmur3Token::generate(routing_key).value {
        i64::MIN => i64::MAX,
        t => t,
    }
}

/// The routing key of a partition key whose components are `components`, in key order.
/// `None` when a component is too long for a composite key's `[short]` length.
pub fn routing_key(components: &[&[u8]]) -> Option<Vec<u8>> {
    match components {
        [single] => Some(single.to_vec()),
        _ => {
            let mut key = Vec::with_capacity(components.iter().map(|c| c.len() + 3).sum());
            for c in components {
                key.extend_from_slice(&u16::try_from(c.len()).ok()?.to_be_bytes());
                key.extend_from_slice(c);
                key.push(0);
            }
            Some(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_cassandra() {
        // Values from `SELECT token(k)` on Cassandra: an int key 1, a text key 'local'.
        assert_eq!(token(&1i32.to_be_bytes()), -4069959284402364209);
        assert_eq!(token(b"local"), -7564491331177403445);
    }

    #[test]
    fn composite_keys_are_length_prefixed_and_terminated() {
        assert_eq!(routing_key(&[b"ab", b"c"]).unwrap(), vec![0, 2, b'a', b'b', 0, 0, 1, b'c', 0]);
        assert_eq!(routing_key(&[b"ab"]).unwrap(), b"ab".to_vec());
        assert!(routing_key(&[&vec![0; 70_000], b"c"]).is_none());
    }
}
