//! The configuration of KafkaSinkCluster: its fields, their checks, and what each worker
//! core builds from them.

use super::shared::{Shared, ShotoverNode};
use super::KafkaSinkCluster;
use crate::chain::{BuildContext, Resolved, TransformBuilder, TransformConfig};
use crate::message::Protocol;
use crate::sinks::{resolve_address, ConnectSettings};
use crate::tls::TlsConnectorConfig;
use anyhow::{anyhow, bail, Context as _, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkClusterConfig {
    /// Brokers to ask for the cluster's metadata first, tried in order.
    pub first_contact_points: Vec<String>,
    /// Every Shotover node in front of the cluster, this one included.
    pub shotover_nodes: Vec<ShotoverNodeConfig>,
    /// The `broker_id` of this proxy's entry in `shotover_nodes`.
    pub local_shotover_broker_id: i32,
    /// Milliseconds to wait for a connection to a broker before trying the next. Default 3000.
    #[serde(default = "crate::sinks::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Seconds a request may wait for its response before the client connection is closed.
    /// Default: no limit.
    #[serde(default)]
    pub read_timeout: Option<u64>,
    /// Milliseconds between checks of the Shotover peers, one peer per check, round robin.
    /// Absent: peers are not checked and always count as up.
    #[serde(default)]
    pub check_shotover_peers_delay_ms: Option<u64>,
    /// TLS to the brokers. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
    /// SASL SCRAM checked against one broker, then delegation tokens made over mTLS for the
    /// other connections.
    #[serde(default)]
    pub authorize_scram_over_mtls: Option<ScramOverMtlsConfig>,
    #[serde(skip)]
    resolved: Resolved<Settings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShotoverNodeConfig {
    /// `host:port` that clients are told to connect to.
    pub address_for_client: String,
    /// `host:port` the other Shotover nodes check this one at. Default: `address_for_client`.
    #[serde(default)]
    pub address_for_peers: Option<String>,
    pub rack: String,
    pub broker_id: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScramOverMtlsConfig {
    pub mtls_port_contact_points: Vec<String>,
    pub tls: TlsConnectorConfig,
    #[serde(default = "default_token_lifetime")]
    pub delegation_token_lifetime_seconds: u64,
}

fn default_token_lifetime() -> u64 {
    86_400
}

/// The configuration, resolved once at load.
pub(super) struct Settings {
    pub(super) contact: Vec<SocketAddr>,
    pub(super) shotover: Vec<ShotoverNode>,
    pub(super) local: usize,
    pub(super) connect: ConnectSettings,
    pub(super) check_peers_every: Option<Duration>,
    pub(super) scram: Option<ScramSettings>,
}

/// `authorize_scram_over_mtls`, resolved.
pub(super) struct ScramSettings {
    pub(super) contact: Vec<SocketAddr>,
    pub(super) tls: futures_rustls::TlsConnector,
    pub(super) lifetime: Duration,
}

impl ScramOverMtlsConfig {
    fn resolve(&self) -> Result<ScramSettings> {
        if self.mtls_port_contact_points.is_empty() {
            bail!("mtls_port_contact_points: give at least one broker's mTLS port");
        }
        let contact = (self.mtls_port_contact_points.iter().enumerate())
            .map(|(i, address)| resolve_address(address).with_context(|| format!("mtls_port_contact_points[{i}]")))
            .collect::<Result<_>>()?;
        if self.tls.certificate_path.is_none() {
            // The brokers know the proxy by its certificate: without one it cannot make tokens.
            bail!("tls: certificate_path and private_key_path are needed (the mTLS port knows the proxy by its certificate)");
        }
        let tls = self.tls.build().context("tls")?;
        if self.delegation_token_lifetime_seconds == 0 {
            bail!("delegation_token_lifetime_seconds: must be at least 1");
        }
        Ok(ScramSettings { contact, tls, lifetime: Duration::from_secs(self.delegation_token_lifetime_seconds) })
    }
}

/// Splits `host:port` into its host and port, without looking the host up.
fn host_and_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

impl TransformConfig for KafkaSinkClusterConfig {
    const NAME: &'static str = "KafkaSinkCluster";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Kafka];

    fn validate(&mut self) -> Result<()> {
        if self.first_contact_points.is_empty() {
            bail!("first_contact_points: give at least one broker");
        }
        let contact = (self.first_contact_points.iter().enumerate())
            .map(|(i, address)| resolve_address(address).with_context(|| format!("first_contact_points[{i}]")))
            .collect::<Result<_>>()?;
        if self.shotover_nodes.is_empty() {
            bail!("shotover_nodes: give at least this Shotover node");
        }
        let mut shotover: Vec<ShotoverNode> = Vec::with_capacity(self.shotover_nodes.len());
        for (i, node) in self.shotover_nodes.iter().enumerate() {
            let (host, port) = host_and_port(&node.address_for_client).ok_or_else(|| {
                anyhow!("shotover_nodes[{i}].address_for_client: {:?} is not host:port", node.address_for_client)
            })?;
            let peers = node.address_for_peers.as_deref().unwrap_or(&node.address_for_client);
            let field = if node.address_for_peers.is_some() { "address_for_peers" } else { "address_for_client" };
            let for_peers = resolve_address(peers).with_context(|| format!("shotover_nodes[{i}].{field}"))?;
            if shotover.iter().any(|n| n.broker_id == node.broker_id) {
                bail!("shotover_nodes[{i}].broker_id: {} is given to another Shotover node too", node.broker_id);
            }
            shotover.push(ShotoverNode {
                host: host.into(),
                port: i32::from(port),
                for_peers,
                rack: node.rack.as_str().into(),
                broker_id: node.broker_id,
            });
        }
        let local = shotover.iter().position(|n| n.broker_id == self.local_shotover_broker_id).ok_or_else(|| {
            anyhow!(
                "local_shotover_broker_id: {} is not the broker_id of any entry of shotover_nodes",
                self.local_shotover_broker_id
            )
        })?;
        let connect = ConnectSettings::resolve(self.tls.as_ref(), self.connect_timeout_ms, self.read_timeout)?;
        let check_peers_every = match self.check_shotover_peers_delay_ms {
            Some(0) => bail!("check_shotover_peers_delay_ms: must be at least 1; leave it out to not check peers"),
            other => other.map(Duration::from_millis),
        };
        let scram = (self.authorize_scram_over_mtls.as_ref())
            .map(|s| s.resolve().context("authorize_scram_over_mtls"))
            .transpose()?;
        self.resolved.set(Settings { contact, shotover, local, connect, check_peers_every, scram });
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let settings = self.resolved.get()?;
        let failed_requests = ctx.metrics.failed_requests.with_label_values(&[Self::NAME, &ctx.chain_name]);
        let shared = Rc::new(Shared::new(settings, failed_requests, ctx.metrics.source_to_sink(Self::NAME)));
        if let Some(every) = settings.check_peers_every {
            crate::rt::spawn_local(super::shared::check_peers(Rc::downgrade(&shared), every)).detach();
        }
        Ok(Box::new(move || KafkaSinkCluster::new(shared.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::TransformConfig;

    /// The user guide's example, as written there (comments left out).
    const GUIDE_EXAMPLE: &str = r#"
first_contact_points: ["172.16.1.2:9092", "172.16.1.3:9092"]
shotover_nodes:
  - address_for_client: "127.0.0.1:9092"
    address_for_peers: "127.0.0.1:9092"
    rack: "rack0"
    broker_id: 0
local_shotover_broker_id: 0
connect_timeout_ms: 3000
check_shotover_peers_delay_ms: 3000
"#;

    #[test]
    fn the_guides_example_loads() {
        let mut config: KafkaSinkClusterConfig = serde_yaml_ng::from_str(GUIDE_EXAMPLE).unwrap();
        config.validate().unwrap();
        let settings = config.resolved.get().unwrap();
        assert_eq!(settings.contact.len(), 2);
        assert_eq!((settings.local, &*settings.shotover[0].rack, settings.shotover[0].port), (0, "rack0", 9092));
        assert_eq!(settings.check_peers_every, Some(Duration::from_secs(3)));
        assert_eq!(config.read_timeout, None);
    }

    #[test]
    fn errors_name_the_field() {
        let load = |yaml: &str| {
            let mut config: KafkaSinkClusterConfig = serde_yaml_ng::from_str(yaml).unwrap();
            config.validate().map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        let node = "shotover_nodes: [{address_for_client: \"127.0.0.1:9092\", rack: r, broker_id: 0}]";
        let err = load(&format!("first_contact_points: [\"127.0.0.1:1\"]\n{node}\nlocal_shotover_broker_id: 3"));
        assert!(err.unwrap_err().starts_with("local_shotover_broker_id: 3 is not"));
        let err = load(&format!("first_contact_points: []\n{node}\nlocal_shotover_broker_id: 0"));
        assert!(err.unwrap_err().starts_with("first_contact_points:"));
        let bad = "shotover_nodes: [{address_for_client: \"nowhere\", rack: r, broker_id: 0}]";
        let err = load(&format!("first_contact_points: [\"127.0.0.1:1\"]\n{bad}\nlocal_shotover_broker_id: 0"));
        assert!(err.unwrap_err().starts_with("shotover_nodes[0].address_for_client:"));
        let err = load(&format!(
            "first_contact_points: [\"127.0.0.1:1\"]\n{node}\nlocal_shotover_broker_id: 0\ncheck_shotover_peers_delay_ms: 0"
        ));
        assert!(err.unwrap_err().starts_with("check_shotover_peers_delay_ms:"));
        let scram = |block: &str| {
            load(&format!(
                "first_contact_points: [\"127.0.0.1:1\"]\n{node}\nlocal_shotover_broker_id: 0\nauthorize_scram_over_mtls:\n{block}"
            ))
            .unwrap_err()
        };
        let err = scram("  mtls_port_contact_points: []\n  tls: {certificate_authority_path: ca.crt}");
        assert!(err.starts_with("authorize_scram_over_mtls: mtls_port_contact_points:"), "{err}");
        let err = scram("  mtls_port_contact_points: [\"127.0.0.1:1\"]\n  tls: {certificate_authority_path: ca.crt}");
        assert!(err.starts_with("authorize_scram_over_mtls: tls: certificate_path"), "{err}");
    }

    #[test]
    fn host_and_port_keeps_names_unresolved() {
        assert_eq!(host_and_port("kafka-1.example:9092"), Some(("kafka-1.example".into(), 9092)));
        assert_eq!(host_and_port("[::1]:9092"), Some(("::1".into(), 9092)));
        assert_eq!(host_and_port(":9092"), None);
        assert_eq!(host_and_port("h:99999"), None);
    }
}
