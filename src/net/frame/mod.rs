//! Typed frames of wire protocol v1 and their text form.
//!
//! Parsing takes one line (terminator already removed) and gives a typed
//! frame or a [`FrameError`] value; it never panics. Encoding appends the
//! line, newline included, to a buffer.
//!
//! `client.rs` holds the frames a client sends, `server.rs` those the
//! server sends; this file the error codes, `BYE` reasons and the pieces
//! both share (numbers, ids, the `MSG` header).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{ClientId, Seq};

mod client;
mod server;

pub use client::{ClientFrame, Tags};
pub use server::ServerFrame;

/// The error codes an `ERR` frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Unknown verb, missing or malformed argument, invalid UTF-8.
    BadFrame,
    /// A line longer than the server's frame limit.
    FrameTooLong,
    /// A frame that needs a login came before `LOGIN`.
    NotLoggedIn,
    /// A second `LOGIN` on the same connection.
    AlreadyLoggedIn,
    /// A `LOGIN` for an id that is not on the allow-list.
    UnknownClient,
    /// A `SEND` without text.
    EmptyMessage,
    /// An `ACK` for a seq this connection was never sent.
    BadAck,
    /// A missing or wrong secret.
    AuthFailed,
    /// A server limit was reached (the text says which).
    Limit,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::FrameTooLong => "FRAME_TOO_LONG",
            ErrorCode::NotLoggedIn => "NOT_LOGGED_IN",
            ErrorCode::AlreadyLoggedIn => "ALREADY_LOGGED_IN",
            ErrorCode::UnknownClient => "UNKNOWN_CLIENT",
            ErrorCode::EmptyMessage => "EMPTY_MESSAGE",
            ErrorCode::BadAck => "BAD_ACK",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::Limit => "LIMIT",
        }
    }

    fn parse(s: &str) -> Option<ErrorCode> {
        Some(match s {
            "BAD_FRAME" => ErrorCode::BadFrame,
            "FRAME_TOO_LONG" => ErrorCode::FrameTooLong,
            "NOT_LOGGED_IN" => ErrorCode::NotLoggedIn,
            "ALREADY_LOGGED_IN" => ErrorCode::AlreadyLoggedIn,
            "UNKNOWN_CLIENT" => ErrorCode::UnknownClient,
            "EMPTY_MESSAGE" => ErrorCode::EmptyMessage,
            "BAD_ACK" => ErrorCode::BadAck,
            "AUTH_FAILED" => ErrorCode::AuthFailed,
            "LIMIT" => ErrorCode::Limit,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closes a connection (`BYE <reason>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByeReason {
    /// The client sent `QUIT`.
    Quit,
    /// Another connection logged in with the same id.
    Replaced,
    /// The server is stopping.
    Shutdown,
    /// The connection was silent for too long.
    Idle,
    /// The id is not on the allow-list.
    UnknownClient,
    /// A missing or wrong secret.
    AuthFailed,
    /// A server limit was reached.
    Limit,
}

impl ByeReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Quit => "quit",
            ByeReason::Replaced => "replaced",
            ByeReason::Shutdown => "shutdown",
            ByeReason::Idle => "idle",
            ByeReason::UnknownClient => "unknown-client",
            ByeReason::AuthFailed => "auth-failed",
            ByeReason::Limit => "limit",
        }
    }

    fn parse(s: &str) -> Option<ByeReason> {
        Some(match s {
            "quit" => ByeReason::Quit,
            "replaced" => ByeReason::Replaced,
            "shutdown" => ByeReason::Shutdown,
            "idle" => ByeReason::Idle,
            "unknown-client" => ByeReason::UnknownClient,
            "auth-failed" => ByeReason::AuthFailed,
            "limit" => ByeReason::Limit,
            _ => return None,
        })
    }
}

impl fmt::Display for ByeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame that cannot be accepted: the code and a human explanation, sent
/// back as `ERR <code> <reason>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}")]
pub struct FrameError {
    /// The protocol error code.
    pub code: ErrorCode,
    /// Text for humans.
    pub reason: String,
}

impl FrameError {
    /// A frame error with the given code and reason.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> FrameError {
        FrameError {
            code,
            reason: reason.into(),
        }
    }

    pub(super) fn bad(reason: impl Into<String>) -> FrameError {
        FrameError::new(ErrorCode::BadFrame, reason)
    }
}

fn utf8(line: &[u8]) -> Result<&str, FrameError> {
    std::str::from_utf8(line).map_err(|_| FrameError::bad("frame is not valid UTF-8"))
}

fn parse_seq(s: &str) -> Result<Seq, FrameError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::bad(format!("'{s}' is not a sequence number")));
    }
    s.parse::<u64>()
        .map(Seq)
        .map_err(|_| FrameError::bad(format!("'{s}' is not a sequence number")))
}

fn parse_client_id(s: &str) -> Result<ClientId, FrameError> {
    ClientId::new(s).map_err(|e| FrameError::bad(format!("bad client id: {e}")))
}

/// Splits `VERB rest` at the first space; `rest` is `None` without a space.
fn split_verb(s: &str) -> (&str, Option<&str>) {
    match s.split_once(' ') {
        Some((verb, rest)) => (verb, Some(rest)),
        None => (s, None),
    }
}

fn put_u64(dst: &mut BytesMut, n: u64) {
    dst.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An upper bound of the length of a `MSG` frame.
pub fn msg_len_bound(from: &ClientId, text: &[u8]) -> usize {
    4 + 21 + 21 + from.as_str().len() + 1 + text.len() + 1
}

/// Appends `MSG <seq> <unix_ms> <from> ` (everything before the text).
fn put_msg_head(dst: &mut BytesMut, seq: Seq, unix_ms: u64, from: &ClientId) {
    put_msg_head_raw(dst, seq, unix_ms, from.as_str());
}

/// [`put_msg_head`] for a sender already known to be a valid client id
/// (read back from the store, where only valid ids are written).
pub(super) fn put_msg_head_raw(dst: &mut BytesMut, seq: Seq, unix_ms: u64, from: &str) {
    dst.put_slice(b"MSG ");
    put_u64(dst, seq.0);
    dst.put_u8(b' ');
    put_u64(dst, unix_ms);
    dst.put_u8(b' ');
    dst.put_slice(from.as_bytes());
    dst.put_u8(b' ');
}

/// Encodes `MSG <seq> <unix_ms> <from> <text>\n` into the empty `dst` and
/// splits it off, returning it with the offset at which the text starts;
/// many frames share one allocation when `dst` has room for them.
pub fn encode_msg_into(
    dst: &mut BytesMut,
    seq: Seq,
    unix_ms: u64,
    from: &ClientId,
    text: &[u8],
) -> (Bytes, usize) {
    debug_assert!(dst.is_empty());
    put_msg_head(dst, seq, unix_ms, from);
    let text_start = dst.len();
    dst.put_slice(text);
    dst.put_u8(b'\n');
    (dst.split().freeze(), text_start)
}
