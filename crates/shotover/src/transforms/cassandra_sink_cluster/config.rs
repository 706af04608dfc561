//! The configuration of CassandraSinkCluster: its fields, their checks, and what each
//! worker core builds from them.

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraSinkClusterConfig {
    /// Nodes to open the control connection to, tried in order.
    pub first_contact_points: Vec<String>,
    /// Every Shotover node in front of the cluster, this one included.
    pub shotover_nodes: Vec<ShotoverNodeConfig>,
    /// The `host_id` of this proxy's entry in `shotover_nodes`.
    pub local_shotover_host_id: String,
    /// Milliseconds to wait for a connection to a node before trying the next. Default 3000.
    #[serde(default = "crate::sinks::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Seconds a request may wait for its answer before the client connection is closed.
    /// Default: no limit.
    #[serde(default)]
    pub read_timeout: Option<u64>,
    /// TLS to the nodes. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
    #[serde(skip)]
    resolved: Resolved<Settings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShotoverNodeConfig {
    pub address: String,
    pub data_center: String,
    pub rack: String,
    pub host_id: String,
}

/// The configuration, resolved once at load.
pub(super) struct Settings {
    contact: Vec<SocketAddr>,
    /// Every Shotover node, in configuration order.
    shotover: Vec<ShotoverNode>,
    local: usize,
    connect: ConnectSettings,
}

/// Parses a UUID written `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub(super) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TransformConfig for CassandraSinkClusterConfig {
    const NAME: &'static str = "CassandraSinkCluster";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Cassandra];

    fn validate(&mut self) -> Result<()> {
        if self.first_contact_points.is_empty() {
            bail!("first_contact_points: give at least one node");
        }
        let contact = (self.first_contact_points.iter().enumerate())
            .map(|(i, address)| resolve_address(address).with_context(|| format!("first_contact_points[{i}]")))
            .collect::<Result<_>>()?;
        if self.shotover_nodes.is_empty() {
            bail!("shotover_nodes: give at least this Shotover node");
        }
        let mut shotover = Vec::with_capacity(self.shotover_nodes.len());
        for (i, node) in self.shotover_nodes.iter().enumerate() {
            let address = resolve_address(&node.address).with_context(|| format!("shotover_nodes[{i}].address"))?;
            let host_id = parse_uuid(&node.host_id).ok_or_else(|| {
                anyhow!(
                    "shotover_nodes[{i}].host_id: {:?} is not a UUID (like 2dd022d6-2937-4754-89d6-02d2933a8f7a)",
                    node.host_id
                )
            })?;
            if shotover.iter().any(|n: &ShotoverNode| n.host_id == host_id) {
                bail!("shotover_nodes[{i}].host_id: {} is given to another Shotover node too", node.host_id);
            }
            shotover.push(ShotoverNode {
                address,
                data_center: node.data_center.clone(),
                rack: node.rack.clone(),
                host_id,
                tokens: Vec::new(),
            });
        }
        let local_id = parse_uuid(&self.local_shotover_host_id)
            .ok_or_else(|| anyhow!("local_shotover_host_id: {:?} is not a UUID", self.local_shotover_host_id))?;
        let local = shotover.iter().position(|n| n.host_id == local_id).ok_or_else(|| {
            anyhow!(
                "local_shotover_host_id: {} is not the host_id of any entry of shotover_nodes",
                self.local_shotover_host_id
            )
        })?;
        let connect = ConnectSettings::resolve(self.tls.as_ref(), self.connect_timeout_ms, self.read_timeout)?;
        self.resolved.set(Settings { contact, shotover, local, connect });
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let settings = self.resolved.get()?;
        let (control_tx, control_rx) = local_channel::bounded(64);
        let local = settings.shotover.get(settings.local).cloned().ok_or_else(|| anyhow!("no local Shotover node"))?;
        let shared = Rc::new(Shared {
            contact: settings.contact.clone(),
            local,
            shotover: settings.shotover.clone(),
            local_index: settings.local,
            connect_timeout: settings.connect.connect_timeout,
            read_timeout: settings.connect.read_timeout,
            tls: settings.connect.tls.clone(),
            ring: RefCell::new(Rc::new(Ring::default())),
            ring_known: Cell::new(false),
            ring_waiters: RefCell::new(Vec::new()),
            view: RefCell::new(None),
            down: RefCell::new(HashMap::new()),
            control: control_tx,
            control_has_session: Cell::new(false),
            prepared: RefCell::new(HashMap::new()),
            partition_keys: RefCell::new(HashMap::new()),
            key_waiters: RefCell::new(Vec::new()),
            agreement_asked: Cell::new(0),
            agreement_done: Cell::new(0),
            agreement_waiters: RefCell::new(Vec::new()),
            turn: Cell::new(0),
            failed_requests: ctx.metrics.failed_requests.with_label_values(&[Self::NAME, &ctx.chain_name]),
            source_to_sink: ctx.metrics.source_to_sink(Self::NAME),
        });
        crate::rt::spawn_local(control::run(Rc::downgrade(&shared), control_rx)).detach();
        Ok(Box::new(move || CassandraSinkCluster::new(shared.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::TransformConfig;

    /// The user guide's example, as written there (comments left out).
    const GUIDE_EXAMPLE: &str = r#"
first_contact_points: ["172.16.1.2:9042", "172.16.1.3:9042"]
shotover_nodes:
  - address: "127.0.0.1:9042"
    data_center: "dc1"
    rack: "rack1"
    host_id: "2dd022d6-2937-4754-89d6-02d2933a8f7a"
local_shotover_host_id: "2dd022d6-2937-4754-89d6-02d2933a8f7a"
connect_timeout_ms: 3000
"#;

    #[test]
    fn the_guides_example_loads() {
        let mut config: CassandraSinkClusterConfig = serde_yaml_ng::from_str(GUIDE_EXAMPLE).unwrap();
        config.validate().unwrap();
        let settings = config.resolved.get().unwrap();
        assert_eq!(settings.contact.len(), 2);
        assert_eq!((settings.local, settings.shotover[0].data_center.as_str()), (0, "dc1"));
        assert_eq!(config.read_timeout, None);
    }

    #[test]
    fn uuids_are_read_in_their_usual_form_only() {
        assert_eq!(parse_uuid("00000000-0000-0000-0000-0000000000ff").unwrap()[15], 0xff);
        assert!(parse_uuid("2dd022d629374754-89d6-02d2933a8f7a").is_none());
        assert!(parse_uuid("2dd022d6-2937-4754-89d6-02d2933a8f7g").is_none());
        assert!(parse_uuid("").is_none());
    }
}
