//! Frames the server sends: `WELCOME`, `MSG`, `SENT`, `PONG`, `ERR` and
//! `BYE`, encoded by the server and parsed by clients.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    parse_client_id, parse_seq, put_msg_head, put_u64, split_verb, utf8, ByeReason, ErrorCode,
    FrameError,
};
use crate::types::{ClientId, Seq};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
