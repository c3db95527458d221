//! Typed frames of wire protocol v1 and their text form.
//!
//! Parsing takes one line (terminator already removed) and gives a typed
//! frame or a [`FrameError`] value; it never panics. Encoding appends the
//! line, newline included, to a buffer.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{ClientId, Seq};

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

    fn bad(reason: impl Into<String>) -> FrameError {
        FrameError::new(ErrorCode::BadFrame, reason)
    }
}

/// The tags a client frame may carry (`@key=value;… VERB …`, protocol v1.1).
/// Only `mid` has a meaning; other keys are accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags {
    /// The client's message id, used to recognise a resent `SEND`.
    pub mid: Option<String>,
}

/// A frame sent by a client. Its `Debug` form never shows a `LOGIN`'s
/// secret, so logging a frame (`RUST_LOG=debug`) cannot leak one.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `LOGIN <client_id> [<secret>]`.
    Login {
        /// The id to log in as.
        id: ClientId,
        /// The secret, when the client sent one.
        secret: Option<String>,
    },
    /// `SEND <text>`: broadcast `text` to every other client id.
    Send {
        /// The message text (valid UTF-8, at least one byte, no newline).
        text: Bytes,
        /// Tags sent in front of the verb.
        tags: Tags,
    },
    /// `ACK <seq>`: everything up to `seq` is handled.
    Ack {
        /// The highest handled seq.
        seq: Seq,
    },
    /// `PING [<token>]`.
    Ping {
        /// Echoed back in `PONG`.
        token: Option<Bytes>,
    },
    /// `QUIT`: polite close.
    Quit,
}

impl fmt::Debug for ClientFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFrame::Login { id, secret } => f
                .debug_struct("Login")
                .field("id", id)
                .field("secret", &secret.as_ref().map(|_| Redacted))
                .finish(),
            ClientFrame::Send { text, tags } => f
                .debug_struct("Send")
                .field("text", text)
                .field("tags", tags)
                .finish(),
            ClientFrame::Ack { seq } => f.debug_struct("Ack").field("seq", seq).finish(),
            ClientFrame::Ping { token } => f.debug_struct("Ping").field("token", token).finish(),
            ClientFrame::Quit => f.write_str("Quit"),
        }
    }
}

/// Stands in for a secret in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A frame sent by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// `WELCOME <client_id> <pending>`.
    Welcome {
        /// The id now logged in.
        id: ClientId,
        /// How many backlog `MSG` frames follow.
        pending: u64,
    },
    /// `MSG <seq> <unix_ms> <from> <text>`.
    Msg {
        /// Global sequence number.
        seq: Seq,
        /// Server receive time.
        unix_ms: u64,
        /// Sender.
        from: ClientId,
        /// The text.
        text: Bytes,
    },
    /// `SENT <seq>`: the oldest unanswered `SEND` is stored as `seq`.
    Sent {
        /// The stored message's seq.
        seq: Seq,
    },
    /// `PONG [<token>]`.
    Pong {
        /// The `PING`'s token.
        token: Option<Bytes>,
    },
    /// `ERR <code> <text>`.
    Err(FrameError),
    /// `BYE <reason>`: the server closes right after.
    Bye {
        /// Why.
        reason: ByeReason,
    },
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

/// Undoes IRCv3 tag value escaping.
fn unescape_tag_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn parse_tags(block: &str) -> Result<Tags, FrameError> {
    let mut tags = Tags::default();
    if block.is_empty() {
        return Err(FrameError::bad("empty tag block"));
    }
    for tag in block.split(';') {
        let (key, value) = match tag.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (tag, None),
        };
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'.' | b'+'));
        if !key_ok {
            return Err(FrameError::bad(format!("malformed tag key '{key}'")));
        }
        if key == "mid" {
            let value = unescape_tag_value(value.unwrap_or(""));
            let mid_ok = (1..=64).contains(&value.len())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !mid_ok {
                return Err(FrameError::bad(
                    "mid must be 1 to 64 characters of A-Z a-z 0-9 _ . -",
                ));
            }
            tags.mid = Some(value);
        }
    }
    Ok(tags)
}

