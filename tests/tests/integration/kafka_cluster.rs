//! KafkaSinkCluster in front of a real Apache Kafka 4 cluster of three brokers (racks
//! rack1..rack3), driven by confluent-kafka (librdkafka), kafka-python and Kafka's own
//! Java tools.

use shotover_integration_tests::backends::run_python_with_timeout;
use shotover_integration_tests::kafka_cluster::{shared_kafka, KafkaBroker, KafkaCluster};
use shotover_integration_tests::*;
use std::path::Path;
use std::time::Duration;

/// One Shotover node of a Shotover cluster: its port, rack and broker id.
#[derive(Clone, Copy)]
struct Node {
    port: u16,
    rack: &'static str,
    id: i32,
}

/// `"host:port"` of every broker's listener `listener` picks, for `first_contact_points`.
fn contact(kafka: &KafkaCluster, listener: fn(&KafkaBroker) -> u16) -> String {
    kafka.brokers.iter().map(|b| format!("\"{}\"", b.address(listener(b)))).collect::<Vec<_>>().join(", ")
}

/// Shotover node `local` of `nodes`, in front of the brokers at `contact`; `extra` is more
/// of KafkaSinkCluster's fields.
fn topology_with(contact: &str, nodes: &[Node], local: usize, extra: &str) -> String {
    let shotover_nodes: String = nodes
        .iter()
        .map(|n| {
            format!(
                "              - address_for_client: \"127.0.0.1:{}\"\n                rack: \"{}\"\n                broker_id: {}\n",
                n.port, n.rack, n.id
            )
        })
        .collect();
    let me = nodes[local];
    format!(
        "---\nsources:\n  - Kafka:\n      name: \"kafka\"\n      listen_addr: \"127.0.0.1:{}\"\n      chain:\n        - KafkaSinkCluster:\n            first_contact_points: [{contact}]\n            shotover_nodes:\n{shotover_nodes}            local_shotover_broker_id: {}\n            connect_timeout_ms: 3000\n{extra}",
        me.port, me.id
    )
}

fn cluster_topology(kafka: &KafkaCluster, nodes: &[Node], local: usize, extra: &str) -> String {
    topology_with(&contact(kafka, |b| b.plaintext), nodes, local, extra)
}

/// One Shotover node in rack1, in front of the brokers' listener `listener` picks.
fn one_proxy_on(kafka: &KafkaCluster, listener: fn(&KafkaBroker) -> u16, extra: &str) -> (Shotover, u16) {
    let port = free_port();
    let nodes = [Node { port, rack: "rack1", id: 0 }];
    (Shotover::start(&topology_with(&contact(kafka, listener), &nodes, 0, extra), port), port)
}

fn one_proxy(kafka: &KafkaCluster, extra: &str) -> (Shotover, u16) {
    one_proxy_on(kafka, |b| b.plaintext, extra)
}

/// Three Shotover nodes, one per rack (ids 10, 11, 12), checking each other every 500 ms.
fn three_proxies(kafka: &KafkaCluster) -> (Vec<Shotover>, Vec<Node>) {
    let nodes: Vec<Node> = ["rack1", "rack2", "rack3"]
        .iter()
        .enumerate()
        .map(|(i, rack)| Node { port: free_port(), rack, id: 10 + i as i32 })
        .collect();
    let proxies = (0..3)
        .map(|i| {
            let topology = cluster_topology(kafka, &nodes, i, "            check_shotover_peers_delay_ms: 500\n");
            Shotover::start(&topology, nodes[i].port)
        })
        .collect();
    (proxies, nodes)
}

fn script() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("python/kafka_cluster.py")).unwrap()
}

fn run(mode: &str, proxy: &str, direct: &str, extra: &[&str]) -> String {
    let mut args = vec![mode, proxy, direct];
    args.extend_from_slice(extra);
    let out = run_python_with_timeout(&script(), &args, Duration::from_secs(240));
    assert!(out.success(), "kafka_cluster.py {mode} failed:\n{}\n{}", out.stdout, out.stderr);
    out.stdout
}

fn has(out: &str, line: &str) -> bool {
    out.lines().any(|l| l == line)
}

fn failed_requests(shotover: &Shotover) -> f64 {
    metric_value(&shotover.metrics(), "failed_requests{chain=\"kafka\",transform=\"KafkaSinkCluster\"}")
}

