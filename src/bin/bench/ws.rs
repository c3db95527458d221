//! The load generator's WebSocket client: the handshake, then the two
//! halves of the TCP connection each with its own buffer, so that one read
//! of the socket yields every message it holds and one write carries every
//! frame of a batch. tungstenite's frame header codec reads and writes the
//! headers; masking and the message loop are here.
//!
//! A general WebSocket stream costs a poll, a waker registration and a lock
//! shared by both halves for every message; a fan-out receives millions of
//! small messages, and the load generator shares the machine with the
//! server it measures.

use std::hash::{BuildHasher, Hasher};
use std::io::{self, Cursor};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// Longest message accepted from the server (as a general client's default
/// limit); a longer one fails the connection.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Longest handshake response read.
const MAX_RESPONSE: usize = 16 * 1024;

fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// The sending half, shared by the writer and (for pongs and the answer to
/// a close) the reader.
pub struct Sender {
    half: OwnedWriteHalf,
    /// Encoded frames of one write.
    out: Vec<u8>,
    /// State of the masking key generator (xorshift, seeded at random).
    seed: u64,
}

impl Sender {
    fn new(half: OwnedWriteHalf) -> Sender {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        Sender {
            half,
            out: Vec::new(),
            seed,
        }
    }

    /// A fresh masking key for each frame, as a client must use.
    fn mask(&mut self) -> [u8; 4] {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed as u32).to_ne_bytes()
    }

    /// Appends one masked, unfragmented message to the pending output.
    fn encode(&mut self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        let mask = self.mask();
        let header = FrameHeader {
            opcode,
            mask: Some(mask),
            ..FrameHeader::default()
        };
        header
            .format(payload.len() as u64, &mut self.out)
            .map_err(io::Error::other)?;
        self.out.extend(
            payload
                .iter()
                .zip(mask.iter().cycle())
                .map(|(byte, key)| byte ^ key),
        );
        Ok(())
    }

    /// Writes what was encoded.
    async fn flush(&mut self) -> io::Result<()> {
        let sent = self.half.write_all(&self.out).await;
        self.out.clear();
        sent
    }
}

/// The writing side: each `\n`-terminated frame becomes one text message.
pub struct WsWriter {
    send: Arc<Mutex<Sender>>,
}

impl WsWriter {
    /// Sends every frame in `buf` (each ends with `\n`) in one write.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut send = self.send.lock().await;
        for frame in buf.split(|&b| b == b'\n').filter(|f| !f.is_empty()) {
            std::str::from_utf8(frame).map_err(|e| invalid(e.to_string()))?;
            send.encode(OpCode::Data(Data::Text), frame)?;
        }
        send.flush().await
    }
}

/// The reading side: messages are parsed out of a buffer that each read of
/// the socket fills as far as it can.
pub struct WsReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    /// How much room each read makes.
    capacity: usize,
    send: Arc<Mutex<Sender>>,
    /// The server closed (a close message, or the end of the connection).
    done: bool,
}

/// One message taken out of the buffer.
enum Parsed {
    Text(usize, usize),
    Ping(usize, usize),
    Close,
    Other,
}

impl WsReader {
    /// Appends the next text message and `delim` to `line`; 0 once the
    /// server has closed. Pings are answered on the way.
    pub async fn read_until(&mut self, delim: u8, line: &mut Vec<u8>) -> io::Result<usize> {
        while !self.done {
            let Some((parsed, total)) = self.parse()? else {
                self.fill().await?;
                continue;
            };
            let result = match parsed {
                Parsed::Text(start, len) => {
                    line.extend_from_slice(&self.buf[start..start + len]);
                    line.push(delim);
                    Some(len + 1)
                }
                Parsed::Ping(start, len) => {
                    let payload = self.buf[start..start + len].to_vec();
                    self.answer(OpCode::Control(Control::Pong), &payload).await;
                    None
                }
                Parsed::Close => {
                    self.answer(OpCode::Control(Control::Close), &[]).await;
                    self.done = true;
                    None
                }
                Parsed::Other => None,
            };
            self.buf.advance(total);
            if let Some(n) = result {
                return Ok(n);
            }
        }
        Ok(0)
    }

