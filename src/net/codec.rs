//! Line framing for both directions: splits a byte stream into frames of at
//! most `max_frame_bytes`, and turns each into a typed frame or an error
//! value. A line that is too long yields one `FRAME_TOO_LONG` error and is
//! skipped up to its newline; the stream stays usable.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{ClientFrame, ErrorCode, FrameError, ServerFrame};

/// The default frame limit in bytes, terminator excluded.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 65_536;

/// Splits a buffer into lines, enforcing a length limit.
#[derive(Debug)]
struct LineSplitter {
    max: usize,
    /// Skipping the rest of a line that was too long.
    discarding: bool,
    /// How far the buffer has been searched for a newline already.
    searched: usize,
}

impl LineSplitter {
    fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            discarding: false,
            searched: 0,
        }
    }

    fn too_long(&self) -> FrameError {
        FrameError::new(
            ErrorCode::FrameTooLong,
            format!("frame longer than {} bytes", self.max),
        )
    }

    /// The next complete line (terminator and a `\r` before it removed).
    fn next_line(&mut self, buf: &mut BytesMut) -> Option<Result<Bytes, FrameError>> {
        loop {
            let newline = memchr(&buf[self.searched..]).map(|i| self.searched + i);
            match newline {
                Some(end) => {
                    self.searched = 0;
                    let mut line = buf.split_to(end + 1);
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > self.max {
                        return Some(Err(self.too_long()));
                    }
                    return Some(Ok(line.freeze()));
                }
                None if self.discarding => {
                    buf.clear();
                    self.searched = 0;
                    return None;
                }
                // One byte of slack for a `\r` that may end the line.
                None if buf.len() > self.max + 1 => {
                    buf.clear();
                    self.searched = 0;
                    self.discarding = true;
                    return Some(Err(self.too_long()));
                }
                None => {
                    self.searched = buf.len();
                    return None;
                }
            }
        }
    }

    /// At end of stream: an unterminated last line still counts as a frame.
    fn last_line(&mut self, buf: &mut BytesMut) -> Option<Result<Bytes, FrameError>> {
        if let Some(line) = self.next_line(buf) {
            return Some(line);
        }
        if buf.is_empty() || self.discarding {
            buf.clear();
            return None;
        }
        self.searched = 0;
        let mut line = buf.split();
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max {
            return Some(Err(self.too_long()));
        }
        Some(Ok(line.freeze()))
    }
}

fn memchr(hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == b'\n')
}

/// The server's side of a connection: decodes [`ClientFrame`]s, encodes
/// [`ServerFrame`]s. Decoding errors are items, never stream errors, so one
/// bad frame does not end the connection.
#[derive(Debug)]
pub struct ServerCodec {
    lines: LineSplitter,
}

impl ServerCodec {
    /// A codec that refuses frames longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> ServerCodec {
        ServerCodec {
            lines: LineSplitter::new(max_frame_bytes),
        }
    }
}

impl Decoder for ServerCodec {
    type Item = Result<ClientFrame, FrameError>;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Ok(self
            .lines
            .next_line(src)
            .map(|line| line.and_then(ClientFrame::parse)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Ok(self
            .lines
            .last_line(src)
            .map(|line| line.and_then(ClientFrame::parse)))
    }
}

impl Encoder<&ServerFrame> for ServerCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: &ServerFrame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.encode(dst);
        Ok(())
    }
}

/// A client's side of a connection: decodes [`ServerFrame`]s, encodes
/// [`ClientFrame`]s.
#[derive(Debug)]
pub struct ClientCodec {
    lines: LineSplitter,
}

impl ClientCodec {
    /// A codec for frames of up to `max_frame_bytes` (plus the `MSG` header).
    pub fn new(max_frame_bytes: usize) -> ClientCodec {
        // A MSG frame carries a header in front of text that may itself be
        // max_frame_bytes long.
        ClientCodec {
            lines: LineSplitter::new(max_frame_bytes + 256),
        }
    }
}

impl Default for ClientCodec {
    fn default() -> Self {
        ClientCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for ClientCodec {
    type Item = Result<ServerFrame, FrameError>;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        Ok(self
            .lines
            .next_line(src)
            .map(|line| line.and_then(ServerFrame::parse)))
    }
}

impl Encoder<&ClientFrame> for ClientCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: &ClientFrame, dst: &mut BytesMut) -> Result<(), Self::Error> {
        item.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Seq;

    fn decode_all(codec: &mut ServerCodec, input: &[u8]) -> Vec<Result<ClientFrame, FrameError>> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
        out
    }

    #[test]
    fn splits_lines_and_drops_carriage_returns() {
        let mut c = ServerCodec::new(100);
        let out = decode_all(&mut c, b"ACK 1\r\nACK 2\nACK");
        assert_eq!(
            out,
            vec![
                Ok(ClientFrame::Ack { seq: Seq(1) }),
                Ok(ClientFrame::Ack { seq: Seq(2) })
            ]
        );
    }

    #[test]
    fn frame_limit_is_inclusive_and_the_stream_recovers() {
        let max = 16;
        let mut c = ServerCodec::new(max);
        let ok = format!("SEND {}\n", "x".repeat(max - 5));
        let too_long = format!("SEND {}\n", "x".repeat(max - 4));
        let input = format!("{ok}{too_long}ACK 3\n");
        let out = decode_all(&mut c, input.as_bytes());
        assert_eq!(out.len(), 3);
        assert!(out[0].is_ok());
        assert_eq!(out[1].as_ref().unwrap_err().code, ErrorCode::FrameTooLong);
        assert_eq!(out[2], Ok(ClientFrame::Ack { seq: Seq(3) }));
    }

    #[test]
    fn a_long_line_arriving_in_pieces_gives_one_error() {
        let mut c = ServerCodec::new(8);
        let mut buf = BytesMut::new();
        let mut errors = 0;
        for _ in 0..10 {
            buf.extend_from_slice(b"SEND aaaaaaaaaaaa");
            while let Some(item) = c.decode(&mut buf).unwrap() {
                assert_eq!(item.unwrap_err().code, ErrorCode::FrameTooLong);
                errors += 1;
            }
        }
        buf.extend_from_slice(b"aaa\nQUIT\n");
        let mut rest = Vec::new();
        while let Some(item) = c.decode(&mut buf).unwrap() {
            rest.push(item);
        }
        assert_eq!(errors, 1);
        assert_eq!(rest, vec![Ok(ClientFrame::Quit)]);
    }

    #[test]
    fn unterminated_last_line_counts_at_eof() {
        let mut c = ServerCodec::new(100);
        let mut buf = BytesMut::from(&b"QUIT"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert_eq!(c.decode_eof(&mut buf).unwrap(), Some(Ok(ClientFrame::Quit)));
        assert_eq!(c.decode_eof(&mut buf).unwrap(), None);
    }
}