impl ClientFrame {
    /// Parses one line (without its terminator) into a frame.
    ///
    /// `line` is a `Bytes` so that the text of a `SEND` is a zero-copy slice
    /// of it.
    pub fn parse(line: Bytes) -> Result<ClientFrame, FrameError> {
        let s = utf8(&line)?;
        let mut tags = Tags::default();
        let mut body_start = 0;
        if let Some(rest) = s.strip_prefix('@') {
            let (block, _) = rest
                .split_once(' ')
                .ok_or_else(|| FrameError::bad("a tag block must be followed by a verb"))?;
            tags = parse_tags(block)?;
            body_start = 1 + block.len() + 1;
        }
        let body = &s[body_start..];
        let (verb, rest) = split_verb(body);
        match verb {
            "LOGIN" => {
                let rest = rest.ok_or_else(|| FrameError::bad("LOGIN needs a client id"))?;
                let mut parts = rest.split(' ');
                let id = parse_client_id(parts.next().unwrap_or(""))?;
                let secret = parts.next().map(str::to_owned);
                if secret.as_deref() == Some("") || parts.next().is_some() {
                    return Err(FrameError::bad("usage: LOGIN <client_id> [<secret>]"));
                }
                Ok(ClientFrame::Login { id, secret })
            }
            "SEND" => {
                let text = rest.unwrap_or("");
                if text.is_empty() {
                    return Err(FrameError::new(ErrorCode::EmptyMessage, "SEND needs text"));
                }
                if text.contains('\r') {
                    return Err(FrameError::bad(
                        "message text may not contain a carriage return",
                    ));
                }
                let start = body_start + "SEND ".len();
                Ok(ClientFrame::Send {
                    text: line.slice(start..),
                    tags,
                })
            }
            "ACK" => {
                let arg = rest.ok_or_else(|| FrameError::bad("ACK needs a sequence number"))?;
                Ok(ClientFrame::Ack {
                    seq: parse_seq(arg)?,
                })
            }
            "PING" => {
                let token = match rest {
                    None | Some("") => None,
                    Some(t) => Some(line.slice(line.len() - t.len()..)),
                };
                Ok(ClientFrame::Ping { token })
            }
            "QUIT" => match rest {
                None => Ok(ClientFrame::Quit),
                Some(_) => Err(FrameError::bad("QUIT takes no arguments")),
            },
            "" => Err(FrameError::bad("empty frame")),
            other => Err(FrameError::bad(format!(
                "unknown verb '{}'",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// Appends the frame's wire form, newline included, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            ClientFrame::Login { id, secret } => {
                dst.put_slice(b"LOGIN ");
                dst.put_slice(id.as_str().as_bytes());
                if let Some(secret) = secret {
                    dst.put_u8(b' ');
                    dst.put_slice(secret.as_bytes());
                }
            }
            ClientFrame::Send { text, tags } => {
                if let Some(mid) = &tags.mid {
                    dst.put_slice(b"@mid=");
                    dst.put_slice(mid.as_bytes());
                    dst.put_u8(b' ');
                }
                dst.put_slice(b"SEND ");
                dst.put_slice(text);
            }
            ClientFrame::Ack { seq } => {
                dst.put_slice(b"ACK ");
                dst.put_slice(seq.0.to_string().as_bytes());
            }
            ClientFrame::Ping { token } => {
                dst.put_slice(b"PING");
                if let Some(token) = token {
                    dst.put_u8(b' ');
                    dst.put_slice(token);
                }
            }
            ClientFrame::Quit => dst.put_slice(b"QUIT"),
        }
        dst.put_u8(b'\n');
    }
}

impl ServerFrame {
    /// Parses one line from the server (used by clients).
    pub fn parse(line: Bytes) -> Result<ServerFrame, FrameError> {
        let s = utf8(&line)?;
        let (verb, rest) = split_verb(s);
        let rest_or =
            |what: &str| rest.ok_or_else(|| FrameError::bad(format!("{verb} needs {what}")));
        match verb {
            "WELCOME" => {
                let (id, pending) = rest_or("an id and a count")?
                    .split_once(' ')
                    .ok_or_else(|| FrameError::bad("WELCOME needs an id and a count"))?;
                Ok(ServerFrame::Welcome {
                    id: parse_client_id(id)?,
                    pending: parse_seq(pending)?.0,
                })
            }
            "MSG" => {
                let mut parts = rest_or("arguments")?.splitn(4, ' ');
                let seq = parse_seq(parts.next().unwrap_or(""))?;
                let unix_ms = parse_seq(parts.next().unwrap_or(""))?.0;
                let from = parse_client_id(parts.next().unwrap_or(""))?;
                let text = parts
                    .next()
                    .ok_or_else(|| FrameError::bad("MSG without text"))?;
                Ok(ServerFrame::Msg {
                    seq,
                    unix_ms,
                    from,
                    text: line.slice(line.len() - text.len()..),
                })
            }
            "SENT" => Ok(ServerFrame::Sent {
                seq: parse_seq(rest_or("a sequence number")?)?,
            }),
            "PONG" => Ok(ServerFrame::Pong {
                token: rest
                    .filter(|t| !t.is_empty())
                    .map(|t| line.slice(line.len() - t.len()..)),
            }),
            "ERR" => {
                let rest = rest_or("a code")?;
                let (code, text) = split_verb(rest);
                let code = ErrorCode::parse(code)
                    .ok_or_else(|| FrameError::bad(format!("unknown error code '{code}'")))?;
                Ok(ServerFrame::Err(FrameError::new(code, text.unwrap_or(""))))
            }
            "BYE" => {
                let reason = rest_or("a reason")?;
                Ok(ServerFrame::Bye {
                    reason: ByeReason::parse(reason)
                        .ok_or_else(|| FrameError::bad(format!("unknown BYE reason '{reason}'")))?,
                })
            }
            other => Err(FrameError::bad(format!("unknown server verb '{other}'"))),
        }
    }

    /// Appends the frame's wire form, newline included, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            ServerFrame::Welcome { id, pending } => {
                dst.put_slice(b"WELCOME ");
                dst.put_slice(id.as_str().as_bytes());
                dst.put_u8(b' ');
                put_u64(dst, *pending);
            }
            ServerFrame::Msg {
                seq,
                unix_ms,
                from,
                text,
            } => {
                put_msg_head(dst, *seq, *unix_ms, from);
                dst.put_slice(text);
            }
            ServerFrame::Sent { seq } => {
                dst.put_slice(b"SENT ");
                put_u64(dst, seq.0);
            }
            ServerFrame::Pong { token } => {
                dst.put_slice(b"PONG");
                if let Some(token) = token {
                    dst.put_u8(b' ');
                    dst.put_slice(token);
                }
            }
            ServerFrame::Err(e) => {
                dst.put_slice(b"ERR ");
                dst.put_slice(e.code.as_str().as_bytes());
                dst.put_u8(b' ');
                // A reason never breaks the line it travels on.
                for b in e.reason.bytes() {
                    dst.put_u8(if b == b'\n' || b == b'\r' { b' ' } else { b });
                }
            }
            ServerFrame::Bye { reason } => {
                dst.put_slice(b"BYE ");
                dst.put_slice(reason.as_str().as_bytes());
            }
        }
        dst.put_u8(b'\n');
    }
}

