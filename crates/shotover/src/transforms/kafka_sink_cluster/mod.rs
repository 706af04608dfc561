//! KafkaSinkCluster: routes each Kafka request to the broker that can answer it, and makes
//! the proxy look like one broker of a cluster made of Shotover nodes.
//!
//! ```yaml
//! - KafkaSinkCluster:
//!     first_contact_points: ["172.16.1.2:9092", "172.16.1.3:9092"]
//!     shotover_nodes:
//!       - address_for_client: "127.0.0.1:9092"
//!         address_for_peers: "127.0.0.1:9092"
//!         rack: "rack0"
//!         broker_id: 0
//!     local_shotover_broker_id: 0
//!     connect_timeout_ms: 3000
//!     # read_timeout: 60
//!     # check_shotover_peers_delay_ms: 3000
//!     # tls: {...}
//! ```
//!
//! - Produce, Fetch, ListOffsets, OffsetForLeaderEpoch and DeleteRecords go to each
//!   partition's leader, split when their partitions have several ([`split`]).
//! - Group requests go to the group's coordinator, transaction requests to the
//!   transaction's coordinator, found with FindCoordinator and remembered per core.
//! - The handshake (ApiVersions, SASL) goes to the client's first broker connection; a
//!   SASL login that succeeded there is replayed on every other connection of the client,
//!   or, for SCRAM with `authorize_scram_over_mtls`, done again with a delegation token of
//!   the same user ([`login`], [`scram`]).
//! - Everything else goes to any broker, round robin, this node's rack first.
//! - Metadata, FindCoordinator and DescribeCluster answers name Shotover nodes ([`hiding`]).
//!
//! The cluster's metadata is shared by the connections of a core ([`metadata`]); what the
//! proxy asks itself goes over a connection of its own per client. Errors saying a leader
//! or coordinator moved make the proxy forget it, and pass to the client, which retries.
//! A broker that fails takes the requests waiting on it down with REQUEST_TIMED_OUT
//! (the outcome is unknown; every client retries it).

mod answers;
mod broker;
mod config;
mod hiding;
mod login;
mod metadata;
mod scram;
mod shared;
mod split;

pub use config::{KafkaSinkClusterConfig, ScramOverMtlsConfig, ShotoverNodeConfig};

use crate::chain::{ChainError, ChainResult, ChainState, Transform};
use crate::message::{Frame, Message, ProxyError};
use crate::rt::Timer;
use crate::sinks::kafka::KafkaConnection;
use crate::stream::ReadMode;
use async_trait::async_trait;
use broker::{BrokerConn, Login, Sent};
use bytes::Bytes;
use login::ScramLogin;
use metadata::{TopicKey, GROUP, TRANSACTION};
use shared::Shared;
use shotover_protocols::kafka::header::request_ids;
use shotover_protocols::kafka::kafka_protocol::messages::{
    find_coordinator_request::FindCoordinatorRequest, metadata_request::MetadataRequest, ApiKey, RequestKind,
    ResponseKind,
};
use shotover_protocols::kafka::kafka_protocol::protocol::StrBytes;
use shotover_protocols::kafka::walk::{is_walked, leading_strings};
use shotover_protocols::kafka::KafkaFrame;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What a client request's response needs once every part of it is answered.
#[derive(Debug, Clone)]
enum Kind {
    /// Passed on as the broker sent it.
    Plain,
    /// A group or transaction request: NOT_COORDINATOR makes the proxy forget the
    /// coordinator.
    Coordinated(i8, Rc<str>),
    /// A partition request: merged when split; leader errors forget the topic.
    Partitions,
    Metadata,
    FindCoordinator,
    DescribeCluster,
    ApiVersions,
    SaslHandshake {
        /// The client asked for SCRAM.
        scram: bool,
        /// SCRAM is hidden (no `authorize_scram_over_mtls`).
        hide: bool,
    },
    SaslAuthenticate,
}

/// A client request waiting for its responses.
struct Pending {
    seq: u64,
    request: Message,
    api_key: ApiKey,
    version: i16,
    kind: Kind,
    parts: Vec<Option<Bytes>>,
    missing: usize,
    /// Why a part failed, and so which error the client gets.
    failed: Option<(ProxyError, String)>,
}

