//! Domain types shared by every layer: sequence numbers, client ids and
//! stored messages.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

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

/// One accepted message, with its `MSG` wire frame encoded once.
///
/// The frame is built when the message is accepted (or read back from the
/// store) and shared by every receiver, so fan-out copies a pointer, not the
/// text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    seq: Seq,
    unix_ms: u64,
    from: ClientId,
    frame: Bytes,
    text_start: usize,
}

impl Message {
    /// Builds a message and its `MSG <seq> <unix_ms> <from> <text>\n` frame.
    pub fn new(seq: Seq, unix_ms: u64, from: ClientId, text: &[u8]) -> Message {
        let mut buf = bytes::BytesMut::with_capacity(crate::net::frame::msg_len_bound(&from, text));
        Message::new_in(&mut buf, seq, unix_ms, from, text)
    }

    /// Like [`Message::new`], but encodes the frame in `buf`'s spare room:
    /// messages built one after the other in a buffer with room for all of
    /// them share one allocation (used when reading many from the store).
    pub fn new_in(
        buf: &mut bytes::BytesMut,
        seq: Seq,
        unix_ms: u64,
        from: ClientId,
        text: &[u8],
    ) -> Message {
        let need = crate::net::frame::msg_len_bound(&from, text);
        if buf.capacity() - buf.len() < need {
            buf.reserve(need.max(64 * 1024));
        }
        let (frame, text_start) =
            crate::net::frame::encode_msg_into(buf, seq, unix_ms, &from, text);
        Message {
            seq,
            unix_ms,
            from,
            frame,
            text_start,
        }
    }

    /// The message's place in the global order.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// When the broker accepted it.
    pub fn unix_ms(&self) -> u64 {
        self.unix_ms
    }

    /// Who sent it.
    pub fn from(&self) -> &ClientId {
        &self.from
    }

    /// The text, without the frame around it.
    pub fn text(&self) -> &[u8] {
        &self.frame[self.text_start..self.frame.len() - 1]
    }

    /// The complete encoded `MSG` frame, newline included.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
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

    #[test]
    fn message_frame_and_text_agree() {
        let m = Message::new(
            Seq(42),
            1_764_080_000_000,
            ClientId::new("7").unwrap(),
            b"hi there",
        );
        assert_eq!(&m.frame()[..], b"MSG 42 1764080000000 7 hi there\n");
        assert_eq!(m.text(), b"hi there");
    }
}
