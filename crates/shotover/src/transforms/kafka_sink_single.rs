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
//! - Requests are written as they come and responses go up as the broker sends them, in
//!   request order; Produce with acks=0 gets none. The sink does not wait for a batch's
//!   answers before taking the client's next batch (answers that arrive later come up
//!   through `poll_pushed`), so the client's pipelined requests (librdkafka keeps up to 5
//!   Produce requests in flight) reach the broker while it works on earlier ones, as they
//!   would without the proxy. A run with `ChainState::complete` waits for every answer.
//! - A broker that cannot be reached, or a connection lost before the response, gets the
//!   request's response type with REQUEST_TIMED_OUT, counted in `failed_requests`; the next
//!   request connects again. A broker that cannot be reached also closes the client
//!   connection after those answers, as the broker's own refusal would. With
//!   `read_timeout`, a response later than that many seconds closes the client connection.

use crate::chain::{
    BuildContext, ChainError, ChainResult, ChainState, Resolved, Retry, Transform, TransformBuilder, TransformConfig,
};
use crate::message::{Message, Protocol, ProxyError};
use crate::observability::metrics::SourceToSink;
use crate::rt::Timer;
use crate::sinks::kafka::KafkaConnection;
use crate::sinks::{ConnectSettings, Upstream};
use crate::stream::ReadMode;
use crate::tls::TlsConnectorConfig;
use anyhow::{anyhow, Result};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use shotover_protocols::kafka::header::request_ids;
use shotover_protocols::kafka::rewrite::{names_brokers, rewrite_brokers};
use shotover_protocols::kafka::ApiKey;
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkSingleConfig {
    /// The broker's port, on the proxy's machine.
    pub destination_port: u16,
    /// Milliseconds to wait for a connection. Default 3000.
    #[serde(default = "crate::sinks::default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Seconds to wait for a response before closing the client connection. Default: no limit.
    #[serde(default)]
    pub read_timeout: Option<u64>,
    /// TLS to the broker. Absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConnectorConfig>,
    /// `tls` and the timeouts, resolved by `validate`.
    #[serde(skip)]
    settings: Resolved<ConnectSettings>,
}

impl TransformConfig for KafkaSinkSingleConfig {
    const NAME: &'static str = "KafkaSinkSingle";
    const TERMINATING: bool = true;
    const PROTOCOLS: &'static [Protocol] = &[Protocol::Kafka];
    fn validate(&mut self) -> Result<()> {
        let settings = ConnectSettings::resolve(self.tls.as_ref(), self.connect_timeout_ms, self.read_timeout)?;
        if self.destination_port == 0 {
            return Err(anyhow!("destination_port: must be a port number, 1 to 65535"));
        }
        self.settings.set(settings);
        Ok(())
    }
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn TransformBuilder>> {
        // The broker is on the source's machine: its address depends on the source, not on
        // this transform's YAML, and needs no lookup.
        let listen = ctx.listen_addr.unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let ip = if listen.ip().is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { listen.ip() };
        let address = SocketAddr::new(ip, self.destination_port);
        let upstream = Rc::new(self.settings.get()?.upstream(address, || Ok(ServerName::IpAddress(ip.into())))?);
        let proxy_port = i32::from(listen.port());
        let failed_requests = ctx.metrics.failed_requests.with_label_values(&[Self::NAME, &ctx.chain_name]);
        let source_to_sink = ctx.metrics.source_to_sink(Self::NAME);
        Ok(Box::new(move || {
            KafkaSinkSingle::new(upstream.clone(), proxy_port, failed_requests.clone(), source_to_sink.clone())
        }))
    }
}

/// A request written to the broker and waiting for its response.
struct InFlight {
    /// Kept for its api key and version (to read the response) and to build an error
    /// answer if the connection is lost; a clone shares the request's bytes.
    request: Message,
    sent_at: Instant,
}

pub struct KafkaSinkSingle {
    upstream: Rc<Upstream>,
    proxy_port: i32,
    connection: Option<KafkaConnection>,
    write_buf: BytesMut,
    /// Oldest first: the broker answers in this order.
    in_flight: VecDeque<InFlight>,
    /// Responses read and not yet returned up the chain.
    ready: Vec<Message>,
    /// Fires at the read timeout of the oldest request in flight.
    timer: Option<Timer>,
    failed_requests: IntCounter,
    source_to_sink: SourceToSink,
}

