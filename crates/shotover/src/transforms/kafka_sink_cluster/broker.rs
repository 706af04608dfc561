//! A client's connection to one broker: requests written in batches, and what each
//! response answers (brokers answer in request order), plus the proxy's own one-off
//! requests (Metadata, FindCoordinator) on a connection of their own.

use super::scram::{self, Mechanism};
use super::shared::Shared;
use crate::sinks::kafka::KafkaConnection;
use bytes::{BufMut, Bytes, BytesMut};
use shotover_protocols::kafka::kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseKind};
use shotover_protocols::kafka::KafkaFrame;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Which part of which client request a response answers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub(super) seq: u64,
    pub(super) part: usize,
    pub(super) at: Instant,
}

pub(super) struct BrokerConn {
    pub(super) conn: KafkaConnection,
    out: BytesMut,
    /// Oldest first.
    pub(super) in_flight: VecDeque<Sent>,
}

/// How a new connection logs in as the client.
#[derive(Clone)]
pub(super) enum Login {
    /// The SaslHandshake and SaslAuthenticate requests that succeeded on the client's first
    /// connection, sent again (none without SASL).
    Replay(Vec<Bytes>),
    /// The client's SCRAM login succeeded on its first connection: the others log in with a
    /// delegation token of the same user ([`scram`]).
    Token { user: Rc<str>, mechanism: Mechanism },
}

impl Default for Login {
    fn default() -> Self {
        Login::Replay(Vec::new())
    }
}

/// How long a token login is tried again while the brokers learn of a token just made.
const TOKEN_SPREAD: Duration = Duration::from_secs(5);

impl BrokerConn {
    /// Connects to `address` and logs in with `login`, each answer within the time the
    /// proxy gives its own requests.
    pub(super) async fn open(shared: &Shared, address: SocketAddr, login: &Login) -> io::Result<Self> {
        let (timeout, limit) = (shared.connect_timeout, shared.own_request_timeout());
        let tls = shared.tls_for(address);
        let started = Instant::now();
        loop {
            let mut conn = KafkaConnection::connect(address, timeout, tls.as_ref()).await?;
            let logged_in = match login {
                Login::Replay(requests) => replay(&mut conn, requests, limit).await,
                Login::Token { user, mechanism } => {
                    let scram = shared.scram.as_ref().ok_or_else(|| io::Error::other("SCRAM over mTLS is off"))?;
                    let token = scram.token(user, timeout, limit).await?;
                    within(limit, scram::login(&mut conn, *mechanism, &token)).await
                }
            };
            match logged_in {
                Ok(()) => return Ok(BrokerConn { conn, out: BytesMut::new(), in_flight: VecDeque::new() }),
                // The broker closes a connection whose login failed: try a new one.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied && started.elapsed() < TOKEN_SPREAD => {
                    tracing::debug!("KafkaSinkCluster: {address}: {e}; trying again");
                    crate::rt::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    if let (Login::Token { user, .. }, Some(scram)) = (login, &shared.scram) {
                        if e.kind() == io::ErrorKind::PermissionDenied {
                            scram.forget(user);
                        }
                    }
                    return Err(io::Error::new(e.kind(), format!("logging in to the broker {address}: {e}")));
                }
            }
        }
    }

    /// Queues `message` for the next [`flush`](Self::flush); `answer` when a response
    /// will come.
    pub(super) fn queue(&mut self, message: &[u8], answer: Option<Sent>) {
        self.out.put_slice(message);
        self.in_flight.extend(answer);
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.conn.write_all(&self.out).await;
        shotover_executor::io::clear_and_release(&mut self.out);
        result
    }

    /// When the oldest request in flight was sent.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.in_flight.front().map(|s| s.at)
    }
}

/// Sends each of `requests` and checks that the broker accepted it.
async fn replay(conn: &mut KafkaConnection, requests: &[Bytes], limit: Duration) -> io::Result<()> {
    for request in requests {
        let response = within(limit, async {
            conn.write_all(request).await?;
            conn.next().await
        })
        .await?;
        if !login_accepted(request, &response) {
            return Err(io::Error::other("the broker refused the client's SASL login"));
        }
    }
    Ok(())
}

/// True when a replayed SaslHandshake or SaslAuthenticate got error code 0. Both
/// responses start with the error code, after the correlation id (and, for flexible
/// SaslAuthenticate, an empty tag buffer).
fn login_accepted(request: &[u8], response: &Bytes) -> bool {
    let Ok(ids) = shotover_protocols::kafka::header::request_ids(request) else { return false };
    let Ok(api_key) = ApiKey::try_from(ids.api_key) else { return false };
    match KafkaFrame::parse_response(response, api_key, ids.api_version) {
        Ok(KafkaFrame::Response { body, .. }) => shotover_protocols::kafka::api::top_level_error_code(&body) == Some(0),
        _ => false,
    }
}

/// `work`, or a TimedOut error once `limit` has passed: a broker that accepts a connection
/// and then says nothing must not hold the client for ever.
pub(super) async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    futures_lite::future::or(work, async {
        crate::rt::sleep(limit).await;
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer within {limit:?}")))
    })
    .await
}

/// Sends one request of the proxy's own on `conn` (with nothing else in flight) and reads
/// its response.
pub(super) async fn ask(
    conn: &mut KafkaConnection,
    body: RequestKind,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> io::Result<ResponseKind> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(shotover_protocols::kafka::kafka_protocol::protocol::StrBytes::from_static_str(
            "shotover",
        )));
    let request = KafkaFrame::Request { header, body }.to_bytes().map_err(io::Error::other)?;
    conn.write_all(&request).await?;
    let response = conn.next().await?;
    match KafkaFrame::parse_response(&response, api_key, version) {
        Ok(KafkaFrame::Response { body, .. }) => Ok(body),
        Ok(_) => Err(io::Error::other("not a response")),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}
