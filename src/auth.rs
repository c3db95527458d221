//! Per-client secrets: the secrets file, Argon2id hashing, and a verifier
//! that runs on threads of its own (hashing is slow on purpose and must not
//! stall an event loop).
//!
//! The file holds one `id:hash` line per client id, where the hash is an
//! Argon2id PHC string (`$argon2id$v=19$m=…`), as `server hash-secret`
//! prints it. Blank lines and lines starting with `#` are ignored.

use std::collections::HashMap;
use std::path::Path;

use actix::{Actor, Handler, Message as ActixMessage, SyncContext};
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;

use crate::types::ClientId;

/// Why a secrets file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// It cannot be read.
    #[error("cannot read secrets file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line is not `id:argon2-phc-string`.
    #[error("secrets file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The client ids and their secret hashes.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    hashes: HashMap<ClientId, String>,
}

impl Secrets {
    /// Reads and checks a secrets file; every bad line is an error naming it.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
            path: shown.clone(),
            source,
        })?;
        Secrets::parse(&text).map_err(|(line, reason)| SecretsError::Line {
            path: shown,
            line,
            reason,
        })
    }

    /// Parses the file's text; an error is (line number, reason).
    pub fn parse(text: &str) -> Result<Secrets, (usize, String)> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hash) = line
                .split_once(':')
                .ok_or_else(|| (n, "expected id:hash".to_owned()))?;
            let id = ClientId::new(id).map_err(|e| (n, format!("bad client id '{id}': {e}")))?;
            let parsed =
                PasswordHash::new(hash).map_err(|e| (n, format!("not a PHC hash string: {e}")))?;
            if parsed.algorithm.as_str() != "argon2id" {
                return Err((
                    n,
                    format!("hash algorithm is {}, expected argon2id", parsed.algorithm),
                ));
            }
            if hashes.insert(id.clone(), hash.to_owned()).is_some() {
                return Err((n, format!("client id {id} appears twice")));
            }
        }
        Ok(Secrets { hashes })
    }

    /// The ids that have a secret.
    pub fn ids(&self) -> impl Iterator<Item = &ClientId> {
        self.hashes.keys()
    }

    /// The hash stored for `id`.
    pub fn hash(&self, id: &ClientId) -> Option<&str> {
        self.hashes.get(id).map(String::as_str)
    }
}

/// Hashes a secret with Argon2id and a random salt, as a PHC string.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash: {e}"))
}

/// A hash of nothing anyone knows, checked when the id is unknown so that an
/// unknown id costs the same time as a wrong secret.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZGVjb3lkZWNveWRlY295$5i7mXlDj5z4ObVJ3oMbZKZ1q1dQe6WZ4e0O2jW7kRJI";

/// How many threads check secrets: the most checks that run at once.
pub const VERIFIER_THREADS: usize = 2;

/// Checks secrets on its own threads; start with
/// `SyncArbiter::start(VERIFIER_THREADS, …)`.
#[derive(Debug, Default)]
pub struct Verifier;

impl Actor for Verifier {
    type Context = SyncContext<Self>;
}

/// Is `secret` the one hashed in `hash`? `hash` is `None` for an unknown id:
/// the check then runs against a decoy and fails.
#[derive(ActixMessage)]
#[rtype(result = "bool")]
pub struct Verify {
    /// What the client sent, if anything.
    pub secret: Option<String>,
    /// The stored hash.
    pub hash: Option<String>,
}

impl Handler<Verify> for Verifier {
    type Result = bool;

    fn handle(&mut self, msg: Verify, _: &mut Self::Context) -> bool {
        let known = msg.hash.is_some();
        let hash = msg.hash.as_deref().unwrap_or(DECOY);
        let secret = msg.secret.as_deref().unwrap_or("");
        // argon2 compares the computed and stored hashes in constant time.
        let matches = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        known && msg.secret.is_some() && matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_files_are_checked_line_by_line() {
        let h = hash_secret("s3cret").unwrap();
        let s = Secrets::parse(&format!("# comment\n\n1:{h}\n")).unwrap();
        let id = ClientId::new("1").unwrap();
        let mut v = Verifier;
        let parsed = PasswordHash::new(s.hash(&id).unwrap()).unwrap();
        assert!(Argon2::default()
            .verify_password(b"s3cret", &parsed)
            .is_ok());
        assert!(Argon2::default().verify_password(b"nope", &parsed).is_err());
        let _ = &mut v;
        assert_eq!(Secrets::parse("1:x").unwrap_err().0, 1);
        assert_eq!(Secrets::parse(&format!("\nbad id:{h}")).unwrap_err().0, 2);
        assert!(Secrets::parse(&format!("1:{h}\n1:{h}"))
            .unwrap_err()
            .1
            .contains("twice"));
        assert!(PasswordHash::new(DECOY).is_ok());
    }
}
