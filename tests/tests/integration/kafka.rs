//! KafkaSinkSingle in front of a real Apache Kafka 4 cluster, laid out as the user guide
//! describes: one Shotover per broker, all on one port, each in front of the broker of its
//! own address (the shared cluster's broker ID is on 127.0.0.ID). Driven by confluent-kafka
//! (librdkafka) and kafka-python.

use shotover_integration_tests::backends::run_python;
use shotover_integration_tests::kafka_cluster::{shared_kafka, KafkaBroker, KafkaCluster};
use shotover_integration_tests::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

fn kafka_topology(listen: &str, chain: &str) -> String {
    format!("---\nsources:\n  - Kafka:\n      name: \"kafka\"\n      listen_addr: \"{listen}\"\n      chain:\n{chain}")
}

fn kafka_sink(broker_port: u16) -> String {
    format!("        - KafkaSinkSingle:\n            destination_port: {broker_port}\n            connect_timeout_ms: 3000\n")
}

/// One Shotover per broker, each on `<broker's host>:port` with `chain` (its KafkaSinkSingle
/// pointing at the listener `listener` picks).
fn one_per_broker(kafka: &KafkaCluster, port: u16, listener: fn(&KafkaBroker) -> u16, chain: &str) -> Vec<Shotover> {
    kafka
        .brokers
        .iter()
        .map(|b| {
            let listen = b.address(port);
            let chain = format!("{chain}{}", kafka_sink(listener(b)));
            let address: SocketAddr = listen.parse().expect("a broker address");
            Shotover::builder(&kafka_topology(&listen, &chain))
                .wait_for_address(address)
                .start()
                .expect("shotover did not start")
        })
        .collect()
}

fn outputs(proxies: &[Shotover]) -> String {
    proxies.iter().map(Shotover::output).collect::<Vec<_>>().join("\n----\n")
}

/// Fault injection (issue 16) for KafkaSinkSingle, laid out as the guide says (one Shotover
/// per broker, on the broker's address): a fault proxy between each Shotover and its broker,
/// on the broker's address too, under a producing load (confluent-kafka, acks=all): delays
/// on every broker, a 2 s stall of broker 2, cuts mid-answer of every connection, then broker
/// 3's connections silent until `read_timeout` (3 s) ends them. Every acknowledged record is
/// read back, and a fresh load afterwards is all acknowledged and read.
#[test]
fn delays_stalls_cuts_and_silence_lose_nothing_acknowledged() {
    use crate::kafka_cluster::{every_acknowledged_record_was_read, every_record_sent_was_acknowledged, start_load};
    use shotover_integration_tests::fault_proxy::{delays_stall_cuts_then_silence, FaultProxy};
    let kafka = shared_kafka();
    // A port free on every broker's address, for the fault proxies.
    let free_everywhere = |p: u16| kafka.brokers.iter().all(|b| std::net::TcpListener::bind(b.address(p)).is_ok());
    let fault_port = std::iter::repeat_with(free_port).find(|p| free_everywhere(*p)).expect("a free port");
    let faults: Vec<FaultProxy> = (kafka.brokers.iter())
        .map(|b| {
            let listen = b.address(fault_port).parse().expect("an address");
            FaultProxy::start_on(listen, b.address(b.plaintext).parse().expect("an address"))
        })
        .collect();
    let port = free_port();
    let sink = format!("        - KafkaSinkSingle:\n            destination_port: {fault_port}\n            connect_timeout_ms: 3000\n            read_timeout: 3\n");
    let proxies: Vec<Shotover> = (kafka.brokers.iter())
        .map(|b| {
            let listen = b.address(port);
            let address: SocketAddr = listen.parse().expect("a broker address");
            Shotover::builder(&kafka_topology(&listen, &sink)).wait_for_address(address).start().expect("shotover")
        })
        .collect();
    let (load, _marker) = start_load(&kafka, port, 24);
    delays_stall_cuts_then_silence(&faults, Duration::from_secs(2), 1, Duration::from_secs(2), Some(2));
    std::thread::sleep(Duration::from_secs(4));
    faults[0].restart(Duration::from_secs(3));
    let out = load.join().expect("the load thread");
    eprintln!("under faults: {}", out.lines().filter(|l| l.contains('=')).collect::<Vec<_>>().join("; "));
    every_record_sent_was_acknowledged(&out, &proxies[0]);
    every_acknowledged_record_was_read(&out, &proxies[0]);
    assert!(faults.iter().all(|f| f.accepted() > 1), "every broker was reached through its fault proxy");
    let timed_out = |p: &Shotover| p.wait_for_log("within the read_timeout of 3s", Duration::from_secs(1));
    assert!(timed_out(&proxies[2]), "broker 3's silent requests timed out:\n{}", outputs(&proxies));
    let (load, _marker) = start_load(&kafka, port, 5);
    every_acknowledged_record_was_read(&load.join().expect("the load thread"), &proxies[0]);
}

