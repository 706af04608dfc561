//! TLS for sources (server side) and sinks (client side), with rustls.
//!
//! Certificates and keys are read once at startup; a missing or unreadable file is a
//! configuration error that names the file. The configs here are the YAML `tls` blocks.

use anyhow::{anyhow, bail, Context, Result};
use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::Deserialize;
use std::sync::Arc;

/// TLS of a source: clients connect to the proxy over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsAcceptorConfig {
    /// PEM certificate chain the proxy presents.
    pub certificate_path: String,
    /// PEM private key of that certificate.
    pub private_key_path: String,
    /// PEM CA certificates; when given, clients must present a certificate signed by one.
    #[serde(default)]
    pub certificate_authority_path: Option<String>,
}

/// TLS of a sink: the proxy connects to the upstream over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConnectorConfig {
    /// PEM CA certificates that sign the upstream's certificate.
    pub certificate_authority_path: String,
    /// PEM client certificate, for upstreams that require one.
    #[serde(default)]
    pub certificate_path: Option<String>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub private_key_path: Option<String>,
    /// Check that the upstream certificate names the host connected to. Default true.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
}

fn default_true() -> bool {
    true
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("cannot read certificate file {path:?}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("invalid certificate file {path:?}: {e}"))?;
    if certs.is_empty() {
        bail!("certificate file {path:?} holds no certificate");
    }
    Ok(certs)
}

fn private_key(path: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| anyhow!("cannot read private key file {path:?}: {e}"))
}

fn roots(path: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).with_context(|| format!("invalid CA certificate in {path:?}"))?;
    }
    Ok(Arc::new(roots))
}

impl TlsAcceptorConfig {
    /// Reads the files and builds the acceptor.
    pub fn build(&self) -> Result<TlsAcceptor> {
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = match &self.certificate_authority_path {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                    .build()
                    .with_context(|| format!("cannot use {ca:?} to verify clients"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certificates(&self.certificate_path)?, private_key(&self.private_key_path)?)
            .with_context(|| format!("{:?} does not match {:?}", self.private_key_path, self.certificate_path))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl TlsConnectorConfig {
    /// Reads the files and builds the connector.
    pub fn build(&self) -> Result<TlsConnector> {
        let roots = roots(&self.certificate_authority_path)?;
        let builder = ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
        let builder = if self.verify_hostname {
            builder.with_root_certificates(roots)
        } else {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .context("cannot build the certificate verifier")?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyHostname(inner)))
        };
        let config = match (&self.certificate_path, &self.private_key_path) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .with_context(|| format!("{key:?} does not match {cert:?}"))?,
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("certificate_path and private_key_path must be given together"),
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// The server name to present and verify for `host` (an IP address or a DNS name).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| anyhow!("{host:?} is not a valid TLS server name: {e}"))
}

/// Verifies the upstream's certificate chain but not the name in it (`verify_hostname:
/// false`), for upstreams reached by an address their certificate does not list.
#[derive(Debug)]
struct AnyHostname(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
