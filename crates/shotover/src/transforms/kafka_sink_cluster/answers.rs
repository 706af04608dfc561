//! What the proxy does with the brokers' responses: each is matched to its part of a
//! client request, and a request whose parts are all in becomes one response for the
//! client (merged, rewritten, or as the broker sent it), in request order. Requests the
//! proxy answers itself, without sending them, are here too.

use super::hiding::{limit_versions, View};
use super::*;
use shotover_protocols::kafka::api::top_level_error_code;
use shotover_protocols::kafka::kafka_protocol::messages::ResponseHeader;

/// Error codes saying the proxy's idea of a partition's leader is stale:
/// UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
/// FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH, UNKNOWN_TOPIC_ID.
const LEADER_ERRORS: [i16; 6] = [3, 5, 6, 74, 75, 100];
/// COORDINATOR_NOT_AVAILABLE and NOT_COORDINATOR.
const COORDINATOR_ERRORS: [i16; 2] = [15, 16];

/// True when a response says its coordinator is not (or no longer) the one asked, at the
/// top level or for any of its items.
fn coordinator_moved(body: &ResponseKind) -> bool {
    let moved = |code: i16| COORDINATOR_ERRORS.contains(&code);
    if top_level_error_code(body).is_some_and(moved) {
        return true;
    }
    match body {
        ResponseKind::OffsetCommit(r) => r.topics.iter().flat_map(|t| &t.partitions).any(|p| moved(p.error_code)),
        ResponseKind::TxnOffsetCommit(r) => r.topics.iter().flat_map(|t| &t.partitions).any(|p| moved(p.error_code)),
        ResponseKind::AddPartitionsToTxn(r) => (r.results_by_topic_v3_and_below.iter())
            .flat_map(|t| &t.results_by_partition)
            .any(|p| moved(p.partition_error_code)),
        ResponseKind::OffsetFetch(r) => r.groups.iter().any(|g| moved(g.error_code)),
        ResponseKind::DescribeGroups(r) => r.groups.iter().any(|g| moved(g.error_code)),
        _ => false,
    }
}

impl KafkaSinkCluster {
    /// Answers a request of an api or version the proxy does not offer as a broker would:
    /// UNSUPPORTED_VERSION (for ApiVersions, in v0 with the versions it does offer).
    pub(super) fn unsupported(&mut self, request: Message, raw: &[u8], key: Option<(ApiKey, i16)>) {
        let Some(key) = key else {
            // No response type to answer with: the connection closes, as a broker's would.
            return self.refuse(request, "shotover: a request of an unknown api key");
        };
        match shotover_protocols::kafka::safe_error::safe_error_response(raw, UNSUPPORTED_VERSION) {
            Ok(Some(bytes)) => self.answer_now(request, key, bytes),
            Ok(None) => {}
            Err(e) => self.refuse(request, &format!("shotover: an unsupported request: {e}")),
        }
    }

    /// Closes the client connection at `request`, without answering it or sending it
    /// anywhere (as a broker closes a connection whose login failed): an empty answer is
    /// the source's sign to close.
    pub(super) fn close_unanswered(&mut self, request: Message) {
        let key = request_key(&request);
        self.answer_now(request, key, Bytes::new());
    }

    /// Answers `request` with `bytes`, without sending it anywhere.
    pub(super) fn answer_now(&mut self, request: Message, key: (ApiKey, i16), bytes: Bytes) {
        let seq = self.add_pending(request, key, Kind::Plain, 1, true);
        if let Some(p) = self.pending_mut(seq) {
            p.parts = vec![Some(bytes)];
            p.missing = 0;
        }
    }

    /// Answers a request the proxy cannot read with POLICY_VIOLATION, without sending it.
    pub(super) fn refuse(&mut self, request: Message, text: &str) {
        tracing::warn!("KafkaSinkCluster: {text}");
        let key = request_key(&request);
        let seq = self.add_pending(request, key, Kind::Plain, 1, true);
        if let Some(p) = self.pending_mut(seq) {
            p.parts = vec![Some(Bytes::new())];
            p.missing = 0;
            p.failed = Some((ProxyError::Refused, text.to_owned()));
        }
    }

