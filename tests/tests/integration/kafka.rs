//! Kafka through the proxy: KafkaSinkSingle in front of Tansu (a Kafka-wire broker), driven
//! by confluent-kafka (librdkafka) and kafka-python.

use shotover_integration_tests::backends::{run_python, Tansu};
use shotover_integration_tests::*;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

fn kafka_topology(port: u16, chain: &str) -> String {
    format!("---\nsources:\n  - Kafka:\n      name: \"kafka\"\n      listen_addr: \"127.0.0.1:{port}\"\n      chain:\n{chain}")
}

fn kafka_sink(broker_port: u16) -> String {
    format!("        - KafkaSinkSingle:\n            destination_port: {broker_port}\n            connect_timeout_ms: 3000\n")
}

#[test]
fn kafka_clients_through_the_proxy_to_tansu() {
    let tansu = Tansu::start();
    let port = free_port();
    let chain = format!("        - QueryCounter:\n            name: \"kafka\"\n{}", kafka_sink(tansu.port));
    let shotover = Shotover::start(&kafka_topology(port, &chain), port);
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kafka_workload.py")).unwrap();
    let out = run_python(&script, &[&format!("127.0.0.1:{port}"), &port.to_string()]).expect_success();
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
        assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}\nproxy:\n{}", shotover.output());
    }
    assert!(out.contains(&format!("brokers=['127.0.0.1:{port}']")), "{out}");
    let metrics = shotover.metrics();
    assert_eq!(metric_value(&metrics, "failed_requests{chain=\"kafka\",transform=\"KafkaSinkSingle\"}"), 0.0);
    // QueryCounter names Kafka requests by api key.
    assert!(metric_value(&metrics, "query_count{name=\"kafka\",query=\"Produce\"}") >= 1.0, "{metrics}");
    assert!(metric_value(&metrics, "query_count{name=\"kafka\",query=\"Fetch\"}") >= 1.0, "{metrics}");

    // Bytes that are not Kafka framing (a negative length): the connection closes with a log
    // line, and the proxy keeps serving.
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0]).unwrap();
    assert_closed_by_peer(&mut raw, Duration::from_secs(5), "a connection that sent a negative length");
    assert!(shotover.wait_for_log("malformed request, closing the connection", Duration::from_secs(5)));
}

#[test]
fn query_type_filter_denies_kafka_produce() {
    let tansu = Tansu::start();
    let port = free_port();
    let chain = format!("        - QueryTypeFilter:\n            DenyList: [Write]\n{}", kafka_sink(tansu.port));
    let _shotover = Shotover::start(&kafka_topology(port, &chain), port);
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
print("metadata=%d" % len(proxied_admin.list_topics(timeout=30).topics))
errors = []
p = Producer({"bootstrap.servers": proxied, "acks": "all", "message.send.max.retries": 0, "message.timeout.ms": 10000})
p.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
p.flush(20)
print("produce_error=%s" % (errors[0].name() if errors and errors[0] else "none"))
"#;
    let out = run_python(script, &[&tansu.address(), &format!("127.0.0.1:{port}")]).expect_success();
    assert!(out.lines().any(|l| l.starts_with("metadata=") && l != "metadata=0"), "reads pass:\n{out}");
    assert!(out.contains("produce_error=POLICY_VIOLATION"), "produce is refused with the API's error code:\n{out}");
}