/// Starts `keep-going` for `seconds` through the proxy on `port`, and returns once it is
/// producing; the marker file `started` in the returned directory names its topic.
pub(crate) fn start_load(kafka: &KafkaCluster, port: u16, seconds: u32) -> (std::thread::JoinHandle<String>, TempDir) {
    let marker = TempDir::new("kafka-load");
    let started = marker.path("started");
    let proxy = format!("127.0.0.1:{port}");
    let (bootstrap, started_arg) = (kafka.bootstrap(), started.to_string_lossy().into_owned());
    let load = std::thread::spawn(move || run("keep-going", &proxy, &bootstrap, &[&seconds.to_string(), &started_arg]));
    assert!(wait_until(Duration::from_secs(60), || started.exists()), "the load never started");
    (load, marker)
}

/// `keep-going` had every record it sent acknowledged: librdkafka retried every request the
/// faults failed, as it does without the proxy (a broker restart fails none of its records
/// when the restart is shorter than `message.timeout.ms`).
pub(crate) fn every_record_sent_was_acknowledged(out: &str, shotover: &Shotover) {
    let line = out.lines().find(|l| l.starts_with("sent=")).unwrap_or_default();
    let sent = line.split(' ').next().unwrap_or_default().trim_start_matches("sent=");
    let expected = format!("sent={sent} acked={sent} left=0 produce_errors=0");
    assert!(!sent.is_empty() && line == expected, "{line}\n{out}\nproxy:\n{}", shotover.output());
}

/// `keep-going` acknowledged a good number of records, and read every one of them back.
pub(crate) fn every_acknowledged_record_was_read(out: &str, shotover: &Shotover) {
    let acked = out
        .lines()
        .find_map(|l| l.strip_prefix("sent=")?.split(' ').find_map(|w| w.strip_prefix("acked=")))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(acked > 100, "records were acknowledged:\n{out}");
    assert!(has(out, &format!("acked_and_read={acked}/{acked}")), "{out}\nproxy:\n{}", shotover.output());
}

/// One Shotover in front of three brokers: the clients see one broker, produce to every
/// partition in one request (the proxy splits it by leader) and consume with a group.
#[test]
fn clients_produce_and_consume_through_one_shotover() {
    let kafka = shared_kafka();
    let (shotover, port) = one_proxy(&kafka, "");
    let proxy = format!("127.0.0.1:{port}");
    let out = run("workload", &proxy, &kafka.bootstrap(), &[]);
    for line in [
        "produce_errors=0 left=0",
        "acks0_left=0",
        "consumed=660",
        "consumed_in_their_partition=True",
        "committed=660",
        "kafka_python_consumed=720",
        "direct_total=720",
        "direct_in_their_partition=True",
        "done",
    ] {
        assert!(has(&out, line), "missing {line}:\n{out}\nproxy:\n{}", shotover.output());
    }
    assert!(has(&out, &format!("kafka_python_brokers=['{proxy}']")), "{out}");
    assert_eq!(failed_requests(&shotover), 0.0);
    let sent = "shotover_source_to_sink_latency_seconds_count{sink=\"KafkaSinkCluster\"}";
    assert!(metric_value(&shotover.metrics(), sent) >= 1.0, "{}", shotover.metrics());
}

/// Three Shotover nodes, one per rack: each partition's leader is shown as the Shotover
/// node of the real leader's rack, and every node gives the same answer.
#[test]
fn three_shotovers_show_leaders_in_their_racks() {
    let kafka = shared_kafka();
    let (mut proxies, nodes) = three_proxies(&kafka);
    let bootstrap = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",");
    let out = run("metadata", &format!("127.0.0.1:{}", nodes[1].port), &kafka.bootstrap(), &[]);
    let expected: Vec<String> = nodes.iter().map(|n| format!("'{}@127.0.0.1:{}'", n.id, n.port)).collect();
    assert!(has(&out, &format!("brokers=[{}]", expected.join(", "))), "{out}");
    let mut partitions = 0;
    for line in out.lines().filter(|l| l.starts_with("partition=")) {
        let field = |name: &str| -> i32 {
            line.split(' ').find_map(|w| w.strip_prefix(name)).and_then(|v| v.parse().ok()).unwrap_or(-99)
        };
        let (real, shown) = (field("real_leader="), field("shown_leader="));
        // Broker N is in rackN, and so is Shotover node 10 + N - 1.
        assert_eq!(shown, 10 + real - 1, "{line}\n{out}");
        partitions += 1;
    }
    assert_eq!(partitions, 6, "{out}");
    // Clients bootstrapped from all three nodes produce and consume through them.
    let out = run("workload", &bootstrap, &kafka.bootstrap(), &[]);
    assert!(has(&out, "consumed=660") && has(&out, "direct_total=720"), "{out}");
    for p in &proxies {
        assert_eq!(failed_requests(p), 0.0, "{}", p.output());
    }
    // A node that stops is left out of the others' metadata.
    drop(proxies.pop());
    let two = format!("brokers=[{}]", expected[..2].join(", "));
    let mut out = String::new();
    let left_out = wait_until(Duration::from_secs(30), || {
        // Until the check finds it down, clients may fail on the stopped node.
        let args = ["metadata", &format!("127.0.0.1:{}", nodes[0].port), &kafka.bootstrap()];
        out = run_python_with_timeout(&script(), &args, Duration::from_secs(60)).stdout;
        has(&out, &two)
    });
    assert!(left_out, "{out}");
}

