//! KafkaSinkSingle: sends every request to the Kafka broker on the proxy's own machine.
//!
//! ```yaml
//! - KafkaSinkSingle:
//!     destination_port: 9092
//!     connect_timeout_ms: 3000
//!     # read_timeout: 60
//!     # tls: {...}
//! ```
//!
//! - The broker is at the source's listen IP (127.0.0.1 when the source listens on every
//!   address) on `destination_port`. Each client connection gets its own broker connection.
//! - So that clients connect only through proxies, the brokers named in Metadata,
//!   FindCoordinator and DescribeCluster responses get the source's port (each broker keeps
//!   its host: every broker has a proxy in front of it on the same port).
//! - Responses come back in request order, as the broker sends them; Produce with acks=0
//!   gets none.
//! - A broker that cannot be reached, or a connection lost before the response, gets the
//!   request's response type with NETWORK_EXCEPTION, counted in `failed_requests`; the next
//!   request connects again. With `read_timeout`, a response later than that many seconds
//!   closes the client connection.

use crate::chain::{BuildContext, ChainState, CloseConnection, Transform, TransformBuilder, TransformConfig};
use crate::message::{Message, Protocol, ProxyError};
use crate::sinks::kafka::KafkaConnection;
use crate::sinks::UpstreamTls;
use crate::tls::TlsConnectorConfig;
use anyhow::{anyhow, Context as _, Result};
use async_trait::async_trait;
use bytes::BytesMut;
use prometheus::IntCounter;
use serde::Deserialize;
use shotover_protocols::kafka::header::request_ids;
use shotover_protocols::kafka::rewrite::{names_brokers, rewrite_brokers};
use shotover_protocols::kafka::ApiKey;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSingleConfig {
    /// The broker's port, on the proxy's machine.
    pub destination_port: u16,
    /// Milliseconds to wait for a connection. Default 3000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Seconds to wait for a response before closing the client connection. Default: no limit.
    #[serde(default)]
    pub read_timeout: Option<u64>,
    /// TLS to the broker. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
}

fn default_connect_timeout_ms() -> u64 {
    3000
}