impl KafkaSinkSingle {
    fn new(upstream: Rc<Upstream>, proxy_port: i32, failed_requests: IntCounter, source_to_sink: SourceToSink) -> Self {
        KafkaSinkSingle {
            upstream,
            proxy_port,
            connection: None,
            write_buf: BytesMut::new(),
            in_flight: VecDeque::new(),
            ready: Vec::new(),
            timer: None,
            failed_requests,
            source_to_sink,
        }
    }

    /// Connects to the broker. Nothing of the client's requests is written yet: its errors
    /// are retry-safe.
    async fn connect(&self) -> ChainResult<KafkaConnection> {
        let up = &self.upstream;
        KafkaConnection::connect(up.address, up.connect_timeout, up.tls.as_ref()).await.map_err(|e| {
            ChainError::upstream(format!("cannot connect to the Kafka broker {}", up.address)).caused_by(e).retry_safe()
        })
    }

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

    /// The connection is gone: every request in flight gets REQUEST_TIMED_OUT, in order.
    fn fail_in_flight(&mut self, error: &ChainError) {
        self.connection = None;
        self.timer = None;
        let text = format!("shotover: {error}");
        for waiting in std::mem::take(&mut self.in_flight) {
            self.failed_requests.inc();
            self.ready.push(Message::error_to(&waiting.request, ProxyError::Upstream, &text));
        }
    }

    /// Pairs a message from the broker with the oldest request in flight.
    fn accept(&mut self, raw: Bytes) -> ChainResult<()> {
        let Some(waiting) = self.in_flight.pop_front() else {
            return Err(ChainError::upstream("the broker sent a response nobody asked for"));
        };
        self.timer = None;
        let request = waiting.request;
        let ids = request.raw().and_then(|r| request_ids(r).ok());
        let (key, version) = ids.map_or((-1, 0), |ids| (ids.api_key, ids.api_version));
        let raw = match ApiKey::try_from(key) {
            Ok(api_key) if names_brokers(api_key) => match rewrite_brokers(&raw, api_key, version, "", self.proxy_port)
            {
                Ok(Some(rewritten)) => rewritten,
                Ok(None) => raw,
                Err(e) => {
                    tracing::warn!("cannot rewrite the brokers of a {api_key:?} v{version} response: {e}");
                    raw
                }
            },
            _ => raw,
        };
        let mut response = Message::from_kafka_response(raw, key, version, Instant::now());
        response.set_request_id(request.id());
        self.ready.push(response);
        Ok(())
    }

    /// Moves the responses already read into `ready`.
    fn take_read(&mut self) {
        loop {
            let Some(conn) = self.connection.as_mut() else { return };
            match conn.take_message() {
                Ok(Some(raw)) => {
                    if let Err(e) = self.accept(raw) {
                        self.lost(e);
                    }
                }
                Ok(None) => return,
                Err(e) => self.lost(e.into()),
            }
        }
    }

    /// The connection failed with requests written and waiting: retry-unsafe.
    fn lost(&mut self, reason: ChainError) {
        if !self.in_flight.is_empty() {
            crate::warn_limited!("the connection to the Kafka broker {} failed: {reason}", self.upstream.address);
        }
        self.fail_in_flight(&reason.context("the Kafka broker connection failed"));
    }

    fn timed_out(&self) -> bool {
        match (self.upstream.read_timeout, self.in_flight.front()) {
            (Some(limit), Some(oldest)) => oldest.sent_at.elapsed() >= limit,
            _ => false,
        }
    }

    /// The client connection closes: the source answers every request still waiting, and
    /// this broker connection, with its late answers, goes too.
    fn read_timeout_error(&mut self) -> ChainError {
        self.connection = None;
        self.timer = None;
        self.in_flight.clear();
        ChainError::upstream(format!(
            "no response from the Kafka broker within the read_timeout of {:?}",
            self.upstream.read_timeout.unwrap_or_default()
        ))
        .close_connection()
    }