/// A consumer group of two that rebalances, and transactions read with read_committed.
#[test]
fn groups_rebalance_and_transactions_commit_through_the_proxy() {
    let kafka = shared_kafka();
    let (shotover, port) = one_proxy(&kafka, "");
    let out = run("groups", &format!("127.0.0.1:{port}"), &kafka.bootstrap(), &[]);
    for line in ["alone=[6]", "two=[3, 3]", "after_leave=[6]", "read_committed=11 aborted_seen=0", "done"] {
        assert!(has(&out, line), "missing {line}:\n{out}\nproxy:\n{}", shotover.output());
    }
    assert_eq!(failed_requests(&shotover), 0.0);
}

/// SASL PLAIN through the proxy: the login made on the first broker connection is replayed
/// on the others; a wrong password is refused; SCRAM looks disabled.
#[test]
fn sasl_plain_is_replayed_and_scram_looks_disabled() {
    let kafka = shared_kafka();
    let (shotover, port) = one_proxy_on(&kafka, |b| b.sasl, "");
    let out = run("sasl", &format!("127.0.0.1:{port}"), &kafka.bootstrap(), &["admin", "admin-secret"]);
    for line in [
        "plain_produce_errors=0 left=0",
        "plain_consumed=60",
        "wrong_password=refused authentication_failure=True",
        "scram=refused",
        "scram_error=True",
        "done",
    ] {
        assert!(has(&out, line), "missing {line}:\n{out}\nproxy:\n{}", shotover.output());
    }
}

/// A `tls:` block (indented by `indent`) with the cluster's CA and the mTLS client
/// certificate (the super user `User:CN=shotover-mtls`).
fn client_certificate(kafka: &KafkaCluster, indent: &str) -> String {
    let tls = kafka.path("tls");
    format!(
        "{indent}tls:\n{indent}  certificate_authority_path: \"{tls}/ca.crt\"\n{indent}  certificate_path: \"{tls}/mtls.crt\"\n{indent}  private_key_path: \"{tls}/mtls.key\"\n"
    )
}

/// `tls` to the brokers: the proxy reaches the brokers' TLS listener, which requires a
/// client certificate, and the clients (plain TCP to the proxy) produce and consume.
#[test]
fn tls_to_the_brokers_with_a_client_certificate() {
    let kafka = shared_kafka();
    let (shotover, port) = one_proxy_on(&kafka, |b| b.ssl, &client_certificate(&kafka, "            "));
    let out = run("workload", &format!("127.0.0.1:{port}"), &kafka.bootstrap(), &[]);
    for line in ["produce_errors=0 left=0", "consumed=660", "direct_total=720", "done"] {
        assert!(has(&out, line), "missing {line}:\n{out}\nproxy:\n{}", shotover.output());
    }
    assert_eq!(failed_requests(&shotover), 0.0, "{}", shotover.output());
}

