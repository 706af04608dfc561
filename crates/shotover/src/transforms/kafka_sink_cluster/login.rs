//! The client's SASL login: where its requests go, and what the proxy learns from the
//! answers. A login the broker accepts once is how every other connection of the client
//! logs in: replayed (PLAIN), or with a delegation token of the same user (SCRAM over
//! mTLS, [`scram`]). Without `authorize_scram_over_mtls`, SCRAM is hidden.

use super::broker::Login;
use super::hiding::hide_scram;
use super::{scram, KafkaSinkCluster, Kind, Route};
use crate::message::Message;
use shotover_protocols::kafka::api::top_level_error_code;
use shotover_protocols::kafka::kafka_protocol::messages::{ApiKey, ResponseKind};
use shotover_protocols::kafka::walk::{leading_bytes, leading_strings};
use std::rc::Rc;

/// SASL_AUTHENTICATION_FAILED (58).
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// A client's SCRAM exchange with its home broker.
pub(super) struct ScramLogin {
    mechanism: scram::Mechanism,
    /// From the client-first message.
    user: Option<Rc<str>>,
    /// SaslAuthenticate round trips the broker accepted: the second ends the exchange.
    accepted: u8,
}

impl KafkaSinkCluster {
    /// A SaslHandshake: to the home connection, starting a login.
    pub(super) fn handshake(&mut self, raw: &bytes::Bytes) -> (Kind, Route) {
        let mechanism = leading_strings::<1>(raw).ok().and_then(|[m]| m).unwrap_or_default();
        self.logging_in = Some(vec![raw.clone()]);
        let scram = mechanism.starts_with(b"SCRAM-");
        self.scram_login = (self.shared.scram.as_ref())
            .and(scram::Mechanism::from_name(mechanism))
            .map(|mechanism| ScramLogin { mechanism, user: None, accepted: 0 });
        (Kind::SaslHandshake { scram, hide: self.shared.scram.is_none() }, Route::Home)
    }

    /// A SaslAuthenticate: to the home connection. `None` when the proxy refuses it: a
    /// SCRAM login with a delegation token of the client's own (the proxy could not know
    /// whose tokens to make for the other brokers), or one it cannot read.
    pub(super) fn authenticate(&mut self, raw: &bytes::Bytes) -> Option<(Kind, Route)> {
        if let Some(login) = &mut self.scram_login {
            if login.user.is_none() {
                let first = leading_bytes(raw).ok().and_then(scram::client_first).filter(|f| !f.token)?;
                login.user = Some(Rc::from(first.user));
            }
        }
        self.logging_in.get_or_insert_with(Vec::new).push(raw.clone());
        Some((Kind::SaslAuthenticate, Route::Home))
    }

    /// Answers a SaslAuthenticate the proxy will not pass on with SASL_AUTHENTICATION_FAILED;
    /// the connection closes after it.
    pub(super) fn refuse_login(&mut self, request: Message, raw: &[u8], key: (ApiKey, i16)) {
        tracing::warn!(
            "KafkaSinkCluster: a SCRAM login that is not a user's own (a delegation token, or unreadable) is refused"
        );
        self.refused = true;
        match shotover_protocols::kafka::safe_error::safe_error_response(raw, SASL_AUTHENTICATION_FAILED) {
            Ok(Some(bytes)) => self.answer_now(request, key, bytes),
            _ => self.refuse(request, "shotover: a SCRAM login the proxy cannot check"),
        }
    }

    /// The SaslHandshake's answer; true when it was changed.
    pub(super) fn handshake_answered(&mut self, body: &mut ResponseKind, scram: bool, hide: bool) -> bool {
        if top_level_error_code(body) != Some(0) {
            // No login under way after all: requests go where they belong again.
            self.logging_in = None;
            self.scram_login = None;
        }
        if !hide {
            return false;
        }
        if scram {
            // The broker now waits for a SCRAM exchange that will not come.
            if let Some(home) = self.home {
                self.lost(home, "the client asked for SCRAM, which the proxy does not offer");
            }
            self.logging_in = None;
        }
        hide_scram(body, scram)
    }

    /// A SaslAuthenticate's answer: the login is done once the broker accepted its last
    /// step; a refused SCRAM login closes the connection.
    pub(super) fn authenticate_answered(&mut self, body: &ResponseKind) {
        let accepted = top_level_error_code(body) == Some(0);
        if let Some(login) = &mut self.scram_login {
            if !accepted {
                tracing::info!(
                    "KafkaSinkCluster: the broker refused the SCRAM login of {:?}: closing the connection",
                    login.user.as_deref().unwrap_or_default()
                );
                self.refused = true;
                return;
            }
            login.accepted += 1;
            if login.accepted == 2 {
                let (user, mechanism) = (login.user.take(), login.mechanism);
                self.scram_login = None;
                if let Some(user) = user {
                    self.logged_in(Login::Token { user, mechanism });
                }
            }
        } else if let Some(requests) = self.logging_in.take() {
            // A refused step (a wrong password, or SASL out of turn) ends the attempt.
            if accepted {
                self.logged_in(Login::Replay(requests));
            }
        }
    }

    /// The client is logged in: new connections log in with `login`. Those opened before
    /// (the proxy's own, without a login) are dropped.
    fn logged_in(&mut self, login: Login) {
        self.login = login;
        self.logging_in = None;
        self.control = None;
        let home = self.home;
        self.conns.retain(|address, conn| Some(*address) == home || !conn.in_flight.is_empty());
    }
}
