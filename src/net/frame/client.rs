//! Frames a client sends: `LOGIN`, `SEND` (with its `@mid` tag), `ACK`,
//! `PING` and `QUIT`, parsed by the server and encoded by clients.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::{parse_client_id, parse_seq, split_verb, utf8, ErrorCode, FrameError};
use crate::types::{ClientId, Seq};

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