/// SCRAM over mTLS: the client's SCRAM login (SHA-256 and SHA-512) is checked by one
/// broker, and its other broker connections log in with delegation tokens of the same user,
/// made over the mTLS port. The user's ACLs hold through the proxy; a wrong password gets
/// the broker's refusal and the connection closes; tokens are made anew once half their
/// lifetime has passed, and logins still work after the first ones expired.
#[test]
fn scram_over_mtls_logs_in_with_delegation_tokens() {
    let kafka = shared_kafka();
    let mtls = kafka.brokers[0].address(kafka.brokers[0].ssl);
    let extra = format!(
        "            authorize_scram_over_mtls:\n              mtls_port_contact_points: [\"{mtls}\"]\n{}              delegation_token_lifetime_seconds: 8\n",
        client_certificate(&kafka, "              ")
    );
    let (shotover, port) = one_proxy_on(&kafka, |b| b.sasl, &extra);
    let (proxy, direct) = (format!("127.0.0.1:{port}"), kafka.bootstrap());
    let (allowed, denied) = (format!("scram-ok-{port}"), format!("scram-no-{port}"));
    let args = |phase| ["user1", "user1-secret", allowed.as_str(), denied.as_str(), phase];
    let made = || shotover.output().matches("made a delegation token for the user \"user1\"").count();
    let out = run("scram", &proxy, &direct, &args("1"));
    for line in [
        "SCRAM-SHA-256_produce_errors=0 left=0",
        "SCRAM-SHA-256_consumed_all=True",
        "SCRAM-SHA-512_produce_errors=0 left=0",
        "SCRAM-SHA-512_consumed_all=True",
        "sees_allowed=True sees_denied=False",
        "denied_produce=['TOPIC_AUTHORIZATION_FAILED']",
        "denied_fetch=TOPIC_AUTHORIZATION_FAILED",
        "raw_right_password=0,answered",
        "raw_wrong_password=58,closed",
        "raw_token_login=58,closed",
        "done",
    ] {
        assert!(has(&out, line), "missing {line}:\n{out}\nproxy:\n{}", shotover.output());
    }
    let first = made();
    assert!(first >= 1, "no token was made:\n{}", shotover.output());
    // Past the 8 s lifetime: the first tokens have expired (the controller drops expired
    // tokens every second), and new connections need new ones.
    std::thread::sleep(Duration::from_secs(9));
    let out = run("scram", &proxy, &direct, &args("2"));
    for line in ["SCRAM-SHA-256_consumed_all=True", "SCRAM-SHA-512_consumed_all=True", "done"] {
        assert!(
            has(&out, line),
            "missing {line} after the first tokens expired:\n{out}\nproxy:\n{}",
            shotover.output()
        );
    }
    assert!(made() > first, "no token was made anew:\n{}", shotover.output());
    assert!(shotover.output().contains("refused the SCRAM login of \"user1\""), "{}", shotover.output());
}