#[test]
fn kafka_clients_through_one_shotover_per_broker() {
    let kafka = shared_kafka();
    let port = free_port();
    // The guide's Tee example: a copy of every batch goes to a sub-chain that ends in
    // NullSink, whose answers Tee drops.
    let counter = "        - QueryCounter:\n            name: \"kafka\"\n        - Tee:\n            behavior: Ignore\n            chain:\n              - QueryCounter:\n                  name: \"teed\"\n              - NullSink\n";
    let proxies = one_per_broker(&kafka, port, |b| b.plaintext, counter);
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kafka_workload.py")).unwrap();
    // Three partitions of three replicas: each broker leads one, so each proxy carries some.
    let out = run_python(&script, &[&format!("127.0.0.1:{port}"), &port.to_string(), "3", "3"]).expect_success();
    for line in [
        "brokers_at_proxy=True",
        "acks_0_errors=0 left=0",
        "acks_1_errors=0 left=0",
        "acks_all_errors=0 left=0",
        "consumed=300",
        "committed_offset=300",
        "kafka_python_brokers_at_proxy=True",
        "kafka_python_consumed=310",
        "done",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}\nproxies:\n{}", outputs(&proxies));
    }
    let brokers = format!("brokers=['127.0.0.1:{port}', '127.0.0.2:{port}', '127.0.0.3:{port}']");
    assert!(out.lines().any(|l| l == brokers), "{out}");
    for proxy in &proxies {
        let metrics = proxy.metrics();
        assert_eq!(metric_value(&metrics, "failed_requests{chain=\"kafka\",transform=\"KafkaSinkSingle\"}"), 0.0);
        // QueryCounter names Kafka requests by api key; every proxy leads a partition.
        assert!(metric_value(&metrics, "query_count{name=\"kafka\",query=\"Produce\"}") >= 1.0, "{metrics}");
        assert!(metric_value(&metrics, "query_count{name=\"kafka\",query=\"Fetch\"}") >= 1.0, "{metrics}");
        // The sub-chain saw requests and NullSink answered them without failing.
        assert!(metric_value(&metrics, "query_count{name=\"teed\",query=\"Produce\"}") >= 1.0, "{metrics}");
        assert_eq!(metric_value(&metrics, "shotover_chain_failures_count{chain=\"tee_chain\"}"), 0.0, "{metrics}");
        let sent = "shotover_source_to_sink_latency_seconds_count{sink=\"KafkaSinkSingle\"}";
        assert!(metric_value(&metrics, sent) >= 1.0, "{metrics}");
    }

    // Bytes that are not Kafka framing (a negative length): the connection closes with a log
    // line, and the proxy keeps serving.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0]).unwrap();
    assert_closed_by_peer(&mut raw, Duration::from_secs(5), "a connection that sent a negative length");
    assert!(proxies[0].wait_for_log("malformed request, closing the connection", Duration::from_secs(5)));
}

