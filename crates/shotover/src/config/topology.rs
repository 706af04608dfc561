//! topology.yaml: the sources, and the chain of transforms behind each.
//!
//! ```yaml
//! sources:
//!   - Valkey:
//!       name: "valkey"
//!       listen_addr: "127.0.0.1:6379"
//!       chain:
//!         - QueryCounter:
//!             name: "main"
//!         - ValkeySinkSingle:
//!             remote_address: "127.0.0.1:6380"
//! ```
//!
//! Chains are read element by element through a [`TransformRegistry`], which maps a
//! transform's name to its parser, so that custom builds can add their own transforms.

use super::{from_value, join_path, read_yaml, ConfigError};
use crate::chain::{AnyTransformConfig, TransformConfig};
use crate::message::Protocol;
use crate::tls::TlsAcceptorConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Parses one transform's YAML body found at `path`.
type TransformParser =
    Arc<dyn Fn(&ParseContext<'_>, &str, Value) -> Result<Box<dyn AnyTransformConfig>, ConfigError> + Send + Sync>;

/// What a transform's parser may use: the file name for errors, and the registry and
/// protocol for the sub-chains of transforms such as Tee and ParallelMap.
pub struct ParseContext<'a> {
    file: &'a str,
    registry: &'a TransformRegistry,
    protocol: Protocol,
}

impl ParseContext<'_> {
    /// Parses a sub-chain at `path`, with the same rules as a source's chain.
    pub fn parse_chain(&self, path: &str, value: Value) -> Result<Vec<Box<dyn AnyTransformConfig>>, ConfigError> {
        self.registry.parse_chain(self.file, path, value, self.protocol)
    }

    /// Parses a sub-chain of another protocol than the source's (ValkeyCache's Valkey chain
    /// inside a Cassandra chain).
    pub fn parse_chain_of(
        &self,
        protocol: Protocol,
        path: &str,
        value: Value,
    ) -> Result<Vec<Box<dyn AnyTransformConfig>>, ConfigError> {
        self.registry.parse_chain(self.file, path, value, protocol)
    }

    /// Deserializes `value`, reporting errors at `path` plus the path inside `value`.
    pub fn from_value<T: DeserializeOwned>(&self, path: &str, value: Value) -> Result<T, ConfigError> {
        from_value(self.file, path, value)
    }

    /// An error at `path` (use [`join_path`]-style paths such as `a.b[0]`).
    pub fn error(&self, path: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.into(), path: path.into(), reason: reason.into() }
    }

    /// `base` + `field` as a YAML path.
    pub fn join(&self, base: &str, field: &str) -> String {
        join_path(base, field)
    }

    /// The protocol of the source whose chain is being parsed.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}

/// Known transforms by name.
#[derive(Clone, Default)]
pub struct TransformRegistry {
    entries: Vec<(&'static str, TransformParser)>,
}

impl TransformRegistry {
    /// An empty registry; see [`crate::transforms::registry`] for the built-in one.
    pub fn new() -> Self {
        Self::default()
    }

    fn knows(&self, name: &str) -> bool {
        self.entries.iter().any(|(n, _)| *n == name)
    }

