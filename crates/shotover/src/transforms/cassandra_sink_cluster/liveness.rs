//! Whether the node connections still answer: the `read_timeout` of the requests in
//! flight, and heartbeats on idle node connections.
//!
//! A client connection's requests go to one replica of each partition (see
//! [`Shared::replicas_first`]), so its connections to the other nodes can sit idle for
//! long. A node that vanished without closing them (its host gone, a firewall dropping
//! packets) is then noticed only by the next client request sent there, which waits the
//! whole `read_timeout` and costs the client its connection. So with a `read_timeout`, an
//! idle node connection gets an OPTIONS every `read_timeout` (at most every
//! [`control::HEARTBEAT`], the control connection's period), as drivers do, and a connection that leaves the proxy's own
//! requests (heartbeats, and the USE and PREPARE it sends to other nodes) unanswered past
//! the `read_timeout` is dropped, to be opened again by the next request for its node. Only
//! a client request unanswered past the `read_timeout` closes the client connection, as
//! the guide says.

use super::*;

impl CassandraSinkCluster {
    pub(super) fn oldest_sent(&self) -> Option<Instant> {
        self.conns.values().filter_map(NodeConn::oldest_sent).min()
    }

    fn timer_expired(&self) -> bool {
        let Some(limit) = self.shared.read_timeout else { return false };
        self.oldest_sent().is_some_and(|oldest| oldest.elapsed() >= limit)
    }

    /// Ready once the oldest request in flight has waited `read_timeout` (the next run then
    /// fails the chain). The timer is set for the oldest request; the requests in flight are
    /// walked only then and when it fires. If it fires for a request that has since been
    /// answered or failed, it is set again for the oldest now, or dropped when nothing is in
    /// flight: a fired timer left in place would keep this ready with nothing to do, and the
    /// connection's loop would spin.
    pub(super) fn poll_read_timeout(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(limit) = self.shared.read_timeout else { return Poll::Pending };
        loop {
            let timer = match self.timer.as_mut() {
                Some(timer) => timer,
                None => {
                    let Some(oldest) = self.oldest_sent() else { return Poll::Pending };
                    self.timer.insert(Timer::new(limit.saturating_sub(oldest.elapsed())))
                }
            };
            if Pin::new(timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.client_request_late() {
                return Poll::Ready(());
            }
            self.timer = None;
        }
    }

    /// True when a client request has waited the `read_timeout`. A node connection late on
    /// the proxy's own requests alone is dropped first (without closing the client
    /// connection); the requests in flight are walked again only then.
    pub(super) fn client_request_late(&mut self) -> bool {
        if !self.timer_expired() {
            return false;
        }
        self.drop_silent_connections();
        self.timer_expired()
    }

    /// Drops every node connection whose requests unanswered past the `read_timeout` are
    /// all the proxy's own: its client requests, if any, get a Server error.
    fn drop_silent_connections(&mut self) {
        let Some(limit) = self.shared.read_timeout else { return };
        let silent: Vec<SocketAddr> =
            self.conns.iter().filter(|(_, c)| c.silent_on_own_requests(limit)).map(|(a, _)| *a).collect();
        for node in silent {
            self.fail_node(node, "no answer to the proxy's own request within the read_timeout");
        }
    }

    /// Sends an OPTIONS on every node connection idle for the heartbeat period, each time
    /// the period passes. Not before the client's STARTUP: until then the protocol version
    /// of the session is not known, and a node refuses a frame of a version it lacks.
    pub(super) fn poll_heartbeat(&mut self, cx: &mut Context<'_>) {
        let Some(limit) = self.shared.read_timeout.filter(|_| self.session.startup.is_some()) else { return };
        let every = limit.min(control::HEARTBEAT);
        let timer = self.heartbeat.get_or_insert_with(|| Timer::new(every));
        if Pin::new(timer).poll(cx).is_pending() {
            return;
        }
        let now = Instant::now();
        let idle: Vec<SocketAddr> =
            self.conns.iter().filter(|(_, c)| c.idle_for(now).is_some_and(|d| d >= every)).map(|(a, _)| *a).collect();
        let options = if idle.is_empty() { None } else { self.own_frame(CassandraBody::Options) };
        if let Some(options) = options {
            for node in idle {
                let queued = self.conns.get_mut(&node).map(|c| c.queue(&options, Purpose::Quiet, now));
                if let Some(Err(e)) = queued {
                    self.fail_node(node, &e.to_string());
                }
            }
        }
        // Set again, and polled so that it wakes this connection.
        let _ = Pin::new(self.heartbeat.insert(Timer::new(every))).poll(cx);
    }
}