/// A broker killed while clients produce and consume: the clients carry on through the
/// proxy, and every record the broker acknowledged is read back.
#[test]
fn a_broker_killed_under_load_loses_nothing_acknowledged() {
    let kafka = KafkaCluster::start(3);
    let (shotover, port) = one_proxy(&kafka, "");
    let (load, _marker) = start_load(&kafka, port, 20);
    std::thread::sleep(Duration::from_secs(3));
    kafka.stop_broker(2);
    let out = load.join().expect("the load thread");
    every_acknowledged_record_was_read(&out, &shotover);

    // `read_timeout`: with brokers that accept connections but stop answering (SIGSTOP),
    // the request waiting gets the proxy's error answer once it has passed, and the client
    // connection closes. Its contact points are the paused brokers only: the killed one's
    // port is free, and another test's process may listen on it by now.
    let port = free_port();
    let paused: String = kafka
        .brokers
        .iter()
        .filter(|b| b.id != 2)
        .map(|b| format!("\"{}\"", b.address(b.plaintext)))
        .collect::<Vec<_>>()
        .join(", ");
    let nodes = [Node { port, rack: "rack1", id: 0 }];
    let waiting = Shotover::start(&topology_with(&paused, &nodes, 0, "            read_timeout: 2\n"), port);
    let pause = |signal| {
        for id in [1, 3] {
            let pid = std::fs::read_to_string(kafka.path(&format!("broker-{id}/pid"))).expect("a broker's pid file");
            let pid = nix::unistd::Pid::from_raw(pid.trim().parse().expect("a pid"));
            nix::sys::signal::kill(pid, signal).expect("signal the broker");
        }
    };
    pause(nix::sys::signal::Signal::SIGSTOP);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Metadata v1 for every topic, correlation id 1, client id "t".
    let body = [0u8, 3, 0, 1, 0, 0, 0, 1, 0, 1, b't', 0xff, 0xff, 0xff, 0xff];
    let mut request = (body.len() as u32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    std::io::Write::write_all(&mut client, &request).unwrap();
    let sent = std::time::Instant::now();
    let answer = read_once(&mut client, Duration::from_secs(15));
    let waited = sent.elapsed();
    let then = read_once(&mut client, Duration::from_secs(5));
    pause(nix::sys::signal::Signal::SIGCONT);
    // Metadata v1 with no brokers, controller -1 and no topics: the proxy's error answer.
    let error_answer = ReadOutcome::Data(
        String::from_utf8_lossy(&[0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
            .into_owned(),
    );
    assert_eq!((answer, then), (error_answer, ReadOutcome::Closed), "{}", waiting.output());
    assert!(waited >= Duration::from_secs(2), "closed after {waited:?}, before the read_timeout");
    assert!(waiting.wait_for_log("within the read_timeout of 2s", Duration::from_secs(5)), "{}", waiting.output());
}

/// Fault injection (issue 16) for KafkaSinkCluster: every broker behind its own fault
/// proxy (the brokers advertise their FAULTY listener at the proxy's address, so the sink
/// reaches each broker it learns of through Metadata through its fault proxy), under a
/// producing load: delays on every broker, a 2 s stall of one, cuts in the middle of
/// answers, then one broker's connections gone silent (half-open) until `read_timeout`
/// ends them. Nothing acknowledged is lost, and a fresh load runs through the same proxy.
#[test]
fn delays_stalls_cuts_and_silence_lose_nothing_acknowledged() {
    use shotover_integration_tests::fault_proxy::{delays_stall_cuts_then_silence, FaultProxy};
    let kafka = shared_kafka();
    let faults: Vec<FaultProxy> = (kafka.brokers.iter())
        .map(|b| {
            let listen = b.faulty_address().parse().expect("a faulty address");
            let upstream = b.address(b.faulty).parse().expect("a broker address");
            FaultProxy::start_on(listen, upstream)
        })
        .collect();
    let contact = kafka.brokers.iter().map(|b| format!("\"{}\"", b.faulty_address())).collect::<Vec<_>>().join(", ");
    let port = free_port();
    let nodes = [Node { port, rack: "rack1", id: 0 }];
    let shotover = Shotover::start(&topology_with(&contact, &nodes, 0, "            read_timeout: 3\n"), port);
    let (load, _marker) = start_load(&kafka, port, 24);
    delays_stall_cuts_then_silence(&faults, Duration::from_secs(2), 1, Duration::from_secs(2), Some(2));
    std::thread::sleep(Duration::from_secs(4));
    faults[0].restart(Duration::from_secs(3));
    let out = load.join().expect("the load thread");
    eprintln!("under faults: {}", out.lines().filter(|l| l.contains('=')).collect::<Vec<_>>().join("; "));
    every_record_sent_was_acknowledged(&out, &shotover);
    every_acknowledged_record_was_read(&out, &shotover);
    assert!(faults.iter().all(|f| f.accepted() > 1), "the sink reached every broker through its fault proxy");
    assert!(
        shotover.wait_for_log("within the read_timeout of 3s", Duration::from_secs(5)),
        "the silent broker's requests timed out:\n{}",
        shotover.output()
    );
    // Recovered: a fresh load, all acknowledged and read back.
    let (load, _marker) = start_load(&kafka, port, 5);
    every_acknowledged_record_was_read(&load.join().expect("the load thread"), &shotover);
}

/// Kafka's own Java producer and consumer (the performance tools): the producer through
/// one Shotover, the consumer through three (one per rack).
#[test]
fn the_java_client_produces_and_consumes_through_the_proxy() {
    let kafka = shared_kafka();
    let (shotover, port) = one_proxy(&kafka, "");
    let (proxies, nodes) = three_proxies(&kafka);
    let topic = format!("java-{port}");
    let create = kafka.tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &kafka.bootstrap(),
            "--create",
            "--topic",
            &topic,
            "--partitions",
            "6",
            "--replication-factor",
            "3",
        ],
    );
    assert!(create.status.success(), "{}", String::from_utf8_lossy(&create.stderr));
    let proxy = format!("127.0.0.1:{port}");
    let produce = kafka.tool(
        "org.apache.kafka.tools.ProducerPerformance",
        &[
            "--topic",
            &topic,
            "--num-records",
            "20000",
            "--record-size",
            "1024",
            "--throughput",
            "-1",
            "--producer-props",
            &format!("bootstrap.servers={proxy}"),
            "acks=all",
        ],
    );
    let text = String::from_utf8_lossy(&produce.stdout);
    assert!(produce.status.success(), "{text}\n{}", String::from_utf8_lossy(&produce.stderr));
    assert!(text.lines().any(|l| l.starts_with("20000 records sent")), "{text}");
    let three = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",");
    let consume = kafka.tool(
        "org.apache.kafka.tools.ConsumerPerformance",
        &["--bootstrap-server", &three, "--topic", &topic, "--num-records", "20000", "--timeout", "60000"],
    );
    let text = String::from_utf8_lossy(&consume.stdout);
    assert!(consume.status.success(), "{text}\n{}", String::from_utf8_lossy(&consume.stderr));
    // The data line's fifth column, data.consumed.in.nMsg, is the number of records consumed.
    let consumed = text.lines().filter_map(|l| l.split(", ").nth(4)?.trim().parse::<u64>().ok()).next_back();
    assert_eq!(consumed, Some(20000), "{text}");
    for p in std::iter::once(&shotover).chain(&proxies) {
        assert_eq!(failed_requests(p), 0.0, "{}", p.output());
    }
}