    /// Adds transform `C` under its [`TransformConfig::NAME`]; its YAML body deserializes
    /// into `C`. A transform registered under the same name before is replaced.
    pub fn register<C: TransformConfig + DeserializeOwned>(&mut self) -> &mut Self {
        self.register_parser(|ctx: &ParseContext<'_>, path: &str, body: Value| ctx.from_value::<C>(path, body))
    }

    /// Adds transform `C` with a parser of its own, for transforms whose body holds a
    /// sub-chain (see [`ParseContext::parse_chain`]).
    pub fn register_parser<C, P>(&mut self, parser: P) -> &mut Self
    where
        C: TransformConfig,
        P: Fn(&ParseContext<'_>, &str, Value) -> Result<C, ConfigError> + Send + Sync + 'static,
    {
        self.entries.retain(|(n, _)| *n != C::NAME);
        let parser: TransformParser = Arc::new(move |ctx: &ParseContext<'_>, path: &str, body: Value| {
            Ok(Box::new(parser(ctx, path, body)?) as Box<dyn AnyTransformConfig>)
        });
        self.entries.push((C::NAME, parser));
        self
    }

    fn get(&self, name: &str) -> Option<&TransformParser> {
        self.entries.iter().find(|(n, _)| *n == name).map(|(_, p)| p)
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.entries.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names
    }

    /// Parses a chain (a YAML sequence) at `path`, checking its shape for `protocol`.
    pub fn parse_chain(
        &self,
        file: &str,
        path: &str,
        value: Value,
        protocol: Protocol,
    ) -> Result<Vec<Box<dyn AnyTransformConfig>>, ConfigError> {
        let err = |path: String, reason: String| ConfigError { file: file.into(), path, reason };
        let Value::Sequence(items) = value else {
            return Err(err(path.into(), "a chain must be a list of transforms".into()));
        };
        let mut chain: Vec<Box<dyn AnyTransformConfig>> = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            // `- NullSink` and `- NullSink: {...}` are both accepted.
            let (name, body) = match item {
                Value::String(name) => (name, Value::Mapping(Default::default())),
                Value::Mapping(map) if map.len() == 1 => match map.into_iter().next() {
                    Some((Value::String(name), Value::Null)) => (name, Value::Mapping(Default::default())),
                    Some((Value::String(name), body)) => (name, body),
                    _ => return Err(err(item_path, "a transform is named by a string".into())),
                },
                _ => {
                    return Err(err(
                        item_path,
                        "expected a transform: a name, or a map with exactly one name as key".into(),
                    ))
                }
            };
            let Some(parse) = self.get(&name) else {
                return Err(err(
                    item_path,
                    format!("unknown transform {name:?}; known transforms: {}", self.names().join(", ")),
                ));
            };
            let transform_path = join_path(&item_path, &name);
            let ctx = ParseContext { file, registry: self, protocol };
            let mut transform = parse(&ctx, &transform_path, body)?;
            if !transform.protocols().contains(&protocol) {
                return Err(err(item_path, format!("{name} cannot be used in a {protocol} chain")));
            }
            transform.validate().map_err(|e| err(transform_path.clone(), format!("{e:#}")))?;
            chain.push(transform);
        }
        let Some(last) = chain.len().checked_sub(1) else {
            return Err(err(path.into(), "the chain is empty: it must end with a terminating transform".into()));
        };
        for (i, t) in chain.iter().enumerate() {
            if t.is_terminating() && i != last {
                return Err(err(
                    format!("{path}[{i}]"),
                    format!("{} is a terminating transform, so it must be the last in its chain", t.name()),
                ));
            }
        }
        if let Some(t) = chain.get(last).filter(|t| !t.is_terminating()) {
            return Err(err(
                format!("{path}[{last}]"),
                format!(
                    "{} is not a terminating transform: a chain must end with exactly one terminating transform (a sink, NullSink, DebugReturner or ParallelMap)",
                    t.name()
                ),
            ));
        }
        Ok(chain)
    }
}

/// The fields every source has, as written in YAML (the chain is parsed separately).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    name: Option<String>,
    listen_addr: String,
    #[serde(default = "default_connection_limit")]
    connection_limit: usize,
    #[serde(default)]
    hard_connection_limit: bool,
    #[serde(default)]
    tls: Option<TlsAcceptorConfig>,
    #[serde(default)]
    timeout: Option<u64>,
    /// Cassandra only.
    #[serde(default)]
    transport: Option<Transport>,
    #[serde(default)]
    max_request_bytes: Option<u64>,
    #[serde(default)]
    max_reply_backlog_bytes: Option<u64>,
    chain: Value,
}

