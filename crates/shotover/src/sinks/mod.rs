//! Upstream connections used by sink transforms.
//!
//! - [`valkey`]: one connection to a Valkey server that reads whole RESP messages.
//! - [`valkey_follow`]: which upstream messages answer which request on a client's own
//!   Valkey connection, from what the server sends.
//! - [`valkey_slots`]: the slot map of a Valkey Cluster: which master owns which slot.
//! - [`valkey_mux`]: one connection to a Valkey node shared by the clients of a core
//!   (ValkeySinkCluster), replies handed back in the order requests were queued.
//! - [`cassandra`]: one connection to a Cassandra node that reads whole CQL frames.
//! - [`kafka`]: one connection to a Kafka broker that reads whole messages.
//! - [`settings`]: the connection settings every sink shares, resolved once at load.

pub mod cassandra;
pub mod kafka;
pub mod settings;
pub mod valkey;
pub mod valkey_follow;
pub mod valkey_mux;
pub mod valkey_slots;

#[cfg(test)]
pub(crate) mod testing;

pub use settings::{default_connect_timeout_ms, resolve_address, tls_server_name, ConnectSettings, Upstream};

use crate::rt::TcpStream;
use crate::stream::Stream;
use futures_rustls::TlsConnector;
use rustls_pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// What a sink needs to open TLS connections to its upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

/// Connects to `addr` (and completes the TLS handshake, with `tls`), giving up after `timeout`.
pub async fn connect_stream(addr: SocketAddr, timeout: Duration, tls: Option<&UpstreamTls>) -> io::Result<Stream> {
    let tcp = TcpStream::connect_timeout(addr, timeout).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        None => Stream::Plain(tcp),
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
            let timed_out = async {
                crate::rt::sleep(timeout).await;
                Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
            };
            let tls_stream = futures_lite::future::or(handshake, timed_out)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {addr} failed: {e}")))?;
            Stream::TlsClient(Box::new(tls_stream))
        }
    })
}
