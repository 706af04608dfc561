//! SCRAM over mTLS: a client's SCRAM login is checked by one broker (its home connection);
//! once the broker accepts it, the proxy logs the client's other broker connections in
//! with a delegation token of the same user, made over the brokers' mTLS port.
//!
//! - A token is made per user and core, with `delegation_token_lifetime_seconds` as its
//!   lifetime, and made anew for the next connection once half of that has passed
//!   (connections already logged in stay logged in).
//! - The token login is SCRAM with the `tokenauth=true` extension, in the client's own
//!   mechanism (SCRAM-SHA-256 or SCRAM-SHA-512), using the token id as user name and the
//!   token's HMAC (base64) as password.

use super::broker::{ask, within};
use crate::sinks::kafka::KafkaConnection;
use base64::Engine as _;
use futures_rustls::TlsConnector;
use hmac::{Hmac, Mac};
use sasl::client::mechanisms::Scram;
use sasl::common::scram::{DeriveError, ScramProvider, Sha256};
use sasl::common::{ChannelBinding, Password};
use shotover_protocols::kafka::kafka_protocol::messages::{
    ApiKey, CreateDelegationTokenRequest, RequestKind, ResponseKind, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use shotover_protocols::kafka::kafka_protocol::protocol::StrBytes;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The SCRAM mechanisms Kafka offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    pub(super) fn from_name(name: &[u8]) -> Option<Self> {
        match name {
            b"SCRAM-SHA-256" => Some(Mechanism::Sha256),
            b"SCRAM-SHA-512" => Some(Mechanism::Sha512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// A SCRAM client logging in as `token`.
    fn client(self, token: &Token) -> io::Result<Box<dyn sasl::client::Mechanism>> {
        match self {
            Mechanism::Sha256 => token_client::<Sha256>(token),
            Mechanism::Sha512 => token_client::<Sha512>(token),
        }
    }
}

fn token_client<S: ScramProvider + 'static>(token: &Token) -> io::Result<Box<dyn sasl::client::Mechanism>> {
    let scram =
        Scram::<S>::new(token.id.to_string(), Password::Plain(token.password.to_string()), ChannelBinding::None)
            .map_err(|e| io::Error::other(format!("cannot start SCRAM: {e:?}")))?;
    Ok(Box::new(scram.with_first_extensions("tokenauth=true".to_owned())))
}

/// SCRAM-SHA-512, which the sasl crate does not provide (Kafka offers it beside SHA-256).
struct Sha512;

struct Sha512Secret;

impl sasl::secret::Secret for Sha512Secret {}

impl ScramProvider for Sha512 {
    type Secret = Sha512Secret;

    fn name() -> &'static str {
        "SHA-512"
    }

    fn hash(data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha512::digest(data).to_vec()
    }

    fn hmac(data: &[u8], key: &[u8]) -> Result<Vec<u8>, hmac::digest::InvalidLength> {
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key)?;
        mac.update(data);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    fn derive(password: &Password, salt: &[u8], iterations: u32) -> Result<Vec<u8>, DeriveError> {
        let Password::Plain(plain) = password else {
            return Err(DeriveError::IncompatibleHashingMethod("a PBKDF2 digest".into(), Self::name().into()));
        };
        let mut out = vec![0; 64];
        pbkdf2::pbkdf2::<Hmac<sha2::Sha512>>(plain.as_bytes(), salt, iterations, &mut out)?;
        Ok(out)
    }
}

/// A delegation token, as a SCRAM user name and password.
#[derive(Clone)]
pub(super) struct Token {
    id: Rc<str>,
    password: Rc<str>,
    made: Instant,
    /// How long it lives: what was asked for, or less if the broker says so.
    lifetime: Duration,
}

impl Token {
    fn fresh(&self) -> bool {
        self.made.elapsed() < self.lifetime / 2
    }
}

/// What a client's SCRAM client-first message says.
#[derive(Debug, PartialEq)]
pub(super) struct ClientFirst {
    pub(super) user: String,
    /// The client logs in with a delegation token of its own (`tokenauth=true`).
    pub(super) token: bool,
}

/// Reads a SCRAM client-first message as Kafka does: `n,[a=authzid],[m=ext,]n=user,r=nonce`
/// followed by `key=value` extensions. `None` when it is not one, or when the broker would
/// log it in as someone the user name does not say:
/// - any `tokenauth` extension, whatever its value (Kafka reads the last one, ignoring
///   case), marks a token login, whose owner only the broker knows;
/// - an authzid other than the user is refused by Kafka too.
pub(super) fn client_first(message: &[u8]) -> Option<ClientFirst> {
    let text = std::str::from_utf8(message).ok()?;
    let rest = text.strip_prefix("n,")?;
    let (authzid, rest) = rest.split_once(',')?;
    let mut fields = rest.split(',').peekable();
    if fields.peek().is_some_and(|f| f.starts_with("m=")) {
        fields.next();
    }
    // RFC 5802 escapes ',' and '=' in user names.
    let user = fields.next()?.strip_prefix("n=")?.replace("=2C", ",").replace("=3D", "=");
    fields.next()?.strip_prefix("r=")?;
    let mut token = false;
    for extension in fields {
        let (key, _) = extension.split_once('=')?;
        token |= key.eq_ignore_ascii_case("tokenauth");
    }
    match authzid.strip_prefix("a=") {
        Some(id) if id.replace("=2C", ",").replace("=3D", "=") != user => return None,
        None if !authzid.is_empty() => return None,
        _ => {}
    }
    Some(ClientFirst { user, token })
}

/// `authorize_scram_over_mtls`, resolved, with the tokens made on this core.
pub(super) struct ScramOverMtls {
    contact: Vec<SocketAddr>,
    tls: TlsConnector,
    lifetime: Duration,
    tokens: RefCell<HashMap<Rc<str>, Token>>,
}

impl ScramOverMtls {
    pub(super) fn new(contact: Vec<SocketAddr>, tls: TlsConnector, lifetime: Duration) -> Self {
        ScramOverMtls { contact, tls, lifetime, tokens: RefCell::new(HashMap::new()) }
    }

    /// A token of `user` younger than half its lifetime: the one last made, or a new one.
    pub(super) async fn token(&self, user: &Rc<str>, connect_timeout: Duration, limit: Duration) -> io::Result<Token> {
        let fresh = self.tokens.borrow().get(user).filter(|t| t.fresh()).cloned();
        if let Some(token) = fresh {
            return Ok(token);
        }
        let token = self.create(user, connect_timeout, limit).await?;
        let mut tokens = self.tokens.borrow_mut();
        // Those of users gone quiet go once they would be made anew anyway.
        tokens.retain(|_, t| t.fresh());
        tokens.insert(user.clone(), token.clone());
        Ok(token)
    }

    /// Forgets `user`'s token, which the brokers no longer take (expired early, or the
    /// brokers' token secret changed): the next connection makes a new one.
    pub(super) fn forget(&self, user: &str) {
        self.tokens.borrow_mut().remove(user);
    }

    /// Makes a token owned by `user` over the first mTLS contact point that answers.
    async fn create(&self, user: &str, connect_timeout: Duration, limit: Duration) -> io::Result<Token> {
        let mut last = io::Error::other("no mtls_port_contact_points");
        for &address in &self.contact {
            let tls = crate::sinks::valkey_slots::node_tls(&self.tls, address);
            let made = within(limit, async {
                let mut conn = KafkaConnection::connect(address, connect_timeout, Some(&tls)).await?;
                let request = CreateDelegationTokenRequest::default()
                    .with_owner_principal_type(Some(StrBytes::from_static_str("User")))
                    .with_owner_principal_name(Some(StrBytes::from_string(user.to_owned())))
                    .with_max_lifetime_ms(i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX));
                let body = RequestKind::CreateDelegationToken(request);
                match ask(&mut conn, body, ApiKey::CreateDelegationToken, 3, 1).await? {
                    ResponseKind::CreateDelegationToken(r) if r.error_code == 0 => {
                        // The broker may cut the lifetime short (delegation.token.expiry.time.ms).
                        let ends = r.expiry_timestamp_ms.min(r.max_timestamp_ms);
                        let granted = u64::try_from(ends.saturating_sub(r.issue_timestamp_ms)).unwrap_or(0);
                        Ok(Token {
                            id: Rc::from(r.token_id.as_str()),
                            password: Rc::from(base64::engine::general_purpose::STANDARD.encode(&r.hmac)),
                            made: Instant::now(),
                            lifetime: self.lifetime.min(Duration::from_millis(granted)),
                        })
                    }
                    ResponseKind::CreateDelegationToken(r) => {
                        Err(io::Error::other(format!("the broker answered with error code {}", r.error_code)))
                    }
                    _ => Err(io::Error::other("not a CreateDelegationToken response")),
                }
            })
            .await;
            match made {
                Ok(token) => {
                    tracing::info!("KafkaSinkCluster: made a delegation token for the user {user:?} over {address}");
                    return Ok(token);
                }
                Err(e) => {
                    tracing::warn!("KafkaSinkCluster: cannot make a delegation token for {user:?} over {address}: {e}");
                    last = e;
                }
            }
        }
        Err(io::Error::other(format!("no delegation token for the user {user:?}: {last}")))
    }
}