    /// The first whole message in the buffer and the bytes it takes, if
    /// it is all there.
    fn parse(&self) -> io::Result<Option<(Parsed, usize)>> {
        let mut cursor = Cursor::new(&self.buf[..]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(io::Error::other)? else {
            return Ok(None);
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= MAX_MESSAGE)
            .ok_or_else(|| invalid(format!("a message over {MAX_MESSAGE} bytes")))?;
        if header.mask.is_some() {
            return Err(invalid("a masked message from the server"));
        }
        if !header.is_final {
            return Err(invalid(
                "a fragmented message (the server sends whole ones)",
            ));
        }
        let start = cursor.position() as usize;
        if self.buf.len() < start + len {
            return Ok(None);
        }
        let parsed = match header.opcode {
            OpCode::Data(Data::Text) => Parsed::Text(start, len),
            OpCode::Control(Control::Ping) => Parsed::Ping(start, len),
            OpCode::Control(Control::Close) => Parsed::Close,
            _ => Parsed::Other,
        };
        Ok(Some((parsed, start + len)))
    }

    /// Reads whatever the socket has (at least one byte, or the end).
    async fn fill(&mut self) -> io::Result<()> {
        self.buf.reserve(self.capacity);
        if self.half.read_buf(&mut self.buf).await? == 0 {
            self.done = true;
        }
        Ok(())
    }

    /// Sends a pong or the answer to a close; a failure shows on the next
    /// read or write. Skipped while the writer is sending: waiting for it
    /// could stop this side from reading while the server waits for us to
    /// read, and the messages being sent answer a ping as well as a pong.
    async fn answer(&mut self, opcode: OpCode, payload: &[u8]) {
        let Ok(mut send) = self.send.try_lock() else {
            return;
        };
        if send.encode(opcode, payload).is_ok() {
            let _ = send.flush().await;
        }
    }
}

/// Upgrades `stream` to a WebSocket at `ws://host:port/ws`; `capacity` is
/// the read buffer's size.
pub async fn connect(
    mut stream: TcpStream,
    host: &str,
    port: u16,
    capacity: usize,
) -> io::Result<(WsReader, WsWriter)> {
    let key = generate_key();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(capacity.max(1024));
    let head_len = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() >= MAX_RESPONSE {
            return Err(invalid("no end to the handshake response"));
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(invalid("the server closed during the handshake"));
        }
    };
    check_response(&buf[..head_len], &derive_accept_key(key.as_bytes()))?;
    buf.advance(head_len);
    let (r, w) = stream.into_split();
    let send = Arc::new(Mutex::new(Sender::new(w)));
    let reader = WsReader {
        half: r,
        buf,
        capacity: capacity.max(1024),
        send: send.clone(),
        done: false,
    };
    Ok((reader, WsWriter { send }))
}

/// Checks that a handshake response switches protocols with the right
/// accept key.
fn check_response(head: &[u8], accept: &str) -> io::Result<()> {
    let head = std::str::from_utf8(head).map_err(|_| invalid("a handshake response not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("101") {
        return Err(invalid(format!("the server answered {status:?}")));
    }
    let accepted = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        });
    if accepted {
        Ok(())
    } else {
        Err(invalid("no matching Sec-WebSocket-Accept in the response"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_must_switch_protocols_with_the_right_key() {
        let key = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nsec-websocket-accept: {key}\r\n\r\n");
        assert!(check_response(ok.as_bytes(), &key).is_ok());
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_response(wrong.as_bytes(), &key).is_err());
        let refused = format!("HTTP/1.1 403 Forbidden\r\nSec-WebSocket-Accept: {key}\r\n\r\n");
        assert!(check_response(refused.as_bytes(), &key).is_err());
    }
}
