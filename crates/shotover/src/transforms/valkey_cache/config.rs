//! ValkeyCache's configuration: the cached tables and the Valkey sub-chain.

use super::shared::{Dirty, DirtyTables, Entry, Shared};
use super::ValkeyCache;
use crate::chain::{AnyTransformConfig, BuildContext, ChainBuilder, TransformBuilder, TransformConfig};
use crate::config::topology::ParseContext;
use crate::config::ConfigError;
use crate::message::Protocol;
use anyhow::Result;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

/// The sinks a cache sub-chain may end with.
const VALKEY_SINKS: [&str; 2] = ["ValkeySinkSingle", "ValkeySinkCluster"];

#[derive(Debug)]
pub struct ValkeyCacheConfig {
    /// `keyspace.table` (or a bare `table`, in any keyspace) → its key columns.
    pub caching_schema: BTreeMap<String, TableCacheSchema>,
    /// The Valkey sub-chain; it ends with ValkeySinkSingle or ValkeySinkCluster.
    pub chain: Vec<Box<dyn AnyTransformConfig>>,
    /// The tables to invalidate whole, shared by every core.
    dirty: DirtyTables,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableCacheSchema {
    /// The partition key's columns, in order.
    pub partition_key: Vec<String>,
    /// The clustering columns. Default none.
    #[serde(default)]
    pub range_key: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValkeyCache {
    caching_schema: BTreeMap<String, TableCacheSchema>,
    chain: Value,
}

impl ValkeyCacheConfig {
    /// The parser registered for `ValkeyCache`: the sub-chain is parsed as a Valkey chain.
    pub fn parse(ctx: &ParseContext<'_>, path: &str, body: Value) -> Result<Self, ConfigError> {
        let raw: RawValkeyCache = ctx.from_value(path, body)?;
        let schema_path = ctx.join(path, "caching_schema");
        if raw.caching_schema.is_empty() {
            return Err(ctx.error(&schema_path, "names no table: give at least one `keyspace.table`"));
        }
        for (name, table) in &raw.caching_schema {
            let at = ctx.join(&schema_path, name);
            if name.split('.').count() > 2 || name.split('.').any(str::is_empty) {
                return Err(ctx.error(&at, "must be `keyspace.table` or `table`"));
            }
            if table.partition_key.is_empty() {
                return Err(ctx.error(&ctx.join(&at, "partition_key"), "must name at least one column"));
            }
        }
        let chain_path = ctx.join(path, "chain");
        let chain = ctx.parse_chain_of(Protocol::Valkey, &chain_path, raw.chain)?;
        match chain.last() {
            Some(last) if VALKEY_SINKS.contains(&last.name()) => {}
            last => {
                return Err(ctx.error(
                    &format!("{chain_path}[{}]", chain.len().saturating_sub(1)),
                    format!(
                        "the cache chain must end with ValkeySinkSingle or ValkeySinkCluster, not {}",
                        last.map_or("nothing", |l| l.name())
                    ),
                ))
            }
        }
        let dirty = Arc::new((0..raw.caching_schema.len()).map(|_| Dirty::default()).collect());
        Ok(ValkeyCacheConfig { caching_schema: raw.caching_schema, chain, dirty })
    }

    fn entries(&self) -> Vec<Entry> {
        self.caching_schema
            .iter()
            .map(|(name, table)| {
                let (keyspace, table_name) = match name.split_once('.') {
                    Some((ks, t)) => (Some(ks.to_string()), t.to_string()),
                    None => (None, name.clone()),
                };
                Entry {
                    name: name.clone(),
                    keyspace,
                    table: table_name,
                    partition_key: table.partition_key.clone(),
                    range_key: table.range_key.clone(),
                }
            })
            .collect()
    }
}

impl TransformConfig for ValkeyCacheConfig {
    const NAME: &'static str = "ValkeyCache";
    const TERMINATING: bool = false;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra];

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let chain = Rc::new(ChainBuilder::new("valkey_cache_chain", &self.chain, ctx)?);
        let shared = Rc::new(Shared::new(self.entries(), self.dirty.clone(), ctx));
        Ok(Box::new(move || ValkeyCache::new(shared.clone(), chain.clone())))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::topology::Topology;
    use crate::transforms::registry;

    fn load(cache: &str) -> Result<(), String> {
        let text = format!(
            "sources:\n  - Cassandra:\n      name: \"cassandra\"\n      listen_addr: \"127.0.0.1:9042\"\n      chain:\n{cache}        - CassandraSinkSingle:\n            remote_address: \"127.0.0.1:9043\"\n            connect_timeout_ms: 3000\n"
        );
        Topology::from_str("topology.yaml", &text, &registry()).map(|_| ()).map_err(|e| e.to_string())
    }

    /// The user guide's example, as written there (comments left out).
    const GUIDE: &str = "        - ValkeyCache:\n            caching_schema:\n              test:\n                partition_key: [test]\n                range_key: [test]\n            chain:\n              - ValkeySinkSingle:\n                  remote_address: \"127.0.0.1:6379\"\n                  connect_timeout_ms: 3000\n";

    #[test]
    fn the_guides_example_loads_and_errors_name_the_field() {
        load(GUIDE).unwrap();
        load(&GUIDE.replace("                range_key: [test]\n", "")).unwrap();
        let cases = [
            (GUIDE.replace("partition_key: [test]", "partition_key: []"), "caching_schema.test.partition_key: must name"),
            (GUIDE.replace("              test:", "              a.b.c:"), "caching_schema.a.b.c: must be `keyspace.table`"),
            (GUIDE.replace("ValkeySinkSingle:\n                  remote_address: \"127.0.0.1:6379\"\n                  connect_timeout_ms: 3000", "NullSink"), "chain[0]: the cache chain must end with ValkeySinkSingle or ValkeySinkCluster, not NullSink"),
            (GUIDE.replace("ValkeySinkSingle:", "CassandraSinkSingle:"), "CassandraSinkSingle cannot be used in a Valkey chain"),
            (GUIDE.replace("            caching_schema:", "            ttl: 5\n            caching_schema:"), "unknown field `ttl`"),
        ];
        for (text, expected) in cases {
            let err = load(&text).unwrap_err();
            assert!(err.contains(expected), "{err}\nexpected: {expected}");
            assert!(err.contains("sources[0].Cassandra.chain[0].ValkeyCache"), "{err}");
        }
    }
}
