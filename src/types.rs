//! Domain types shared by every layer: sequence numbers, client ids and
//! the broker's clock. The ground floor: it imports nothing of the crate.

use std::fmt;
use std::sync::Arc;

/// A message's position in the broker's single global order (1, 2, 3, …).
///
/// `Seq(0)` means "nothing yet": it is the `last_ack` of a client id that has
/// acknowledged nothing and the head of an empty log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq before any message.
    pub const ZERO: Seq = Seq(0);

    /// The seq right after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a string is not a valid [`ClientId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    /// The id is empty.
    #[error("client id is empty")]
    Empty,
    /// The id is longer than [`ClientId::MAX_LEN`] bytes.
    #[error("client id is longer than {} characters", ClientId::MAX_LEN)]
    TooLong,
    /// The id holds a character outside `[A-Za-z0-9_.-]`.
    #[error("client id may only hold A-Z, a-z, 0-9, '_', '.' and '-'")]
    BadChar,
}

/// A validated client id: 1 to 64 characters of `[A-Za-z0-9_.-]`.
///
/// Cheap to clone (shared), so the registry can hand it to every message and
/// session without copying the text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    /// The longest id the protocol allows.
    pub const MAX_LEN: usize = 64;

    /// Validates `s` and wraps it.
    pub fn new(s: &str) -> Result<ClientId, ClientIdError> {
        if s.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(ClientIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(ClientIdError::BadChar);
        }
        Ok(ClientId(Arc::from(s)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ClientId {
    type Err = ClientIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ClientId::new(s)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// Milliseconds since the Unix epoch, as the broker's clock read them when it
/// accepted a message.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_accepts_the_documented_alphabet() {
        assert!(ClientId::new("Az09_.-").is_ok());
        assert_eq!(ClientId::new(""), Err(ClientIdError::Empty));
        assert_eq!(ClientId::new("a b"), Err(ClientIdError::BadChar));
        assert_eq!(ClientId::new("é"), Err(ClientIdError::BadChar));
        assert!(ClientId::new(&"x".repeat(64)).is_ok());
        assert_eq!(ClientId::new(&"x".repeat(65)), Err(ClientIdError::TooLong));
    }
}