/// Where a request goes.
enum Route {
    /// The client's first connection (handshake and login).
    Home,
    Broker(SocketAddr),
    Any,
}

/// UNSUPPORTED_VERSION (35).
const UNSUPPORTED_VERSION: i16 = 35;

/// The proxy's own Metadata request version (Kafka 2.8 and later), which names topic ids.
const METADATA_VERSION: i16 = 12;
/// The proxy's own FindCoordinator request version (Kafka 3.0 and later): batched keys.
const FIND_COORDINATOR_VERSION: i16 = 4;

pub struct KafkaSinkCluster {
    shared: Rc<Shared>,
    conns: HashMap<SocketAddr, BrokerConn>,
    home: Option<SocketAddr>,
    /// For the proxy's own requests, with nothing else in flight on it.
    control: Option<KafkaConnection>,
    /// The login every new connection replays, once it succeeded.
    login: Login,
    /// SASL requests sent and not yet known to have succeeded.
    logging_in: Option<Vec<Bytes>>,
    /// A SCRAM login under way, checked by the home broker (`authorize_scram_over_mtls`).
    scram_login: Option<ScramLogin>,
    /// The client's SCRAM login failed: the connection closes before any other request.
    refused: bool,
    /// Oldest first; answered in this order.
    pending: VecDeque<Pending>,
    next_seq: u64,
    own_correlation_id: i32,
    timer: Option<Timer>,
    /// The connections' addresses, reused by every read so that none allocates.
    addresses: Vec<SocketAddr>,
}

impl KafkaSinkCluster {
    fn new(shared: Rc<Shared>) -> Self {
        KafkaSinkCluster {
            shared,
            conns: HashMap::new(),
            home: None,
            control: None,
            login: Login::default(),
            logging_in: None,
            scram_login: None,
            refused: false,
            pending: VecDeque::new(),
            next_seq: 0,
            own_correlation_id: 0,
            timer: None,
            addresses: Vec::new(),
        }
    }

    fn add_pending(&mut self, request: Message, ids: (ApiKey, i16), kind: Kind, parts: usize, expects: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if expects {
            let (api_key, version) = ids;
            let p = Pending {
                seq,
                request,
                api_key,
                version,
                kind,
                parts: vec![None; parts],
                missing: parts,
                failed: None,
            };
            self.pending.push_back(p);
        }
        seq
    }

    /// Works out where a request goes and sends it.
    async fn dispatch(&mut self, request: Message) {
        if self.refused {
            return self.close_unanswered(request);
        }
        let raw = match request.to_bytes() {
            Ok(raw) => raw,
            Err(e) => return self.refuse(request, &format!("shotover: cannot encode the request: {e}")),
        };
        let expects = request.expects_response();
        let Ok(ids) = request_ids(&raw) else { return self.refuse(request, "shotover: malformed request header") };
        let Ok(api_key) = ApiKey::try_from(ids.api_key) else {
            // Unknown to the proxy (and to kafka-protocol): answered as a broker that does not
            // know it either would be, without decoding anything.
            return self.unsupported(request, &raw, None);
        };
        let key = (api_key, ids.api_version);
        if hiding::max_version(api_key).is_none_or(|max| ids.api_version > max) {
            return self.unsupported(request, &raw, Some(key));
        }
        let (kind, route) = match api_key {
            ApiKey::ApiVersions => (Kind::ApiVersions, Route::Home),
            ApiKey::SaslHandshake => self.handshake(&raw),
            ApiKey::SaslAuthenticate => match self.authenticate(&raw) {
                Some(routed) => routed,
                // Refused by the proxy itself: answered as a failed login.
                None => return self.refuse_login(request, &raw, key),
            },
            _ if self.scram_login.is_some() => {
                // A broker in the middle of a SASL exchange takes nothing else either.
                tracing::warn!("KafkaSinkCluster: a request in the middle of a SCRAM login: closing the connection");
                self.refused = true;
                return self.close_unanswered(request);
            }
            _ if self.logging_in.is_some() => (Kind::Plain, Route::Home),
            // Brokers refuse these on a connection logged in with a delegation token: only
            // the client's own login may ask for them.
            ApiKey::CreateDelegationToken
            | ApiKey::RenewDelegationToken
            | ApiKey::ExpireDelegationToken
            | ApiKey::DescribeDelegationToken => (Kind::Plain, Route::Home),
            ApiKey::Metadata => (Kind::Metadata, Route::Any),
            ApiKey::FindCoordinator => (Kind::FindCoordinator, Route::Any),
            ApiKey::DescribeCluster => (Kind::DescribeCluster, Route::Any),
            k if is_walked(k) => return self.dispatch_partitions(request, raw, key, expects).await,
            k => match coordinator_key(k, &raw) {
                Some((which, id)) => {
                    let route = self.coordinator(which, &id).await.map_or(Route::Any, Route::Broker);
                    (Kind::Coordinated(which, id), route)
                }
                None => (Kind::Plain, Route::Any),
            },
        };
        let seq = self.add_pending(request, key, kind, 1, expects);
        self.send(route, &raw, seq, 0, expects).await;
    }

