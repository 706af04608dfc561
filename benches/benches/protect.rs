//! CPU cost of Protect per protected value: encrypting 100 bytes (ChaCha20-Poly1305 with a
//! fresh nonce, laid out for storage) and decrypting it with the DEK already unwrapped; and
//! reading the CQL statement that carries it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shotover::transforms::protect::crypto::Keys;
use shotover_protocols::cassandra::statement;

fn protect(c: &mut Criterion) {
    let mut keys = Keys::local(&[7; 32], "kek-1").unwrap();
    let value = [0x5au8; 100];
    c.bench_function("protect/encrypt_100_bytes", |b| b.iter(|| keys.protect(black_box(&value)).unwrap()));
    let stored = keys.protect(&value).unwrap();
    keys.unprotect(&stored).unwrap(); // the DEK is unwrapped once, then cached
    c.bench_function("protect/decrypt_100_bytes", |b| b.iter(|| keys.unprotect(black_box(&stored)).unwrap()));
    let cql = "INSERT INTO test_protect_keyspace.test_table (pk, cluster, col1, col2, col3) \
               VALUES ('pk1', 'cluster', 'I am gonna get encrypted!!', 42, true)";
    c.bench_function("protect/parse_insert", |b| b.iter(|| statement::parse(black_box(cql)).unwrap()));
}

criterion_group!(benches, protect);
criterion_main!(benches);
