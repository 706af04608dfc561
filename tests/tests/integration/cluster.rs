//! Valkey Cluster behind proxies, the guide's "cluster aware client" layout: one proxy beside
//! each node, on the same port on every node's IP, rewriting ports so that cluster-aware
//! clients (valkey-cli -c, valkey-benchmark --cluster, redis-rs' cluster client) go through
//! the proxies.

use redis::Commands;
use shotover_integration_tests::*;

struct Sidecars {
    _cluster: ValkeyCluster,
    _proxies: Vec<Shotover>,
    node_port: u16,
    proxy_port: u16,
}

fn sidecars() -> Sidecars {
    let node_port = free_cluster_port();
    let proxy_port = free_port();
    let cluster = ValkeyCluster::start_on_six_ips(node_port);
    let proxies = (1..=6)
        .map(|i| {
            let topology = format!(
                "sources:\n  - Valkey:\n      name: \"valkey\"\n      listen_addr: \"127.0.0.{i}:{proxy_port}\"\n      chain:\n        - ValkeyClusterPortsRewrite:\n            new_port: {proxy_port}\n        - ValkeySinkSingle:\n            remote_address: \"127.0.0.{i}:{node_port}\"\n"
            );
            let shotover = Shotover::builder(&topology).start().unwrap();
            assert!(
                wait_until(std::time::Duration::from_secs(10), || {
                    std::net::TcpStream::connect((format!("127.0.0.{i}").as_str(), proxy_port)).is_ok()
                }),
                "proxy {i} did not listen"
            );
            shotover
        })
        .collect();
    Sidecars { _cluster: cluster, _proxies: proxies, node_port, proxy_port }
}

#[test]
fn topology_replies_and_redirections_name_the_proxy_port() {
    let s = sidecars();
    let port = s.proxy_port.to_string();
    let node_port = s.node_port.to_string();
    let (_, slots) = run_tool("valkey-cli", &["-h", "127.0.0.1", "-p", &port, "CLUSTER", "SLOTS"]);
    // Three masters at least (replicas show once the node has heard of them).
    assert!(slots.lines().filter(|l| *l == port).count() >= 3, "proxy {port} node {node_port}: {slots}");
    assert!(!slots.lines().any(|l| l == node_port), "{slots}");
    let (_, nodes) = run_tool("valkey-cli", &["-h", "127.0.0.1", "-p", &port, "CLUSTER", "NODES"]);
    assert_eq!(nodes.matches(&format!(":{port}@")).count(), 6, "{nodes}");
    assert!(!nodes.contains(&format!(":{node_port}@")), "{nodes}");
    let (_, shards) = run_tool("valkey-cli", &["-h", "127.0.0.1", "-p", &port, "CLUSTER", "SHARDS"]);
    assert!(shards.contains(&port) && !shards.lines().any(|l| l == node_port), "{shards}");

    // Redirections name a proxy: ask the first node for keys it does not own.
    let mut redirects = 0;
    for i in 0..20 {
        let key = format!("key-{i}");
        let (_, out) = run_tool("valkey-cli", &["-h", "127.0.0.1", "-p", &port, "SET", &key, "v"]);
        if out.contains("MOVED") {
            redirects += 1;
            assert!(out.trim_end().ends_with(&format!(":{port}")), "{out}");
        }
        // valkey-cli in cluster mode follows the redirection through the proxies.
        let (status, out) = run_tool("valkey-cli", &["-c", "-h", "127.0.0.1", "-p", &port, "SET", &key, "v"]);
        assert!(status.success() && out.contains("OK"), "{out}");
    }
    assert!(redirects > 0, "20 keys over 3 masters must cause redirects");
}

#[test]
fn cluster_aware_clients_work_through_the_proxies() {
    let s = sidecars();
    let port = s.proxy_port.to_string();
    let (status, out) = run_tool(
        "valkey-benchmark",
        &["--cluster", "-h", "127.0.0.1", "-p", &port, "-c", "10", "-n", "3000", "-t", "set,get", "-q", "--csv"],
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("Cluster has 3 master nodes") || out.contains("Cluster has 3 primary nodes"), "{out}");
    assert_eq!(out.matches(&format!(":{port}")).count(), 3, "every master is reached through a proxy: {out}");
    assert!(out.contains("\"GET\""), "{out}");

    let client = redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}/", s.proxy_port)]).unwrap();
    let mut c = client.get_connection().unwrap();
    for i in 0..50 {
        let _: () = c.set(format!("rs-{i}"), i).unwrap();
    }
    for i in 0..50 {
        assert_eq!(c.get::<_, i64>(format!("rs-{i}")).unwrap(), i);
    }
}
