//! The built-in transforms, one file each. This module only registers them.
//!
//! | transform | terminating | file |
//! |---|---|---|
//! | ValkeySinkSingle | yes | [`valkey_sink_single`] |
//! | ValkeySinkCluster | yes | [`valkey_sink_cluster`] |
//! | NullSink | yes | [`null_sink`] |
//! | DebugReturner | yes | [`debug_returner`] |
//! | DebugPrinter | no | [`debug_printer`] |
//! | QueryCounter | no | [`query_counter`] |
//! | QueryTypeFilter | no | [`query_type_filter`] |
//! | ValkeyClusterPortsRewrite | no | [`valkey_cluster_ports_rewrite`] |
//! | CassandraSinkSingle | yes | [`cassandra_sink_single`] |
//! | CassandraSinkCluster | yes | [`cassandra_sink_cluster`] |
//! | CassandraPeersRewrite | no | [`cassandra_peers_rewrite`] |
//! | KafkaSinkSingle | yes | [`kafka_sink_single`] |
//! | KafkaSinkCluster | yes | [`kafka_sink_cluster`] |
//! | Coalesce | no | [`coalesce`] |
//! | Tee | no | [`tee`] |
//! | ParallelMap | yes | [`parallel_map`] |
//! | RequestThrottling | no | [`request_throttling`] |
//! | Protect | no | [`protect`] |
//! | ValkeyCache | no | [`valkey_cache`] |

pub mod cassandra_peers_rewrite;
pub mod cassandra_sink_cluster;
pub mod cassandra_sink_single;
pub mod coalesce;
pub mod debug_printer;
pub mod debug_returner;
pub mod kafka_sink_cluster;
pub mod kafka_sink_single;
pub mod null_sink;
pub mod parallel_map;
pub mod protect;
pub mod query_counter;
pub mod query_type_filter;
pub mod request_throttling;
pub mod tee;
pub mod valkey_cache;
pub mod valkey_cluster_ports_rewrite;
pub mod valkey_sink_cluster;
pub mod valkey_sink_single;

use crate::config::topology::TransformRegistry;

/// Every built-in transform, each under its [`TransformConfig::NAME`](crate::chain::TransformConfig::NAME).
pub fn registry() -> TransformRegistry {
    let mut r = TransformRegistry::new();
    r.register::<valkey_sink_single::ValkeySinkSingleConfig>()
        .register::<null_sink::NullSink>()
        .register::<debug_returner::DebugReturnerConfig>()
        .register::<debug_printer::DebugPrinterConfig>()
        .register::<query_counter::QueryCounterConfig>()
        .register::<query_type_filter::QueryTypeFilterConfig>()
        .register::<valkey_cluster_ports_rewrite::ValkeyClusterPortsRewriteConfig>()
        .register::<valkey_sink_cluster::ValkeySinkClusterConfig>()
        .register::<coalesce::CoalesceConfig>()
        .register::<cassandra_sink_single::CassandraSinkSingleConfig>()
        .register::<cassandra_sink_cluster::CassandraSinkClusterConfig>()
        .register::<cassandra_peers_rewrite::CassandraPeersRewriteConfig>()
        .register::<kafka_sink_single::KafkaSinkSingleConfig>()
        .register::<kafka_sink_cluster::KafkaSinkClusterConfig>()
        .register::<request_throttling::RequestThrottlingConfig>()
        .register::<protect::ProtectConfig>()
        .register_parser(tee::TeeConfig::parse)
        .register_parser(parallel_map::ParallelMapConfig::parse)
        .register_parser(valkey_cache::ValkeyCacheConfig::parse);
    r
}