    /// Reads until every request in flight is answered (or the connection fails).
    async fn wait_for_all(&mut self) -> ChainResult<()> {
        while !self.in_flight.is_empty() {
            let Some(conn) = self.connection.as_mut() else { return Ok(()) };
            let next = match (self.upstream.read_timeout, self.in_flight.front()) {
                (Some(limit), Some(oldest)) => {
                    let left = limit.saturating_sub(oldest.sent_at.elapsed());
                    futures_lite::future::or(async { Some(conn.next().await) }, async {
                        crate::rt::sleep(left).await;
                        None
                    })
                    .await
                }
                _ => Some(conn.next().await),
            };
            match next {
                None => return Err(self.read_timeout_error()),
                Some(Ok(raw)) => {
                    if let Err(e) = self.accept(raw) {
                        self.lost(e);
                    }
                }
                Some(Err(e)) => self.lost(e.into()),
            }
        }
        Ok(())
    }
}

#[async_trait(?Send)]
impl Transform for KafkaSinkSingle {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        let requests = std::mem::take(&mut state.requests);
        if !requests.is_empty() {
            if self.connection.is_none() {
                match self.connect().await {
                    Ok(conn) => self.connection = Some(conn),
                    Err(e) => {
                        crate::warn_limited!("{e}, closing the client connection");
                        let text = format!("shotover: {e}");
                        let mut failed = self.fail(&requests, &text);
                        // Closed, as a client connecting to a broker that is down would be:
                        // its reconnect back-off paces it. Kept open, a consumer re-sent its
                        // Fetch as fast as it was answered (10,000 a second).
                        if let Some(last) = failed.last_mut() {
                            last.close_after();
                        }
                        self.ready.append(&mut failed);
                        return Ok(std::mem::take(&mut self.ready));
                    }
                }
            }
            // Emptied after each write too; cleared here as well, in case a run was dropped
            // in the middle of its write.
            self.write_buf.clear();
            for request in &requests {
                if let Err(e) = request.encode_into(&mut self.write_buf) {
                    // The source answers every waiting request and closes: drop the
                    // connection, whose late answers belong to nobody now. Nothing of this
                    // batch was written, but requests of earlier ones may be waiting.
                    let retry = if self.in_flight.is_empty() { Retry::Safe } else { Retry::Unsafe };
                    self.connection = None;
                    self.in_flight.clear();
                    return Err(ChainError::proxy(format!("cannot encode a Kafka request: {e}")).with_retry(retry));
                }
            }
            let now = Instant::now();
            let first_received_at = requests.first().and_then(Message::received_at);
            self.in_flight.extend(
                requests
                    .into_iter()
                    .filter(Message::expects_response)
                    .map(|request| InFlight { request, sent_at: now }),
            );
            let written = match self.connection.as_mut() {
                Some(conn) => conn.write_all(&self.write_buf).await,
                None => Err(std::io::Error::other("not connected")),
            };
            self.source_to_sink.written(first_received_at);
            // A producer's backlog after a broker restart comes in 1 MB requests: kept, the
            // buffer would hold that much for the connection's life.
            shotover_executor::io::clear_and_release(&mut self.write_buf);
            if let Err(e) = written {
                crate::warn_limited!("sending to the Kafka broker {} failed: {e}", self.upstream.address);
                // Part of the batch may have been written: retry-unsafe.
                self.fail_in_flight(&ChainError::upstream("sending to the Kafka broker failed").caused_by(e));
            }
        }
        self.take_read();
        if state.complete {
            self.wait_for_all().await?;
        } else if self.ready.is_empty() && self.timed_out() {
            return Err(self.read_timeout_error());
        }
        Ok(std::mem::take(&mut self.ready))
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.ready.is_empty() {
            return Poll::Ready(());
        }
        let waiting = !self.in_flight.is_empty();
        let Some(conn) = self.connection.as_mut() else { return Poll::Pending };
        // Brokers send nothing unasked: with nothing in flight, only a close can come.
        let mode = if waiting { ReadMode::Spin } else { ReadMode::Wait };
        match conn.poll_next(cx, mode) {
            Poll::Ready(Ok(raw)) => {
                if let Err(e) = self.accept(raw) {
                    self.lost(e);
                }
                return Poll::Ready(());
            }
            Poll::Ready(Err(e)) => {
                self.lost(e.into());
                // Answers to deliver, or a closed idle connection (nothing to do).
                return if self.ready.is_empty() { Poll::Pending } else { Poll::Ready(()) };
            }
            Poll::Pending => {}
        }
        // Ready at the read timeout of the oldest request: the next run fails the chain.
        let (Some(limit), Some(oldest)) = (self.upstream.read_timeout, self.in_flight.front()) else {
            return Poll::Pending;
        };
        let sent_at = oldest.sent_at;
        let timer = self.timer.get_or_insert_with(|| Timer::new(limit.saturating_sub(sent_at.elapsed())));
        Pin::new(timer).poll(cx).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Side;
    use crate::sinks::testing::{closed_port, on_a_core};
    use std::time::Duration;