/// Logs `conn` in with `token`. A broker's refusal is a PermissionDenied error (a token
/// just made may not have reached every broker yet).
pub(super) async fn login(conn: &mut KafkaConnection, mechanism: Mechanism, token: &Token) -> io::Result<()> {
    let refused = |what: &str, detail: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the broker refused the token login ({what}): {detail}"),
        )
    };
    let handshake = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism.name()));
    match ask(conn, RequestKind::SaslHandshake(handshake), ApiKey::SaslHandshake, 1, 1).await? {
        ResponseKind::SaslHandshake(r) if r.error_code == 0 => {}
        ResponseKind::SaslHandshake(r) => return Err(refused("handshake", format!("error code {}", r.error_code))),
        _ => return Err(io::Error::other("not a SaslHandshake response")),
    }
    let mut client = mechanism.client(token)?;
    let mut message = client.initial();
    for step in 2..=3 {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(std::mem::take(&mut message).into());
        let answer = match ask(conn, RequestKind::SaslAuthenticate(request), ApiKey::SaslAuthenticate, 2, step).await? {
            ResponseKind::SaslAuthenticate(r) if r.error_code == 0 => r.auth_bytes,
            ResponseKind::SaslAuthenticate(r) => {
                let text = r.error_message.map(|m| m.to_string()).unwrap_or_default();
                return Err(refused("authenticate", format!("error code {}: {text}", r.error_code)));
            }
            _ => return Err(io::Error::other("not a SaslAuthenticate response")),
        };
        if step == 2 {
            message = client.response(&answer).map_err(|e| io::Error::other(format!("SCRAM: {e}")))?;
        } else {
            client.success(&answer).map_err(|e| io::Error::other(format!("SCRAM: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_first_names_the_user() {
        let first = client_first(b"n,,n=user1,r=fyko+d2lbbFgONRv9qkxdawL");
        assert_eq!(first, Some(ClientFirst { user: "user1".into(), token: false }));
        let token = client_first(b"n,,n=tok=2Cen=3D,r=abc,tokenauth=true");
        assert_eq!(token, Some(ClientFirst { user: "tok,en=".into(), token: true }));
        // Kafka reads the last tokenauth, ignoring the case of its value: any of them is a
        // token login.
        for ext in ["tokenauth=TRUE", "tokenauth=false,tokenauth=True", "TokenAuth=1"] {
            let first = client_first(format!("n,,n=tok,r=abc,{ext}").as_bytes());
            assert_eq!(first.map(|f| f.token), Some(true), "{ext}");
        }
        // The first n= is the user; a later one is an extension, as for Kafka.
        let first = client_first(b"n,,n=user1,r=abc,n=admin").unwrap();
        assert_eq!(first.user, "user1");
        assert_eq!(client_first(b"n,,m=x,n=user1,r=abc").map(|f| f.user), Some("user1".into()));
        assert_eq!(client_first(b"n,a=user1,n=user1,r=abc").map(|f| f.user), Some("user1".into()));
        assert_eq!(client_first(b"n,a=admin,n=user1,r=abc"), None);
        assert_eq!(client_first(b"y,,n=user1,r=abc"), None);
        assert_eq!(client_first(b"x,,n=user1,r=abc"), None);
        assert_eq!(client_first(b"n,,r=abc"), None);
        assert_eq!(client_first(b"n,,n=user1"), None);
        assert_eq!(client_first(&[0xff, 0xfe]), None);
    }

    /// SCRAM-SHA-512's keys, checked against Python's hashlib and hmac (an independent
    /// implementation): the salted password and the client key.
    #[test]
    fn sha512_keys_match_an_independent_implementation() {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let salted = Sha512::derive(&Password::Plain("pencil".into()), b"salt", 4096).unwrap();
        assert_eq!(
            hex(&salted),
            "2cfe3a1c151662b1ea49d13f595674a1c666add70df15d3d02254e9905993878\
             261da7407fd11c2fee4b0a30df5154b1a752f86a13380ddd4bdd9a7c958ec769"
        );
        assert_eq!(
            hex(&Sha512::hmac(b"Client Key", &salted).unwrap()),
            "c1b769d81ba4d11a9ec58501beda1cec7bd40bc19f0aa61ea6bc2ebd5e5b236f\
             ddd931e61991bfbedfab73d039704fc58af4467d6e5391cdf5cf8ac9b1a57c05"
        );
    }
}