/// The smallest `max_request_bytes`: every handshake and login fits in it.
const MIN_MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// The smallest `max_reply_backlog_bytes`.
const MIN_MAX_REPLY_BACKLOG_BYTES: u64 = 64 * 1024;

/// The default `max_reply_backlog_bytes`: 16 MiB of answers may wait for a client.
pub const DEFAULT_MAX_REPLY_BACKLOG_BYTES: usize = 16 * 1024 * 1024;

/// The default and the largest `max_request_bytes` of a protocol: the server's own
/// defaults (Valkey's `client-query-buffer-limit`, the CQL frame limit, Kafka's
/// `socket.request.max.bytes`), so by default the proxy refuses nothing the server takes.
fn request_limits(protocol: Protocol) -> (u64, u64) {
    use shotover_protocols::{cassandra::header, kafka::framing as kafka, valkey::framing as valkey};
    match protocol {
        Protocol::Valkey => (valkey::MAX_MESSAGE_LEN as u64, valkey::MAX_MESSAGE_LEN as u64),
        Protocol::Cassandra => {
            let max = (header::HEADER_LEN + header::MAX_BODY_LEN) as u64;
            (max, max)
        }
        Protocol::Kafka => (
            (kafka::LENGTH_PREFIX_LEN + kafka::MAX_MESSAGE_LEN) as u64,
            kafka::LENGTH_PREFIX_LEN as u64 + i32::MAX as u64,
        ),
    }
}

fn default_connection_limit() -> usize {
    512
}

/// How a Cassandra source's clients carry CQL frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Transport {
    /// CQL frames straight on TCP (or TLS), as every driver speaks.
    #[default]
    Tcp,
    /// CQL frames in binary WebSocket messages.
    WebSocket,
}

/// One source: where clients connect, how, and the chain their requests run through.
#[derive(Debug)]
pub struct SourceConfig {
    /// The protocol its clients speak (the YAML key: `Valkey`, `Cassandra`, `Kafka`).
    pub protocol: Protocol,
    /// Names the source in metrics and logs. Default: the protocol in lower case.
    pub name: String,
    /// Where to listen.
    pub listen_addr: SocketAddr,
    /// Concurrent connections accepted, over all cores. Default 512.
    pub connection_limit: usize,
    /// At the limit: true drops new connections, false leaves them waiting. Default false.
    pub hard_connection_limit: bool,
    /// Seconds after which an idle client connection is closed. Default: never.
    pub timeout: Option<u64>,
    /// TLS for clients. Default: plain TCP.
    pub tls: Option<TlsAcceptorConfig>,
    /// Cassandra only: TCP or WebSocket. Default TCP.
    pub transport: Transport,
    /// The largest request a client may send, in bytes (a Kafka request's length prefix
    /// and a CQL frame's header included). Larger ones get the protocol's error and the
    /// connection closes, as soon as their header shows the size. Default: the server's
    /// own limit (Valkey 1 GiB, Cassandra 256 MiB + 9, Kafka 100 MiB + 4).
    pub max_request_bytes: usize,
    /// Answers that may wait for a client that does not read them, in bytes; past it the
    /// client's requests are not read until it catches up. Default 16 MiB.
    pub max_reply_backlog_bytes: usize,
    /// The transforms, first to last.
    pub chain: Vec<Box<dyn AnyTransformConfig>>,
}

/// The older name of [`SourceConfig`], from when every source was a Valkey source.
pub type ValkeySourceConfig = SourceConfig;

impl SourceConfig {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }
}

/// topology.yaml.
#[derive(Debug)]
pub struct Topology {
    pub sources: Vec<SourceConfig>,
}

impl Topology {
    /// Reads and validates topology.yaml.
    pub fn load(path: &Path, registry: &TransformRegistry) -> Result<Topology, ConfigError> {
        let file = path.display().to_string();
        Topology::from_value(&file, read_yaml(path, &|name| registry.knows(name))?, registry)
    }

