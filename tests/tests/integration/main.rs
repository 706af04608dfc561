//! Integration tests: real valkey-server, the real release binary, real clients
//! (redis-rs, valkey-cli, valkey-benchmark). One crate, one binary, to build once.

mod cache;
mod cassandra;
mod cassandra_cluster;
mod cassandra_v4_v5;
mod cluster;
mod cluster_hiding;
mod cluster_sink;
mod cluster_sink_fidelity;
mod composite;
mod config_errors;
mod deployment;
mod failures;
mod faults;
mod fidelity;
mod hot_reload;
mod kafka;
mod kafka_cluster;
mod limits;
mod malformed;
mod memory_bounds;
mod multiplex;
mod observability;
mod passthrough;
mod protect;
mod shutdown;
mod throttling;
mod tls;
mod transforms;

use shotover_integration_tests::*;

/// A proxy on a free port in front of a fresh Valkey.
pub struct Setup {
    pub valkey: ValkeyServer,
    pub shotover: Shotover,
    pub port: u16,
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

impl Setup {
    pub fn new() -> Self {
        Self::with_valkey(ValkeyServer::start())
    }

    pub fn with_valkey(valkey: ValkeyServer) -> Self {
        let port = free_port();
        let shotover = Shotover::start(&valkey_topology(port, &sink_single(valkey.port)), port);
        Setup { valkey, shotover, port }
    }

    pub fn client(&self) -> redis::Connection {
        connect(self.port)
    }
}