impl TransformConfig for KafkaSinkSingleConfig {
    fn name(&self) -> &'static str {
        "KafkaSinkSingle"
    }
    fn is_terminating(&self) -> bool {
        true
    }
    fn protocols(&self) -> &'static [Protocol] {
        &[Protocol::Kafka]
    }
    fn validate(&self) -> Result<()> {
        if let Some(tls) = &self.tls {
            tls.build().context("tls")?;
        }
        if self.destination_port == 0 {
            return Err(anyhow!("destination_port: must be a port number, 1 to 65535"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(anyhow!("connect_timeout_ms: must be at least 1"));
        }
        if self.read_timeout == Some(0) {
            return Err(anyhow!("read_timeout: must be at least 1 second; leave it out for no limit"));
        }
        Ok(())
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        let listen = ctx.listen_addr.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let ip = if listen.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { listen.ip() };
        let address = SocketAddr::new(ip, self.destination_port);
        let tls = match &self.tls {
            Some(tls) => {
                Some(UpstreamTls { connector: tls.build()?, server_name: crate::tls::server_name(&ip.to_string())? })
            }
            None => None,
        };
        Ok(Box::new(KafkaSinkSingleBuilder {
            tls,
            address,
            proxy_port: i32::from(listen.port()),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            read_timeout: self.read_timeout.map(Duration::from_secs),
            failed_requests: ctx.metrics.failed_requests.with_label_values(&["KafkaSinkSingle", &ctx.chain_name]),
        }))
    }
}

struct KafkaSinkSingleBuilder {
    tls: Option<UpstreamTls>,
    address: SocketAddr,
    proxy_port: i32,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    failed_requests: IntCounter,
}

impl TransformBuilder for KafkaSinkSingleBuilder {
    fn build(&self) -> Box<dyn Transform> {
        Box::new(KafkaSinkSingle {
            tls: self.tls.clone(),
            address: self.address,
            proxy_port: self.proxy_port,
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            connection: None,
            write_buf: BytesMut::new(),
            failed_requests: self.failed_requests.clone(),
        })
    }
}

pub struct KafkaSinkSingle {
    tls: Option<UpstreamTls>,
    address: SocketAddr,
    proxy_port: i32,
    connect_timeout: Duration,
    read_timeout: Option<Duration>,
    connection: Option<KafkaConnection>,
    write_buf: BytesMut,
    failed_requests: IntCounter,
}

impl KafkaSinkSingle {
    /// Error responses for `requests` (those that expect one), counted as failed.
    fn fail(&self, requests: &[Message], text: &str) -> Vec<Message> {
        requests
            .iter()
            .filter(|r| r.expects_response())
            .map(|r| {
                self.failed_requests.inc();
                Message::error_to(r, ProxyError::Upstream, text)
            })
            .collect()
    }
}

#[async_trait(?Send)]
impl Transform for KafkaSinkSingle {
    fn name(&self) -> &'static str {
        "KafkaSinkSingle"
    }

    async fn transform(&mut self, state: &mut ChainState<'_>) -> Result<Vec<Message>> {
        let requests = std::mem::take(&mut state.requests);
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        if self.connection.is_none() {
            match KafkaConnection::connect(self.address, self.connect_timeout, self.tls.as_ref()).await {
                Ok(conn) => self.connection = Some(conn),
                Err(e) => {
                    tracing::warn!("cannot connect to the Kafka broker {}: {e}", self.address);
                    let text = format!("shotover: cannot connect to the Kafka broker {}: {e}", self.address);
                    return Ok(self.fail(&requests, &text));
                }
            }
        }
        self.write_buf.clear();
        for request in &requests {
            if let Err(e) = request.encode_into(&mut self.write_buf) {
                return Err(anyhow!("cannot encode a Kafka request: {e}"));
            }
        }
        let Some(conn) = self.connection.as_mut() else { return Ok(self.fail(&requests, "not connected")) };
        if let Err(e) = conn.write_all(&self.write_buf).await {
            self.connection = None;
            tracing::warn!("sending to the Kafka broker {} failed: {e}", self.address);
            return Ok(self.fail(&requests, &format!("shotover: sending to the Kafka broker failed: {e}")));
        }
        let mut responses = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            if !request.expects_response() {
                continue;
            }
            let Some(conn) = self.connection.as_mut() else { break };
            let next = match self.read_timeout {
                None => conn.next().await,
                Some(limit) => {
                    futures_lite::future::or(conn.next(), async {
                        glommio::timer::sleep(limit).await;
                        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "read_timeout"))
                    })
                    .await
                }
            };
            let raw = match next {
                Ok(raw) => raw,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(CloseConnection(format!(
                        "no response from the Kafka broker within the read_timeout of {:?}",
                        self.read_timeout.unwrap_or_default()
                    ))
                    .into())
                }
                Err(e) => {
                    self.connection = None;
                    tracing::warn!("the connection to the Kafka broker {} failed: {e}", self.address);
                    let rest = requests.get(i..).unwrap_or_default();
                    responses.extend(self.fail(rest, &format!("shotover: the Kafka broker connection failed: {e}")));
                    return Ok(responses);
                }
            };
            let ids = request.raw().and_then(|r| request_ids(r).ok());
            let (key, version) = ids.map_or((-1, 0), |ids| (ids.api_key, ids.api_version));
            let raw = match ApiKey::try_from(key) {
                Ok(api_key) if names_brokers(api_key) => {
                    match rewrite_brokers(&raw, api_key, version, "", self.proxy_port) {
                        Ok(Some(rewritten)) => rewritten,
                        Ok(None) => raw,
                        Err(e) => {
                            tracing::warn!("cannot rewrite the brokers of a {api_key:?} v{version} response: {e}");
                            raw
                        }
                    }
                }
                _ => raw,
            };
            let mut response = Message::from_kafka_response(raw, key, version, Instant::now());
            response.set_request_id(request.id());
            responses.push(response);
        }
        Ok(responses)
    }
}
