//! CPU cost of ValkeySinkCluster's routing step for one request: its first words read in one
//! pass, its name upper-cased (as `route.rs` does it), its entry in Valkey's command table, its first key found where
//! the table says, and the key's slot. (The slot's master is then one index into the slot
//! map.) The table is Valkey 8.0.1's, as built into the proxy; a table read from a node is the
//! same structure.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shotover_protocols::valkey::command::{encode, key_slot, leading_words};
use shotover_protocols::valkey::commands::{first_key, CommandTable};

/// The routing step: the slot of the request's first key, if it has one.
fn route(table: &CommandTable, raw: &[u8]) -> Option<u16> {
    let mut words: [&[u8]; 3] = [b""; 3];
    let found = leading_words(raw, &mut words);
    let leading = words.get(..found)?;
    let name = leading.first()?;
    let mut buf = [0u8; 32];
    for (to, from) in buf.iter_mut().zip(*name) {
        *to = from.to_ascii_uppercase();
    }
    let upper = buf.get(..name.len())?;
    let info = table.lookup(upper, || leading.get(1).copied());
    first_key(info, upper, leading, raw).map(key_slot)
}

fn routing(c: &mut Criterion) {
    let table = CommandTable::builtin();
    let mut group = c.benchmark_group("valkey_routing");
    let cases: [(&str, Vec<&[u8]>); 5] = [
        ("GET key", vec![b"GET", b"key:000042"]),
        (
            "SET key value",
            vec![b"set", b"key:000042", b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"],
        ),
        (
            "EVALSHA sha 1 key (key count)",
            vec![b"EVALSHA", b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db", b"1", b"key:1"],
        ),
        ("XREAD COUNT 1 STREAMS s 0 (keyword)", vec![b"XREAD", b"COUNT", b"1", b"STREAMS", b"stream:1", b"0"]),
        ("CONFIG SET (subcommand, no key)", vec![b"CONFIG", b"SET", b"maxmemory-policy", b"allkeys-lfu"]),
    ];
    for (name, parts) in cases {
        let raw = encode(&parts);
        group.bench_function(name, |b| b.iter(|| black_box(route(table, black_box(&raw)))));
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
