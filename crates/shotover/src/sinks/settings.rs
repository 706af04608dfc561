//! The connection settings every sink shares (`remote_address`, `tls`, `connect_timeout_ms`,
//! `read_timeout`), checked and resolved once when the topology is loaded: addresses are
//! looked up and TLS files read there, never on a worker core.
//!
//! A sink's config keeps its YAML fields and, from `validate`, what they resolve to:
//!
//! ```ignore
//! #[serde(skip)]
//! upstream: Resolved<Upstream>,
//!
//! fn validate(&mut self) -> Result<()> {
//!     let upstream = Upstream::resolve(&self.remote_address, self.tls.as_ref(), self.connect_timeout_ms, None)?;
//!     self.upstream.set(upstream);
//!     Ok(())
//! }
//! ```
//!
//! Errors name the YAML field (`remote_address "x" is not a reachable host:port: …`,
//! `connect_timeout_ms: must be at least 1`); the topology loader adds the transform's path.

use super::UpstreamTls;
use crate::tls::{server_name, TlsConnectorConfig};
use anyhow::{anyhow, bail, Context as _, Result};
use futures_rustls::TlsConnector;
use rustls_pki_types::ServerName;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// `connect_timeout_ms` when a sink's YAML leaves it out.
pub fn default_connect_timeout_ms() -> u64 {
    3000
}

/// TLS and timeouts of a sink's connections, checked and built once.
#[derive(Clone)]
pub struct ConnectSettings {
    /// Built from the `tls` block. None: plain TCP.
    pub tls: Option<TlsConnector>,
    /// `connect_timeout_ms`: for the TCP connection, and again for the TLS handshake.
    pub connect_timeout: Duration,
    /// `read_timeout` (seconds in YAML), for the sinks that have one.
    pub read_timeout: Option<Duration>,
}

impl ConnectSettings {
    /// Checks the settings and builds the TLS connector (reading its files).
    pub fn resolve(
        tls: Option<&TlsConnectorConfig>,
        connect_timeout_ms: u64,
        read_timeout: Option<u64>,
    ) -> Result<Self> {
        let tls = tls.map(|tls| tls.build().context("tls")).transpose()?;
        if connect_timeout_ms == 0 {
            bail!("connect_timeout_ms: must be at least 1");
        }
        if read_timeout == Some(0) {
            bail!("read_timeout: must be at least 1 second; leave it out for no limit");
        }
        Ok(ConnectSettings {
            tls,
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            read_timeout: read_timeout.map(Duration::from_secs),
        })
    }

    /// These settings for the upstream at `address`. With TLS, the upstream's certificate
    /// must name `server_name()` (not called without TLS).
    pub fn upstream(
        &self,
        address: SocketAddr,
        server_name: impl FnOnce() -> Result<ServerName<'static>>,
    ) -> Result<Upstream> {
        let tls = match &self.tls {
            Some(connector) => Some(UpstreamTls { connector: connector.clone(), server_name: server_name()? }),
            None => None,
        };
        Ok(Upstream { address, tls, connect_timeout: self.connect_timeout, read_timeout: self.read_timeout })
    }
}

/// One upstream of a sink: its address, and how to connect to it.
#[derive(Clone)]
pub struct Upstream {
    pub address: SocketAddr,
    pub tls: Option<UpstreamTls>,
    pub connect_timeout: Duration,
    pub read_timeout: Option<Duration>,
}

impl Upstream {
    /// A sink's `remote_address` (`host:port`, looked up now) with its connection settings.
    /// With TLS, the server name is the host part of `remote_address`.
    pub fn resolve(
        remote_address: &str,
        tls: Option<&TlsConnectorConfig>,
        connect_timeout_ms: u64,
        read_timeout: Option<u64>,
    ) -> Result<Upstream> {
        let settings = ConnectSettings::resolve(tls, connect_timeout_ms, read_timeout)?;
        let address = resolve_address(remote_address).map_err(|e| anyhow!("remote_address {e:#}"))?;
        settings.upstream(address, || tls_server_name(remote_address))
    }
}

/// `host:port`, looked up now (call it at load, never on a worker core).
pub fn resolve_address(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("{address:?} is not a reachable host:port"))?
        .next()
        .ok_or_else(|| anyhow!("{address:?} resolves to no address"))
}

/// The TLS server name for `host:port`: the host part.
pub fn tls_server_name(address: &str) -> Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    server_name(host.trim_start_matches('[').trim_end_matches(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(result: Result<Upstream>) -> String {
        format!("{:#}", result.err().expect("an error"))
    }

    #[test]
    fn resolves_address_and_durations() {
        let upstream = Upstream::resolve("127.0.0.1:6379", None, 1500, Some(60)).unwrap();
        assert_eq!(upstream.address, "127.0.0.1:6379".parse().unwrap());
        assert_eq!(upstream.connect_timeout, Duration::from_millis(1500));
        assert_eq!(upstream.read_timeout, Some(Duration::from_secs(60)));
        assert!(upstream.tls.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(Upstream::resolve("nowhere", None, 3000, None))
            .starts_with("remote_address \"nowhere\" is not a reachable host:port: "));
        assert_eq!(err(Upstream::resolve("127.0.0.1:1", None, 0, None)), "connect_timeout_ms: must be at least 1");
        assert_eq!(
            err(Upstream::resolve("127.0.0.1:1", None, 1, Some(0))),
            "read_timeout: must be at least 1 second; leave it out for no limit"
        );
    }

    #[test]
    fn server_name_is_the_host() {
        assert_eq!(tls_server_name("example.com:6379").unwrap(), ServerName::try_from("example.com").unwrap());
        assert_eq!(tls_server_name("[::1]:6379").unwrap(), ServerName::try_from("::1").unwrap());
    }
}