    /// A partition request: to each partition's leader, split if need be.
    async fn dispatch_partitions(&mut self, mut request: Message, raw: Bytes, key: (ApiKey, i16), expects: bool) {
        let (header, body) = match request.frame() {
            Ok(Frame::Kafka(frame)) => match frame.as_ref() {
                KafkaFrame::Request { header, body } => (header.clone(), body.clone()),
                KafkaFrame::Response { .. } => return self.refuse(request, "shotover: a response sent as a request"),
            },
            Ok(_) => return self.refuse(request, "shotover: not a Kafka request"),
            Err(e) => return self.refuse(request, &format!("shotover: malformed request: {e}")),
        };
        self.learn_topics(&split::topics_of(&body)).await;
        let parts = {
            let metadata = self.shared.metadata.borrow();
            split::split(body, &|topic: &TopicKey, partition| metadata.leader(topic, partition)).unwrap_or_default()
        };
        if parts.is_empty() {
            return self.refuse(request, "shotover: a partition request the proxy cannot split");
        }
        let seq = self.add_pending(request, key, Kind::Partitions, parts.len(), expects);
        let fetch = key.0 == ApiKey::Fetch;
        let single = parts.len() == 1;
        for (i, (leader, body)) in parts.into_iter().enumerate() {
            let route =
                leader.and_then(|id| self.shared.metadata.borrow().address(id)).map_or(Route::Any, Route::Broker);
            // One leader: the client's own bytes, unless the fetch session had to go.
            let bytes = if single && !fetch {
                raw.clone()
            } else {
                match (KafkaFrame::Request { header: header.clone(), body }).to_bytes() {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        self.fail_part(seq, i, &format!("shotover: cannot encode a split request: {e}"));
                        continue;
                    }
                }
            };
            self.send(route, &bytes, seq, i, expects).await;
        }
    }

    /// Sends one part to the first broker of `route` that can take it.
    async fn send(&mut self, route: Route, bytes: &[u8], seq: u64, part: usize, expects: bool) {
        let candidates = match route {
            Route::Home => match self.home {
                Some(home) => vec![home],
                None => self.shared.any_brokers(),
            },
            Route::Broker(address) => vec![address],
            Route::Any => self.shared.any_brokers(),
        };
        for address in candidates {
            if !self.conns.contains_key(&address) {
                match BrokerConn::open(&self.shared, address, &self.login).await {
                    Ok(conn) => {
                        self.conns.insert(address, conn);
                        self.home.get_or_insert(address);
                    }
                    Err(e) => {
                        crate::warn_limited!("KafkaSinkCluster: cannot connect to the Kafka broker {address}: {e}");
                        self.shared.metadata.borrow_mut().forget_topics();
                        continue;
                    }
                }
            }
            if let Some(conn) = self.conns.get_mut(&address) {
                conn.queue(bytes, expects.then(|| Sent { seq, part, at: Instant::now() }));
                return;
            }
        }
        self.fail_part(seq, part, "shotover: no Kafka broker could take the request");
    }

    /// Writes what every connection has queued; a connection that fails takes its
    /// requests down with it.
    async fn flush(&mut self) {
        let mut failed = Vec::new();
        for (address, conn) in &mut self.conns {
            if let Err(e) = conn.flush().await {
                failed.push((*address, e));
            }
        }
        for (address, e) in failed {
            self.lost(address, &format!("sending to the Kafka broker {address} failed: {e}"));
        }
    }

    /// A connection to the cluster for the proxy's own requests.
    async fn control(&mut self) -> Option<&mut KafkaConnection> {
        if self.control.is_none() {
            for address in self.shared.any_brokers() {
                match BrokerConn::open(&self.shared, address, &self.login).await {
                    Ok(conn) => {
                        self.control = Some(conn.conn);
                        break;
                    }
                    Err(e) => {
                        crate::warn_limited!("KafkaSinkCluster: cannot connect to the Kafka broker {address}: {e}")
                    }
                }
            }
        }
        self.control.as_mut()
    }

    /// Asks the cluster itself; `None` (logged) when it cannot.
    async fn ask(&mut self, body: RequestKind, api_key: ApiKey, version: i16) -> Option<ResponseKind> {
        self.own_correlation_id = self.own_correlation_id.wrapping_add(1);
        let id = self.own_correlation_id;
        let limit = self.shared.own_request_timeout();
        let conn = self.control().await?;
        match broker::within(limit, broker::ask(conn, body, api_key, version, id)).await {
            Ok(response) => Some(response),
            Err(e) => {
                tracing::warn!("KafkaSinkCluster: asking the cluster for {api_key:?} failed: {e}");
                self.control = None;
                None
            }
        }
    }

    /// Makes sure the metadata knows the leaders of `topics` (and the brokers' addresses).
    async fn learn_topics(&mut self, topics: &[TopicKey]) {
        let missing: Vec<&TopicKey> = {
            let metadata = self.shared.metadata.borrow();
            topics.iter().filter(|t| metadata.topic(t).is_none()).collect()
        };
        if !missing.is_empty() || self.shared.metadata.borrow().brokers.is_empty() {
            // Topics named by id are asked for with every topic: not every broker looks
            // topics up by id.
            let names: Option<Vec<_>> = missing
                .iter()
                .map(|t| match t {
                    TopicKey::Name(n) => Some(
                        shotover_protocols::kafka::kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(StrBytes::from_string(n.to_string()).into())),
                    ),
                    TopicKey::Id(_) => None,
                })
                .collect();
            let request = MetadataRequest::default().with_topics(names).with_allow_auto_topic_creation(false);
            if let Some(ResponseKind::Metadata(r)) =
                self.ask(RequestKind::Metadata(request), ApiKey::Metadata, METADATA_VERSION).await
            {
                self.shared.metadata.borrow_mut().update(&r);
            }
        }
        self.resolve_hosts().await;
    }

    /// Looks up the brokers named by host name, off the core.
    async fn resolve_hosts(&self) {
        let unresolved = self.shared.metadata.borrow().unresolved();
        for (id, host, port) in unresolved {
            let name = format!("{host}:{port}");
            let found = crate::rt::spawn_blocking(move || {
                use std::net::ToSocketAddrs;
                name.to_socket_addrs().ok().and_then(|mut a| a.next())
            })
            .await;
            match found {
                Some(address) => self.shared.metadata.borrow_mut().set_address(id, address),
                None => tracing::warn!("KafkaSinkCluster: cannot look up the Kafka broker {host}:{port}"),
            }
        }
    }

    /// The coordinator of a group or transaction, asked for when not known.
    async fn coordinator(&mut self, which: i8, id: &str) -> Option<SocketAddr> {
        self.learn_topics(&[]).await;
        let known = self.shared.metadata.borrow().coordinator(which, id);
        let broker = match known {
            Some(broker) => broker,
            None => {
                let request = FindCoordinatorRequest::default()
                    .with_key_type(which)
                    .with_coordinator_keys(vec![StrBytes::from_string(id.to_owned())]);
                let found = self
                    .ask(RequestKind::FindCoordinator(request), ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION)
                    .await;
                let Some(ResponseKind::FindCoordinator(r)) = found else { return None };
                let c = r.coordinators.first().filter(|c| c.error_code == 0)?;
                self.shared.metadata.borrow_mut().set_coordinator(which, id, c.node_id.0);
                c.node_id.0
            }
        };
        self.shared.metadata.borrow().address(broker)
    }

    fn read_timeout_error(&mut self) -> ChainError {
        self.conns.clear();
        self.pending.clear();
        self.timer = None;
        ChainError::upstream(format!(
            "no response from the Kafka cluster within the read_timeout of {:?}",
            self.shared.read_timeout.unwrap_or_default()
        ))
        .close_connection()
    }

    fn oldest_sent(&self) -> Option<Instant> {
        self.conns.values().filter_map(BrokerConn::oldest).min()
    }

    fn timed_out(&self) -> bool {
        match (self.shared.read_timeout, self.oldest_sent()) {
            (Some(limit), Some(oldest)) => oldest.elapsed() >= limit,
            _ => false,
        }
    }

    /// Reads until every request is answered (or its connection fails).
    async fn wait_for_all(&mut self) -> ChainResult<()> {
        while self.pending.iter().any(|p| p.missing > 0) {
            let (limit, oldest) = (self.shared.read_timeout, self.oldest_sent());
            let wait = std::future::poll_fn(|cx| self.poll_read(cx).map(|_| true));
            let done = match (limit, oldest) {
                (Some(limit), Some(oldest)) => {
                    let left = limit.saturating_sub(oldest.elapsed());
                    futures_lite::future::or(wait, async {
                        crate::rt::sleep(left).await;
                        false
                    })
                    .await
                }
                _ => wait.await,
            };
            if !done {
                return Err(self.read_timeout_error());
            }
        }
        Ok(())
    }
}

