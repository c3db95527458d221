//! Trusting a self-signed server certificate as it is (pinning).
//!
//! `openssl req -x509` makes a self-signed certificate marked `CA:TRUE`;
//! normal chain verification refuses such a certificate as a server's own
//! (`CaUsedAsEndEntity`). A client given it in `--ca-file` means "trust
//! this certificate", so [`PinningVerifier`] accepts a server that presents
//! a certificate byte for byte equal to a self-signed one in that file, once
//! its names, dates and purpose fit; the handshake signature then proves
//! the server holds its key. Every other certificate goes through rustls's
//! normal verifier.

use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{verify_server_name, WebPkiServerVerifier};
use tokio_rustls::rustls::server::ParsedCertificate;
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Is `cert` self-signed (its issuer is its subject)? An error when it is
/// not a certificate at all.
pub fn is_self_signed(cert: &CertificateDer<'_>) -> Result<bool, String> {
    let (_, parsed) =
        X509Certificate::from_der(cert.as_ref()).map_err(|e| format!("not a certificate: {e}"))?;
    Ok(parsed.issuer().as_raw() == parsed.subject().as_raw())
}

/// Trusts the pinned certificates as they are, everything else through
/// normal chain verification.
#[derive(Debug)]
pub struct PinningVerifier {
    /// Self-signed certificates a server may present as they are.
    pinned: Vec<CertificateDer<'static>>,
    /// Chain verification against the CA file's certificates; also checks
    /// handshake signatures, which do not depend on the chain.
    chains: Arc<WebPkiServerVerifier>,
}

impl PinningVerifier {
    /// A verifier pinning `pinned` and verifying other chains with `chains`.
    pub fn new(pinned: Vec<CertificateDer<'static>>, chains: Arc<WebPkiServerVerifier>) -> Self {
        PinningVerifier { pinned, chains }
    }
}

/// Checks what chain verification would check of a server certificate,
/// except its issuer: the name, the validity dates, and (when the
/// certificate restricts it) that it may serve as a TLS server.
fn check_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    verify_server_name(&parsed, server_name)?;
    let (_, x509) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| CertificateError::BadEncoding)?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = x509.validity();
    if now < validity.not_before.timestamp() {
        return Err(CertificateError::NotValidYet.into());
    }
    if now > validity.not_after.timestamp() {
        return Err(CertificateError::Expired.into());
    }
    match x509.extended_key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(eku)) if eku.value.any || eku.value.server_auth => Ok(()),
        Ok(Some(_)) => Err(CertificateError::InvalidPurpose.into()),
        Err(_) => Err(CertificateError::BadEncoding.into()),
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self
            .pinned
            .iter()
            .any(|pin| pin.as_ref() == end_entity.as_ref())
        {
            check_pinned(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.chains
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chains.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.chains.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chains.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.chains.root_hint_subjects()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_means_issuer_is_subject() {
        let dir = tempfile::tempdir().unwrap();
        let written = crate::net::certs::tls_init(dir.path(), &["localhost".into()]).unwrap();
        let der = |p: &std::path::Path| {
            use rustls_pki_types::pem::PemObject;
            CertificateDer::from_pem_file(p).unwrap()
        };
        assert!(is_self_signed(&der(&written.ca_cert)).unwrap());
        assert!(!is_self_signed(&der(&written.server_cert)).unwrap());
        assert!(is_self_signed(&CertificateDer::from(vec![1u8, 2, 3])).is_err());
    }
}