    fn sink(address: SocketAddr, read_timeout: Option<Duration>) -> KafkaSinkSingle {
        let upstream = Upstream { address, tls: None, connect_timeout: Duration::from_secs(1), read_timeout };
        KafkaSinkSingle::new(
            Rc::new(upstream),
            9192,
            IntCounter::new("failed", "failed").unwrap(),
            SourceToSink::unregistered(),
        )
    }

    #[test]
    fn an_unreachable_broker_is_an_upstream_failure_safe_to_retry() {
        let address = closed_port();
        let (side, retry, close, text) = on_a_core(move || async move {
            let e = sink(address, None).connect().await.err().expect("nothing listens there");
            (e.side(), e.retry(), e.closes_connection(), e.to_string())
        });
        assert_eq!((side, retry, close), (Side::Upstream, Retry::Safe, false));
        assert!(text.starts_with(&format!("cannot connect to the Kafka broker {address}: ")), "{text}");
    }

    #[test]
    fn an_unreachable_broker_answers_request_timed_out_then_closes_the_client_connection() {
        // ApiVersions v1, correlation ids 1 and 2, no client id.
        let request = |id: u8| [0, 0, 0, 10, 0, 18, 0, 1, 0, 0, 0, id, 0xff, 0xff];
        let requests: Vec<Message> = (1..=2)
            .map(|id| Message::from_bytes(Bytes::copy_from_slice(&request(id)), Protocol::Kafka, Instant::now()))
            .collect();
        let address = closed_port();
        let answers = on_a_core(move || async move {
            let mut sink = sink(address, None);
            let answers = sink.transform(&mut ChainState::last(requests)).await.expect("answered");
            answers
                .into_iter()
                .map(|a| (a.raw().cloned().unwrap_or_default(), a.closes_connection()))
                .collect::<Vec<_>>()
        });
        // Length, correlation id, then the error code.
        let codes: Vec<(u8, i16, bool)> =
            answers.iter().map(|(raw, close)| (raw[7], i16::from_be_bytes([raw[8], raw[9]]), *close)).collect();
        assert_eq!(codes, vec![(1, 7, false), (2, 7, true)], "REQUEST_TIMED_OUT for each, the close after the last");
    }

    #[test]
    fn a_large_request_leaves_no_large_buffer_behind() {
        // A broker that reads everything and answers nothing.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        });
        // ApiVersions v1 with 1 MiB of padding after its header.
        let mut raw = vec![0, 16, 0, 10, 0, 18, 0, 1, 0, 0, 0, 1, 0xff, 0xff];
        raw.resize(4 + (1 << 20) + 10, 0);
        let request = Message::from_bytes(Bytes::from(raw), Protocol::Kafka, Instant::now());
        let (capacity, in_flight) = on_a_core(move || async move {
            let mut sink = sink(address, None);
            sink.transform(&mut ChainState::last(vec![request])).await.expect("written");
            (sink.write_buf.capacity(), sink.in_flight.len())
        });
        assert_eq!(in_flight, 1, "the request was written and waits");
        assert!(capacity <= shotover_executor::io::KEEP_CAPACITY, "{capacity} bytes kept");
    }

    #[test]
    fn a_read_timeout_is_an_upstream_failure_unsafe_to_retry_that_closes_the_connection() {
        let mut sink = sink(closed_port(), Some(Duration::from_secs(1)));
        let request = Message::from_bytes(Bytes::from_static(b"\0\0\0\0"), Protocol::Kafka, Instant::now());
        let sent_at = Instant::now().checked_sub(Duration::from_secs(2)).unwrap();
        sink.in_flight.push_back(InFlight { request, sent_at });
        let e = futures_lite::future::block_on(sink.transform(&mut ChainState::last(Vec::new())))
            .expect_err("the oldest request waited too long");
        assert_eq!((e.side(), e.retry(), e.closes_connection()), (Side::Upstream, Retry::Unsafe, true));
        assert_eq!(e.to_string(), "no response from the Kafka broker within the read_timeout of 1s");
        assert!(sink.in_flight.is_empty() && sink.connection.is_none());
    }
}
