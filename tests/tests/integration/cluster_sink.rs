//! ValkeySinkCluster in hiding mode: a client that knows nothing of clusters uses a 6-node
//! cluster through one proxy address.

use redis::{Commands, RedisResult, Value};
use shotover_integration_tests::*;

fn hiding_proxy() -> (ValkeyCluster, Shotover, u16) {
    let cluster = ValkeyCluster::start_on_one_ip(free_cluster_port_range());
    let port = free_port();
    let contacts: Vec<String> = cluster.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let chain = format!("        - ValkeySinkCluster:\n            first_contact_points: [{}]\n", contacts.join(", "));
    let shotover = Shotover::start(&valkey_topology(port, &chain), port);
    (cluster, shotover, port)
}

#[test]
fn cross_slot_multi_key_and_node_wide_commands() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let pairs: Vec<(String, String)> = (0..20).map(|i| (format!("key-{i}"), format!("value-{i}"))).collect();
    let _: () = c.mset(&pairs).unwrap();
    let keys: Vec<&String> = pairs.iter().map(|(k, _)| k).collect();
    let mut with_missing = keys.clone();
    let missing = "no-such-key".to_string();
    with_missing.insert(5, &missing);
    let values: Vec<Option<String>> = c.mget(&with_missing).unwrap();
    assert_eq!(values.len(), 21);
    assert_eq!(values[5], None);
    for (i, (_, v)) in pairs.iter().enumerate() {
        let at = if i < 5 { i } else { i + 1 };
        assert_eq!(values[at].as_deref(), Some(v.as_str()), "position {at}");
    }
    assert_eq!(redis::cmd("EXISTS").arg(&keys).query::<i64>(&mut c).unwrap(), 20);
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 20);
    let mut all: Vec<String> = redis::cmd("KEYS").arg("key-*").query(&mut c).unwrap();
    all.sort();
    assert_eq!(all.len(), 20);
    assert_eq!(c.del::<_, i64>(&keys[..10]).unwrap(), 10);
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 10);
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 0);
    // Not supported yet: a clear error, never a hang.
    let multi: RedisResult<Value> = redis::cmd("MULTI").query(&mut c);
    assert!(multi.unwrap_err().to_string().contains("not supported by ValkeySinkCluster"));
    assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
}

#[test]
fn pipeline_of_1000_mixed_slot_commands_keeps_order() {
    let (_cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("p{i}"), i).ignore();
        pipe.get(format!("p{i}"));
    }
    let values: Vec<i64> = pipe.query(&mut c).unwrap();
    assert_eq!(values, (0..500).collect::<Vec<_>>());
}

#[test]
fn moved_slots_are_followed() {
    let (cluster, _shotover, port) = hiding_proxy();
    let mut c = connect(port);
    let _: () = c.set("warm-up", 1).unwrap();
    // Give the (empty) slot of "moving" to another master, behind the proxy's back.
    let node = |addr: &str| {
        let (host, p) = addr.rsplit_once(':').unwrap();
        redis::Client::open(format!("redis://{host}:{p}/")).unwrap().get_connection().unwrap()
    };
    let mut first = node(&cluster.nodes[0]);
    let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg("moving").query(&mut first).unwrap();
    let slots: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut first).unwrap();
    let Value::Array(ranges) = slots else { panic!() };
    let mut owner = None;
    let mut other = None;
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Value::Int(start), Value::Int(end), Value::Array(master)) = (&fields[0], &fields[1], &fields[2]) else {
            continue;
        };
        let id = match &master[2] {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            _ => continue,
        };
        let Value::Int(p) = master[1] else { continue };
        if (*start..=*end).contains(&slot) {
            owner = Some((id, p));
        } else if other.is_none() {
            other = Some((id, p));
        }
    }
    let ((_, owner_port), (target_id, target_port)) = (owner.unwrap(), other.unwrap());
    let mut target = node(&format!("127.0.0.1:{target_port}"));
    let _: () = redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&target_id).query(&mut target).unwrap();
    let mut old = node(&format!("127.0.0.1:{owner_port}"));
    let _: () = redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&target_id).query(&mut old).unwrap();
    // The proxy still thinks the old owner has it: it gets MOVED and follows it.
    let _: () = c.set("moving", "there").unwrap();
    assert_eq!(c.get::<_, String>("moving").unwrap(), "there");
    assert_eq!(target.get::<_, String>("moving").unwrap(), "there");
}