    /// Takes in the responses already read, without waiting.
    pub(super) fn take_read(&mut self) {
        let mut addresses = std::mem::take(&mut self.addresses);
        addresses.clear();
        addresses.extend(self.conns.keys());
        for &address in &addresses {
            while let Some(conn) = self.conns.get_mut(&address) {
                match conn.conn.take_message() {
                    Ok(Some(raw)) => self.accept(address, raw),
                    Ok(None) => break,
                    Err(e) => {
                        self.lost(address, &format!("the Kafka broker {address} sent: {e}"));
                        break;
                    }
                }
            }
        }
        self.addresses = addresses;
    }

    /// Reads what the connections have; ready when anything was taken in.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut progressed = false;
        let mut addresses = std::mem::take(&mut self.addresses);
        addresses.clear();
        addresses.extend(self.conns.keys());
        for &address in &addresses {
            while let Some(conn) = self.conns.get_mut(&address) {
                // Brokers send nothing unasked: with nothing in flight, only a close comes.
                let mode = if conn.in_flight.is_empty() { ReadMode::Wait } else { ReadMode::Spin };
                match conn.conn.poll_next(cx, mode) {
                    Poll::Ready(Ok(raw)) => {
                        self.accept(address, raw);
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => {
                        let had_requests = self.conns.get(&address).is_some_and(|c| !c.in_flight.is_empty());
                        self.lost(address, &format!("the connection to the Kafka broker {address} failed: {e}"));
                        progressed |= had_requests;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        self.addresses = addresses;
        if progressed {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// A response from `address`: it answers the oldest request in flight there.
    fn accept(&mut self, address: SocketAddr, raw: Bytes) {
        let Some(sent) = self.conns.get_mut(&address).and_then(|c| c.in_flight.pop_front()) else {
            self.lost(address, &format!("the Kafka broker {address} sent a response nobody asked for"));
            return;
        };
        self.timer = None;
        if let Some(p) = self.pending_mut(sent.seq) {
            if let Some(slot) = p.parts.get_mut(sent.part) {
                if slot.is_none() {
                    *slot = Some(raw);
                    p.missing = p.missing.saturating_sub(1);
                }
            }
        }
    }

    /// The connection to `address` failed: each request waiting on it fails.
    pub(super) fn lost(&mut self, address: SocketAddr, text: &str) {
        let Some(conn) = self.conns.remove(&address) else { return };
        if !conn.in_flight.is_empty() {
            tracing::warn!("KafkaSinkCluster: {text}");
        }
        if self.home == Some(address) {
            self.home = None;
        }
        self.timer = None;
        // A broker closing an idle connection says nothing about leaders.
        if !conn.in_flight.is_empty() {
            let mut metadata = self.shared.metadata.borrow_mut();
            metadata.forget_topics();
            metadata.forget_coordinators_at(address);
        }
        for sent in conn.in_flight {
            self.fail_part(sent.seq, sent.part, &format!("shotover: {text}"));
        }
    }

    /// The request of sequence number `seq`, if it still waits (they are in order, but
    /// requests that expect no response have none).
    pub(super) fn pending_mut(&mut self, seq: u64) -> Option<&mut Pending> {
        let first = self.pending.front()?.seq;
        let guess = usize::try_from(seq.checked_sub(first)?).ok()?.min(self.pending.len().saturating_sub(1));
        // Without gaps, `guess` is the place; with gaps (acks=0), it is at or before it.
        let at = (0..=guess).rev().find(|&i| self.pending.get(i).is_some_and(|p| p.seq <= seq))?;
        self.pending.get_mut(at).filter(|p| p.seq == seq)
    }

    pub(super) fn fail_part(&mut self, seq: u64, part: usize, text: &str) {
        if let Some(p) = self.pending_mut(seq) {
            if let Some(slot) = p.parts.get_mut(part) {
                if slot.is_none() {
                    *slot = Some(Bytes::new());
                    p.missing = p.missing.saturating_sub(1);
                    p.failed.get_or_insert_with(|| (ProxyError::Upstream, text.to_owned()));
                }
            }
        }
    }

    /// True when the oldest request has all its responses.
    pub(super) fn head_done(&self) -> bool {
        self.pending.front().is_some_and(|p| p.missing == 0)
    }

    /// The responses for the client, in request order, as far as they are complete.
    pub(super) fn take_ready(&mut self) -> Vec<Message> {
        let mut ready = Vec::new();
        while self.head_done() {
            if let Some(p) = self.pending.pop_front() {
                ready.push(self.finish(p));
            }
        }
        ready
    }

    fn finish(&mut self, p: Pending) -> Message {
        if let Some((kind, text)) = &p.failed {
            if *kind == ProxyError::Upstream {
                self.shared.failed_requests.inc();
            }
            return Message::error_to(&p.request, *kind, text);
        }
        let raw = match self.response_bytes(&p) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!("KafkaSinkCluster: cannot read a {:?} v{} response: {e}", p.api_key, p.version);
                if p.parts.len() > 1 {
                    // One part as it came would leave the others' partitions unanswered.
                    self.shared.failed_requests.inc();
                    let text = format!("shotover: cannot merge the brokers' responses: {e}");
                    return Message::error_to(&p.request, ProxyError::Upstream, &text);
                }
                p.parts.into_iter().next().flatten().unwrap_or_default()
            }
        };
        let mut response = Message::from_kafka_response(raw, p.api_key as i16, p.version, Instant::now());
        response.set_request_id(p.request.id());
        response
    }

    /// The bytes for the client: the broker's own when nothing needs changing.
    fn response_bytes(&mut self, p: &Pending) -> Result<Bytes, String> {
        let first = p.parts.first().cloned().flatten().unwrap_or_default();
        if matches!(p.kind, Kind::Plain) {
            return Ok(first);
        }
        let mut header = ResponseHeader::default();
        let mut bodies = Vec::with_capacity(p.parts.len());
        // A v0 ApiVersions answer to a newer request (UNSUPPORTED_VERSION) keeps its version.
        let mut version = p.version;
        for part in p.parts.iter().flatten() {
            match KafkaFrame::parse_response(part, p.api_key, p.version).map_err(|e| e.to_string())? {
                KafkaFrame::Response { header: h, body, api_version, .. } => {
                    header = h;
                    version = api_version;
                    bodies.push(body);
                }
                KafkaFrame::Request { .. } => return Err("a request came back".into()),
            }
        }
        let split = bodies.len() > 1;
        let mut body = if split {
            split::merge(bodies).ok_or("parts of different kinds")?
        } else {
            bodies.pop().ok_or("no part")?
        };
        let changed = self.take_in(&p.kind, &mut body, version) || split;
        if !changed {
            return Ok(first);
        }
        KafkaFrame::Response { api_key: p.api_key, api_version: version, header, body }
            .to_bytes()
            .map_err(|e| e.to_string())
    }

    /// Learns from a response and rewrites it for the client; true when it changed.
    fn take_in(&mut self, kind: &Kind, body: &mut ResponseKind, version: i16) -> bool {
        let shared = self.shared.clone();
        match kind {
            Kind::Plain => false,
            Kind::Coordinated(which, id) => {
                if coordinator_moved(body) {
                    shared.metadata.borrow_mut().forget_coordinator(*which, id);
                }
                false
            }
            Kind::Partitions => {
                let stale = split::stale_topics(body, &LEADER_ERRORS);
                let mut metadata = shared.metadata.borrow_mut();
                for topic in stale {
                    metadata.forget_topic(topic);
                }
                drop(metadata);
                self.view_rewrite(body, version)
            }
            Kind::Metadata => {
                if let ResponseKind::Metadata(r) = body {
                    shared.metadata.borrow_mut().update(r);
                }
                self.view_rewrite(body, version)
            }
            Kind::FindCoordinator | Kind::DescribeCluster => self.view_rewrite(body, version),
            Kind::ApiVersions => limit_versions(body),
            Kind::SaslHandshake { scram, hide } => self.handshake_answered(body, *scram, *hide),
            Kind::SaslAuthenticate => {
                self.authenticate_answered(body);
                false
            }
        }
    }

    fn view_rewrite(&self, body: &mut ResponseKind, version: i16) -> bool {
        let shared = &self.shared;
        let metadata = shared.metadata.borrow();
        let Some(local) = shared.shotover.get(shared.local) else { return false };
        let view = View { up: shared.up_shotover_nodes(), local, metadata: &metadata };
        view.rewrite(body, version)
    }
}

/// A request's api key and version, read from its header (ApiVersions v0 when unreadable:
/// only the proxy's own answer to it depends on them).
pub(super) fn request_key(request: &Message) -> (ApiKey, i16) {
    request_ids(&request.to_bytes().unwrap_or_default())
        .ok()
        .and_then(|ids| Some((ApiKey::try_from(ids.api_key).ok()?, ids.api_version)))
        .unwrap_or((ApiKey::ApiVersions, 0))
}