#[test]
fn query_type_filter_denies_kafka_produce() {
    let kafka = shared_kafka();
    let port = free_port();
    let filter = "        - QueryTypeFilter:\n            DenyList: [Write]\n";
    let _proxies = one_per_broker(&kafka, port, |b| b.plaintext, filter);
    let script = r#"
import sys, uuid
from confluent_kafka import Producer, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic
direct, proxied = sys.argv[1], sys.argv[2]
topic = "deny-" + uuid.uuid4().hex[:6]
admin = AdminClient({"bootstrap.servers": direct})
for f in admin.create_topics([NewTopic(topic, 1, 1)]).values():
    f.result(30)
proxied_admin = AdminClient({"bootstrap.servers": proxied})
# A new topic reaches every broker's metadata a moment after it is created.
import time
deadline = time.time() + 30
while True:
    topics = proxied_admin.list_topics(timeout=30).topics
    if topic in topics or time.time() > deadline:
        break
    time.sleep(0.2)
print("metadata=%d" % len(topics))
print("topic_listed=%s" % (topic in topics))
errors = []
p = Producer({"bootstrap.servers": proxied, "acks": "all", "message.send.max.retries": 0, "message.timeout.ms": 10000})
p.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
p.flush(20)
print("produce_error=%s" % (errors[0].name() if errors and errors[0] else "none"))
"#;
    let out = run_python(script, &[&kafka.bootstrap(), &format!("127.0.0.1:{port}")]).expect_success();
    assert!(out.lines().any(|l| l.starts_with("metadata=") && l != "metadata=0"), "reads pass:\n{out}");
    assert!(out.lines().any(|l| l == "topic_listed=True"), "the new topic is read through the filter:\n{out}");
    assert!(out.contains("produce_error=POLICY_VIOLATION"), "produce is refused with the API's error code:\n{out}");
}

/// SASL goes through KafkaSinkSingle untouched (each client connection has a broker
/// connection of its own): SCRAM and PLAIN log in, the broker's ACLs hold, and a wrong
/// password is refused by the broker.
#[test]
fn sasl_logins_pass_through_kafka_sink_single() {
    let kafka = shared_kafka();
    let port = free_port();
    let proxies = one_per_broker(&kafka, port, |b| b.sasl, "");
    let script = r#"
import sys, time, uuid
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
proxied = sys.argv[1]

def login(mechanism, user, password):
    return {"bootstrap.servers": proxied, "broker.address.family": "v4", "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password}

admin_login = login("SCRAM-SHA-512", "admin", "admin-secret")
topic = "sasl-" + uuid.uuid4().hex[:6]
admin = AdminClient(admin_login)
for f in admin.create_topics([NewTopic(topic, 3, 3)]).values():
    f.result(30)
time.sleep(1)
p = Producer(dict(admin_login, **{"acks": "all"}))
errors = []
for i in range(30):
    p.produce(topic, b"%d" % i, partition=i % 3, on_delivery=lambda err, msg: errors.append(err) if err else None)
print("scram512_produce_errors=%d left=%d" % (len(errors), p.flush(30)))
c = Consumer(dict(login("SCRAM-SHA-256", "admin", "admin-secret"),
                  **{"group.id": "g-" + uuid.uuid4().hex[:6], "auto.offset.reset": "earliest"}))
c.subscribe([topic])
got = 0
deadline = time.time() + 60
while got < 30 and time.time() < deadline:
    m = c.poll(0.5)
    if m is not None and not m.error():
        got += 1
c.close()
print("scram256_consumed=%d" % got)
# user1 has no ACLs: logged in, but the topic is not theirs.
topics = AdminClient(login("PLAIN", "user1", "user1-secret")).list_topics(timeout=30).topics
print("user1_sees_topic=%s" % (topic in topics))
outcome = []
p = Producer(dict(login("PLAIN", "user1", "user1-secret"), **{"message.timeout.ms": 10000}))
p.produce(topic, b"no", partition=0, on_delivery=lambda err, msg: outcome.append(err.name() if err else "delivered"))
p.flush(20)
print("user1_produce=%s" % outcome)
failures = []
wrong = AdminClient(dict(login("SCRAM-SHA-256", "admin", "wrong"), **{"error_cb": lambda e: failures.append(e.code())}))
try:
    wrong.list_topics(timeout=5)
    print("wrong_password=accepted")
except Exception:
    wrong.poll(1)
    print("wrong_password=refused authentication_failure=%s" % (KafkaError._AUTHENTICATION in failures))
print("done")
"#;
    let out = run_python(script, &[&format!("127.0.0.1:{port}")]).expect_success();
    for line in [
        "scram512_produce_errors=0 left=0",
        "scram256_consumed=30",
        "user1_sees_topic=False",
        "user1_produce=['TOPIC_AUTHORIZATION_FAILED']",
        "wrong_password=refused authentication_failure=True",
        "done",
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}\nproxies:\n{}", outputs(&proxies));
    }
}