    /// Parses a topology held in a string (`file` names it in errors).
    pub fn from_str(file: &str, text: &str, registry: &TransformRegistry) -> Result<Topology, ConfigError> {
        Topology::from_value(file, super::yaml::parse(file, text, &|name| registry.knows(name))?, registry)
    }

    fn from_value(file: &str, value: Value, registry: &TransformRegistry) -> Result<Topology, ConfigError> {
        let err = |path: &str, reason: String| ConfigError { file: file.into(), path: path.into(), reason };
        let Value::Mapping(mut top) = value else {
            return Err(err("", "expected a map with a `sources` list".into()));
        };
        let sources = top.remove("sources").ok_or_else(|| err("sources", "missing field `sources`".into()))?;
        if let Some((key, _)) = top.into_iter().next() {
            return Err(err("", format!("unknown field {:?}, expected `sources`", key.as_str().unwrap_or("?"))));
        }
        let Value::Sequence(items) = sources else {
            return Err(err("sources", "expected a list of sources".into()));
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("sources[{i}]");
            let (kind, body) = match item {
                Value::Mapping(map) if map.len() == 1 => match map.into_iter().next() {
                    Some((Value::String(kind), body)) => (kind, body),
                    _ => return Err(err(&path, "a source is a map with one key: Valkey, Cassandra or Kafka".into())),
                },
                _ => return Err(err(&path, "a source is a map with one key: Valkey, Cassandra or Kafka".into())),
            };
            let path = join_path(&path, &kind);
            let protocol = match kind.as_str() {
                "Valkey" => Protocol::Valkey,
                "Cassandra" => Protocol::Cassandra,
                "Kafka" => Protocol::Kafka,
                other => {
                    return Err(err(&path, format!("unknown source {other:?}: expected Valkey, Cassandra or Kafka")))
                }
            };
            let source = parse_source(file, &path, body, registry, protocol)?;
            if let Some(j) = out.iter().position(|s: &SourceConfig| s.listen_addr() == source.listen_addr()) {
                return Err(err(
                    &join_path(&path, "listen_addr"),
                    format!("{} is already the listen_addr of sources[{j}]", source.listen_addr()),
                ));
            }
            out.push(source);
        }
        if out.is_empty() {
            return Err(err("sources", "no sources: there is nothing to listen on".into()));
        }
        Ok(Topology { sources: out })
    }
}

/// `IP:port`, or `host:port` resolved now (startup is the only time it is looked up).
fn resolve_listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!("{text:?} is not an IP:port or host:port address: {e}")),
    }
}