/// The group or transaction a request is about, for those routed to a coordinator.
fn coordinator_key(api_key: ApiKey, raw: &[u8]) -> Option<(i8, Rc<str>)> {
    let which = match api_key {
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::OffsetDelete
        | ApiKey::ConsumerGroupHeartbeat
        | ApiKey::ConsumerGroupDescribe => GROUP,
        ApiKey::InitProducerId | ApiKey::AddPartitionsToTxn | ApiKey::AddOffsetsToTxn | ApiKey::EndTxn => TRANSACTION,
        // Sent by a transactional producer, but about the group's offsets.
        ApiKey::TxnOffsetCommit => {
            let [_, group] = leading_strings::<2>(raw).ok()?;
            return Some((GROUP, Rc::from(String::from_utf8_lossy(group?).as_ref())));
        }
        _ => return None,
    };
    let [id] = leading_strings::<1>(raw).ok()?;
    let id = id.filter(|id| !id.is_empty())?;
    Some((which, Rc::from(String::from_utf8_lossy(id).as_ref())))
}

#[async_trait(?Send)]
impl Transform for KafkaSinkCluster {
    async fn transform(&mut self, state: &mut ChainState<'_>) -> ChainResult {
        if self.refused && self.pending.is_empty() && state.requests.is_empty() {
            // After the failed login's answer, nothing more: no request reaches a broker
            // (those that come are not answered, see `close_unanswered`).
            return Err(ChainError::client("the client's SCRAM login failed").close_connection());
        }
        let requests = std::mem::take(&mut state.requests);
        let first_received_at = requests.first().and_then(Message::received_at);
        for request in requests {
            self.dispatch(request).await;
        }
        self.flush().await;
        self.shared.source_to_sink.written(first_received_at);
        self.take_read();
        if state.complete {
            self.wait_for_all().await?;
        } else if self.timed_out() && !self.head_done() {
            return Err(self.read_timeout_error());
        }
        Ok(self.take_ready())
    }

    fn poll_pushed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.head_done() || (self.refused && self.pending.is_empty()) {
            return Poll::Ready(());
        }
        if self.poll_read(cx).is_ready() && self.head_done() {
            return Poll::Ready(());
        }
        // Ready at the read timeout of the oldest request: the next run fails the chain.
        let (Some(limit), Some(oldest)) = (self.shared.read_timeout, self.oldest_sent()) else {
            return Poll::Pending;
        };
        let timer = self.timer.get_or_insert_with(|| Timer::new(limit.saturating_sub(oldest.elapsed())));
        if Pin::new(timer).poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.timed_out() {
            return Poll::Ready(()); // the next run fails the chain
        }
        // The request the timer was set for was answered: set it for the oldest now.
        let mut timer = Timer::new(limit.saturating_sub(oldest.elapsed()));
        let ready = Pin::new(&mut timer).poll(cx).is_ready();
        self.timer = Some(timer);
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
