//! `server tls-init`: a private CA and a server certificate signed by it,
//! written as PEM files, so TLS takes one command to set up.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// How long the private CA is valid.
const CA_DAYS: i64 = 10 * 365;
/// How long the server certificate is valid.
const SERVER_DAYS: i64 = 825;
/// Certificates are valid from a little before now, so a client whose
/// clock is slightly behind still accepts them.
const CLOCK_SLACK_SECS: i64 = 3600;

/// The files `tls-init` wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The CA certificate: what clients trust (`--ca-file`).
    pub ca_cert: PathBuf,
    /// The CA's private key: keep it off the server.
    pub ca_key: PathBuf,
    /// The server certificate (`--tls-cert`).
    pub server_cert: PathBuf,
    /// The server's private key (`--tls-key`).
    pub server_key: PathBuf,
}

/// Why `tls-init` failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A host name that cannot go into a certificate.
    #[error("bad --host '{0}': {1}")]
    BadHost(String, String),
    /// No host name given.
    #[error("give at least one --host (the name or address clients connect to)")]
    NoHost,
    /// A file that exists already; nothing is overwritten.
    #[error("{0} exists already; remove it or pick another directory")]
    Exists(String),
    /// Generating a key or certificate failed.
    #[error("cannot make the certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("cannot write {0}: {1}")]
    Io(String, std::io::Error),
}

fn validity(params: &mut CertificateParams, days: i64) -> Result<(), CertError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let at = |secs: i64| {
        x509_parser::time::ASN1Time::from_timestamp(secs)
            .ok()
            .map(|t| t.to_datetime())
    };
    match (at(now - CLOCK_SLACK_SECS), at(now + days * 86_400)) {
        (Some(from), Some(to)) => {
            params.not_before = from;
            params.not_after = to;
            Ok(())
        }
        _ => Err(CertError::Generate(rcgen::Error::Time)),
    }
}

/// Writes `ca.pem`, `ca.key`, `server.pem` and `server.key` into `dir`
/// (created if needed): a new CA, and a certificate for `hosts` signed by
/// it. Keys are written with mode 0600; no existing file is overwritten.
pub fn tls_init(dir: &Path, hosts: &[String]) -> Result<Written, CertError> {
    if hosts.is_empty() {
        return Err(CertError::NoHost);
    }
    // Only what a client can check: a DNS name or an IP address.
    for host in hosts {
        rustls_pki_types::ServerName::try_from(host.as_str())
            .map_err(|e| CertError::BadHost(host.clone(), e.to_string()))?;
    }
    let written = Written {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    let all = [
        &written.ca_cert,
        &written.ca_key,
        &written.server_cert,
        &written.server_key,
    ];
    if let Some(p) = all.iter().find(|p| p.exists()) {
        return Err(CertError::Exists(p.display().to_string()));
    }

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("Herald private CA for {}", hosts[0]),
    );
    validity(&mut ca, CA_DAYS)?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(hosts.to_vec())?;
    server.distinguished_name = DistinguishedName::new();
    server
        .distinguished_name
        .push(DnType::CommonName, hosts[0].clone());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut server, SERVER_DAYS)?;
    let server_cert = server.signed_by(&key, &issuer)?;

    std::fs::create_dir_all(dir).map_err(|e| CertError::Io(dir.display().to_string(), e))?;
    write(
        &written.ca_key,
        issuer.key().serialize_pem().as_bytes(),
        0o600,
    )?;
    write(&written.server_key, key.serialize_pem().as_bytes(), 0o600)?;
    write(&written.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write(&written.server_cert, server_cert.pem().as_bytes(), 0o644)?;
    Ok(written)
}

/// Creates `path` (never over an existing file) with `mode` from the start,
/// so a key is never readable by others even for a moment.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let err = |e| CertError::Io(path.display().to_string(), e);
    let mut file = options.open(path).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_must_be_names_or_addresses_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let bad = tls_init(dir.path(), &["not a host".into()]).unwrap_err();
        assert!(bad.to_string().contains("not a host"), "{bad}");
        assert!(matches!(tls_init(dir.path(), &[]), Err(CertError::NoHost)));
        assert!(!dir.path().join("ca.pem").exists());
        tls_init(dir.path(), &["chat.example".into(), "10.0.0.5".into()]).unwrap();
        let again = tls_init(dir.path(), &["chat.example".into()]).unwrap_err();
        assert!(matches!(again, CertError::Exists(_)), "{again}");
    }
}