fn parse_source(
    file: &str,
    path: &str,
    body: Value,
    registry: &TransformRegistry,
    protocol: Protocol,
) -> Result<SourceConfig, ConfigError> {
    let err = |field: &str, reason: String| ConfigError { file: file.into(), path: join_path(path, field), reason };
    let raw: RawSource = from_value(file, path, body)?;
    let listen_addr = resolve_listen_addr(&raw.listen_addr).map_err(|reason| err("listen_addr", reason))?;
    if raw.connection_limit == 0 {
        return Err(err("connection_limit", "must be at least 1".into()));
    }
    if let Some(tls) = &raw.tls {
        tls.build().map_err(|e| err("tls", format!("{e:#}")))?;
    }
    if raw.timeout == Some(0) {
        return Err(err("timeout", "must be at least 1 second; leave it out to never time out".into()));
    }
    if raw.transport.is_some() && protocol != Protocol::Cassandra {
        return Err(err("transport", format!("only Cassandra sources have a transport, not {protocol} sources")));
    }
    let (default_request, largest_request) = request_limits(protocol);
    let max_request_bytes = raw.max_request_bytes.unwrap_or(default_request);
    if !(MIN_MAX_REQUEST_BYTES..=largest_request).contains(&max_request_bytes) {
        return Err(err(
            "max_request_bytes",
            format!("must be from {MIN_MAX_REQUEST_BYTES} to {largest_request} for {protocol} sources"),
        ));
    }
    let max_reply_backlog_bytes = raw.max_reply_backlog_bytes.unwrap_or(DEFAULT_MAX_REPLY_BACKLOG_BYTES as u64);
    if max_reply_backlog_bytes < MIN_MAX_REPLY_BACKLOG_BYTES {
        return Err(err("max_reply_backlog_bytes", format!("must be at least {MIN_MAX_REPLY_BACKLOG_BYTES}")));
    }
    let chain = registry.parse_chain(file, &join_path(path, "chain"), raw.chain, protocol)?;
    Ok(SourceConfig {
        protocol,
        name: raw.name.unwrap_or_else(|| protocol.to_string().to_lowercase()),
        listen_addr,
        connection_limit: raw.connection_limit,
        hard_connection_limit: raw.hard_connection_limit,
        timeout: raw.timeout,
        tls: raw.tls,
        transport: raw.transport.unwrap_or_default(),
        // Both fit: checked against limits that fit in a usize above.
        max_request_bytes: usize::try_from(max_request_bytes).unwrap_or(usize::MAX),
        max_reply_backlog_bytes: usize::try_from(max_reply_backlog_bytes).unwrap_or(usize::MAX),
        chain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{BuildContext, TransformBuilder};
    use crate::transforms::registry;

    fn load(text: &str) -> Result<Topology, ConfigError> {
        Topology::from_str("topology.yaml", text, &registry())
    }

    /// The user guide's first topology example, as printed there.
    #[test]
    fn guide_example_two_sources_loads() {
        let text = r#"
# This example listens on two different localhost ports and routes messages to a single valkey instance on localhost.
---
# The list of sources
sources:
  - Valkey:
      name: "valkey"
      listen_addr: "127.0.0.1:1000"
      chain:
        - QueryCounter:
            name: "Main chain"
        - ValkeySinkSingle:
            remote_address: "127.0.0.1:6379"
            connect_timeout_ms: 3000

  - Valkey:
      name: "valkey"
      listen_addr: "127.0.0.1:1001"
      chain:
        - ValkeySinkSingle:
            remote_address: "127.0.0.1:6379"
            connect_timeout_ms: 3000
"#;
        let topology = load(text).unwrap();
        assert_eq!(topology.sources.len(), 2);
        let first = &topology.sources[0];
        assert_eq!(first.connection_limit, 512);
        assert!(!first.hard_connection_limit);
        assert_eq!(first.timeout, None);
        assert_eq!(first.chain.len(), 2);
    }

    /// The guide's Valkey source block and transform snippets, with its chain filled in.
    #[test]
    fn guide_source_and_transform_snippets_load() {
        let text = r#"
sources:
  - Valkey:
      # The address to listen from
      listen_addr: "127.0.0.1:6379"
      connection_limit: 512
      hard_connection_limit: false
      # timeout: 60
      chain:
        - DebugPrinter
        - QueryCounter:
            # this name will be logged with the query count
            name: "DR chain"
        - QueryTypeFilter:
            # only allow read messages through with an allow list
            AllowList: [Read]
        - QueryTypeFilter:
            DenyList: [Write, ReadWrite, SchemaChange, PubSubMessage]
        - ValkeySinkSingle:
            # The IP address and port of the upstream valkey node/service.
            remote_address: "127.0.0.1:6379"
            connect_timeout_ms: 3000
  - Valkey:
      listen_addr: "127.0.0.1:6380"
      timeout: 60
      chain:
        - NullSink
  - Valkey:
      listen_addr: "127.0.0.1:6381"
      chain:
        - DebugReturner:
            Valkey: "42"
  - Valkey:
      listen_addr: "127.0.0.1:6382"
      chain:
        - DebugReturner:
            Fail
"#;
        let topology = load(text).unwrap();
        assert_eq!(topology.sources.len(), 4);
    }

    #[derive(Debug, serde::Deserialize)]
    struct CassandraOnly {}

    impl TransformConfig for CassandraOnly {
        const NAME: &'static str = "CassandraOnly";
        const TERMINATING: bool = true;
        const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra];
        fn build(&self, _: &BuildContext) -> anyhow::Result<Box<dyn TransformBuilder>> {
            anyhow::bail!("not for tests")
        }
    }

    #[test]
    fn wrong_protocol_transform_is_an_error() {
        let mut r = registry();
        r.register::<CassandraOnly>();
        let text = "sources:\n  - Valkey:\n      listen_addr: \"127.0.0.1:1\"\n      chain:\n        - CassandraOnly\n";
        let err = Topology::from_str("t.yaml", text, &r).unwrap_err();
        assert_eq!(err.path, "sources[0].Valkey.chain[0]");
        assert_eq!(err.reason, "CassandraOnly cannot be used in a Valkey chain");
        assert_eq!(
            err.to_string(),
            "t.yaml: sources[0].Valkey.chain[0]: CassandraOnly cannot be used in a Valkey chain"
        );
    }

    #[test]
    fn errors_carry_the_yaml_path_of_nested_fields() {
        let text = "sources:\n  - Valkey:\n      listen_addr: \"127.0.0.1:1\"\n      chain:\n        - ValkeySinkSingle:\n            remote_address: \"127.0.0.1:1\"\n            connect_timeout_ms: soon\n";
        let err = load(text).unwrap_err();
        assert_eq!(err.path, "sources[0].Valkey.chain[0].ValkeySinkSingle.connect_timeout_ms");
        assert!(err.reason.contains("invalid type"), "{}", err.reason);
    }

    #[test]
    fn an_unresolvable_upstream_is_an_error_at_load() {
        let text = "sources:\n  - Valkey:\n      listen_addr: \"127.0.0.1:1\"\n      chain:\n        - ValkeySinkSingle:\n            remote_address: \"nowhere\"\n";
        let err = load(text).unwrap_err();
        assert_eq!(err.path, "sources[0].Valkey.chain[0].ValkeySinkSingle");
        assert!(err.reason.starts_with("remote_address \"nowhere\" is not a reachable host:port: "), "{}", err.reason);
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = Topology::load(Path::new("/nonexistent/topology.yaml"), &registry()).unwrap_err();
        assert_eq!(err.file, "/nonexistent/topology.yaml");
        assert!(err.reason.starts_with("cannot read the file"));
    }

    #[test]
    fn memory_limits_default_to_the_servers_and_are_checked() {
        let source = |kind: &str, extra: &str| {
            let sink =
                if kind == "Kafka" { "KafkaSinkSingle:\n            destination_port: 9092" } else { "NullSink" };
            format!(
                "sources:\n  - {kind}:\n      listen_addr: \"127.0.0.1:1\"\n{extra}      chain:\n        - {sink}\n"
            )
        };
        let kafka = load(&source("Kafka", "")).unwrap();
        assert_eq!(kafka.sources[0].max_request_bytes, 100 * 1024 * 1024 + 4);
        assert_eq!(kafka.sources[0].max_reply_backlog_bytes, 16 * 1024 * 1024);
        let valkey =
            load(&source("Valkey", "      max_request_bytes: 65536\n      max_reply_backlog_bytes: 1048576\n"));
        let valkey = valkey.unwrap();
        assert_eq!((valkey.sources[0].max_request_bytes, valkey.sources[0].max_reply_backlog_bytes), (65536, 1 << 20));
        let err = load(&source("Cassandra", "      max_request_bytes: 300000000\n")).unwrap_err();
        assert_eq!(err.path, "sources[0].Cassandra.max_request_bytes");
        assert_eq!(err.reason, "must be from 65536 to 268435465 for Cassandra sources");
        let err = load(&source("Valkey", "      max_reply_backlog_bytes: 10\n")).unwrap_err();
        assert_eq!(err.path, "sources[0].Valkey.max_reply_backlog_bytes");
    }
}