/// Partition leaders moved with Kafka's admin tools while a producer writes through the
/// proxy: the old leaders answer NOT_LEADER_OR_FOLLOWER, the client refreshes its metadata
/// through the proxy (which learns the new leaders from it, as it also does by forgetting
/// the topic: see `split::tests::leader_errors_name_their_topics`), and every record sent is
/// acknowledged and read back.
#[test]
fn partition_leaders_moved_by_the_admin_tools_are_followed() {
    let kafka = shared_kafka();
    let (shotover, port) = one_proxy(&kafka, "");
    let (load, marker) = start_load(&kafka, port, 15);
    let started = marker.path("started");
    std::thread::sleep(Duration::from_secs(2));
    let topic = std::fs::read_to_string(&started).unwrap();
    // Each partition's preferred leader becomes a broker that does not lead it now.
    let describe = kafka.tool(
        "org.apache.kafka.tools.TopicCommand",
        &["--bootstrap-server", &kafka.bootstrap(), "--describe", "--topic", &topic],
    );
    let text = String::from_utf8_lossy(&describe.stdout).into_owned();
    let mut moves = Vec::new();
    for line in text.lines().filter(|l| l.contains("Leader:")) {
        let field =
            |name: &str| line.split_whitespace().skip_while(|w| *w != name).nth(1).and_then(|v| v.parse::<i32>().ok());
        let (Some(partition), Some(leader)) = (field("Partition:"), field("Leader:")) else { continue };
        let new_leader = leader % 3 + 1;
        let replicas: Vec<i32> = (0..3).map(|i| (new_leader - 1 + i) % 3 + 1).collect();
        moves.push(format!("{{\"topic\":\"{topic}\",\"partition\":{partition},\"replicas\":{replicas:?}}}"));
    }
    assert_eq!(moves.len(), 6, "{text}");
    let plan = marker.path("plan.json");
    std::fs::write(&plan, format!("{{\"version\":1,\"partitions\":[{}]}}", moves.join(","))).unwrap();
    let plan = plan.to_string_lossy().into_owned();
    let reassign = kafka.tool(
        "org.apache.kafka.tools.reassign.ReassignPartitionsCommand",
        &["--bootstrap-server", &kafka.bootstrap(), "--reassignment-json-file", &plan, "--execute"],
    );
    assert!(reassign.status.success(), "{}", String::from_utf8_lossy(&reassign.stderr));
    let partitions: Vec<String> = (0..6).map(|p| format!("{{\"topic\":\"{topic}\",\"partition\":{p}}}")).collect();
    let election = marker.path("election.json");
    std::fs::write(&election, format!("{{\"partitions\":[{}]}}", partitions.join(","))).unwrap();
    let election = election.to_string_lossy().into_owned();
    let elect = kafka.tool(
        "org.apache.kafka.tools.LeaderElectionCommand",
        &["--bootstrap-server", &kafka.bootstrap(), "--election-type", "preferred", "--path-to-json-file", &election],
    );
    let elected = String::from_utf8_lossy(&elect.stdout).into_owned();
    let out = load.join().expect("the load thread");
    // Followed, not just survived: every record sent was acknowledged (a proxy that kept
    // sending to the old leaders would leave records unsent or failed).
    let sent = out.lines().find_map(|l| l.strip_prefix("sent=")?.split(' ').next()).unwrap_or("none");
    assert!(
        out.lines().any(|l| l.starts_with(&format!("sent={sent} acked={sent} left=0 produce_errors=0"))),
        "{out}\nproxy:\n{}",
        shotover.output()
    );
    assert!(
        elected.contains("Successfully completed leader election"),
        "{elected}\n{}",
        String::from_utf8_lossy(&elect.stderr)
    );
    every_acknowledged_record_was_read(&out, &shotover);
}