fn put_u64(dst: &mut BytesMut, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&buf[i..]);
}

/// An upper bound of the length of a `MSG` frame.
pub fn msg_len_bound(from: &ClientId, text: &[u8]) -> usize {
    4 + 21 + 21 + from.as_str().len() + 1 + text.len() + 1
}

/// Appends `MSG <seq> <unix_ms> <from> ` (everything before the text).
fn put_msg_head(dst: &mut BytesMut, seq: Seq, unix_ms: u64, from: &ClientId) {
    dst.put_slice(b"MSG ");
    put_u64(dst, seq.0);
    dst.put_u8(b' ');
    put_u64(dst, unix_ms);
    dst.put_u8(b' ');
    dst.put_slice(from.as_str().as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret() {
        let frame = ClientFrame::Login {
            id: ClientId::new("1").unwrap(),
            secret: Some("hunter2".into()),
        };
        let shown = format!("{frame:?} {frame:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("<redacted>") && shown.contains("\"1\""),
            "{shown}"
        );
        let none = ClientFrame::Login {
            id: ClientId::new("1").unwrap(),
            secret: None,
        };
        assert!(format!("{none:?}").contains("secret: None"));
    }

    fn parse(s: &str) -> Result<ClientFrame, FrameError> {
        ClientFrame::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn code(s: &str) -> ErrorCode {
        parse(s).unwrap_err().code
    }

    #[test]
    fn parses_every_client_verb() {
        assert_eq!(
            parse("LOGIN 3").unwrap(),
            ClientFrame::Login {
                id: ClientId::new("3").unwrap(),
                secret: None
            }
        );
        assert_eq!(
            parse("LOGIN 3 s3cret").unwrap(),
            ClientFrame::Login {
                id: ClientId::new("3").unwrap(),
                secret: Some("s3cret".into())
            }
        );
        assert_eq!(
            parse("SEND hello  world ").unwrap(),
            ClientFrame::Send {
                text: Bytes::from_static(b"hello  world "),
                tags: Tags::default()
            }
        );
        assert_eq!(parse("ACK 42").unwrap(), ClientFrame::Ack { seq: Seq(42) });
        assert_eq!(parse("PING").unwrap(), ClientFrame::Ping { token: None });
        assert_eq!(
            parse("PING x y").unwrap(),
            ClientFrame::Ping {
                token: Some(Bytes::from_static(b"x y"))
            }
        );
        assert_eq!(parse("QUIT").unwrap(), ClientFrame::Quit);
    }

    #[test]
    fn refuses_malformed_frames_with_the_right_code() {
        assert_eq!(code(""), ErrorCode::BadFrame);
        assert_eq!(code("login 3"), ErrorCode::BadFrame);
        assert_eq!(code("HELLO"), ErrorCode::BadFrame);
        assert_eq!(code("LOGIN"), ErrorCode::BadFrame);
        assert_eq!(code("LOGIN bad!id"), ErrorCode::BadFrame);
        assert_eq!(code("LOGIN a b c"), ErrorCode::BadFrame);
        assert_eq!(code("SEND"), ErrorCode::EmptyMessage);
        assert_eq!(code("SEND "), ErrorCode::EmptyMessage);
        assert_eq!(code("SEND a\rb"), ErrorCode::BadFrame);
        assert_eq!(code("ACK"), ErrorCode::BadFrame);
        assert_eq!(code("ACK -1"), ErrorCode::BadFrame);
        assert_eq!(code("ACK 1x"), ErrorCode::BadFrame);
        assert_eq!(code("ACK 99999999999999999999999"), ErrorCode::BadFrame);
        assert_eq!(code("QUIT now"), ErrorCode::BadFrame);
        assert_eq!(
            ClientFrame::parse(Bytes::from_static(b"SEND \xff"))
                .unwrap_err()
                .code,
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn parses_tags_and_ignores_unknown_keys() {
        assert_eq!(
            parse("@mid=a-1;x=y\\sz;flag SEND hi").unwrap(),
            ClientFrame::Send {
                text: Bytes::from_static(b"hi"),
                tags: Tags {
                    mid: Some("a-1".into())
                }
            }
        );
        assert_eq!(
            parse("@x=1 PING").unwrap(),
            ClientFrame::Ping { token: None }
        );
        assert_eq!(code("@ SEND hi"), ErrorCode::BadFrame);
        assert_eq!(code("@mid=a;;b=1 SEND hi"), ErrorCode::BadFrame);
        assert_eq!(code("@mid=bad\\sid SEND hi"), ErrorCode::BadFrame);
        assert_eq!(code("@mid=a"), ErrorCode::BadFrame);
    }

    #[test]
    fn server_frames_round_trip() {
        let frames = [
            ServerFrame::Welcome {
                id: ClientId::new("a").unwrap(),
                pending: 2,
            },
            ServerFrame::Msg {
                seq: Seq(41),
                unix_ms: 1_764_080_000_000,
                from: ClientId::new("1").unwrap(),
                text: Bytes::from_static(b"hello while you were away"),
            },
            ServerFrame::Sent { seq: Seq(43) },
            ServerFrame::Pong { token: None },
            ServerFrame::Pong {
                token: Some(Bytes::from_static(b"x")),
            },
            ServerFrame::Err(FrameError::new(ErrorCode::BadAck, "never sent 9")),
            ServerFrame::Bye {
                reason: ByeReason::Replaced,
            },
        ];
        for f in frames {
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            assert_eq!(buf.last(), Some(&b'\n'));
            let line = buf.split_to(buf.len() - 1).freeze();
            assert_eq!(ServerFrame::parse(line).unwrap(), f);
        }
    }

    #[test]
    fn client_frames_round_trip() {
        let frames = [
            ClientFrame::Login {
                id: ClientId::new("a").unwrap(),
                secret: Some("pw".into()),
            },
            ClientFrame::Send {
                text: Bytes::from_static(b"hi there"),
                tags: Tags {
                    mid: Some("m.1".into()),
                },
            },
            ClientFrame::Ack { seq: Seq(7) },
            ClientFrame::Ping {
                token: Some(Bytes::from_static(b"t")),
            },
            ClientFrame::Quit,
        ];
        for f in frames {
            let mut buf = BytesMut::new();
            f.encode(&mut buf);
            let line = buf.split_to(buf.len() - 1).freeze();
            assert_eq!(ClientFrame::parse(line).unwrap(), f);
        }
    }
}
