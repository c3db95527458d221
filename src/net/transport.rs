//! A connection's two directions, over plain TCP, TLS or WebSocket, behind
//! one interface: sessions read and write bytes of `\n`-terminated frames
//! without knowing which transport carries them.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::frame::FrameError;
use super::ws::{WsRead, WsReader, WsWriter};

/// Bytes read in one go through the stack before a buffer is involved.
pub const SMALL_READ: usize = 4 * 1024;

/// Which transport carries a connection (for logs and metrics labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket over plain HTTP.
    Ws,
    /// WebSocket over HTTPS.
    Wss,
}

impl TransportKind {
    /// The lower-case name: "tcp", "tls", "ws" or "wss".
    pub fn label(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
        }
    }
}

/// The reading side of a connection.
pub enum Reader {
    /// Plain TCP.
    Plain(PlainReader),
    /// TLS over TCP.
    Tls(ReadHalf<TlsStream<TcpStream>>),
    /// WebSocket: whole frames, one per text message.
    Ws(WsReader),
}

/// What one read produced.
#[derive(Debug)]
pub enum Input {
    /// This many bytes were appended to the buffer.
    Bytes(usize),
    /// The transport refused a unit of input as a frame (a WebSocket
    /// message that is binary, too long, or holds a newline): answer with
    /// this error after every frame read before it.
    Refused(FrameError),
    /// The peer closed its sending side.
    Eof,
}

impl Input {
    fn from_len(n: usize) -> Input {
        if n == 0 {
            Input::Eof
        } else {
            Input::Bytes(n)
        }
    }
}

/// The reading side of a plain TCP connection; its first bytes are checked
/// for a TLS handshake, the sign of a client that wants TLS on a plain port.
pub struct PlainReader {
    half: OwnedReadHalf,
    /// Whether the first bytes are still to be checked.
    sniff: bool,
}

/// Does input that starts with `first` look like a TLS handshake record
/// (content type 22, protocol version 3.x)? A line of the text protocol
/// never starts with byte 22.
pub fn looks_like_tls(first: &[u8]) -> bool {
    match first {
        [] => false,
        [0x16] | [0x16, 0x03] => true,
        [0x16, 0x03, minor, ..] => *minor <= 0x04,
        _ => false,
    }
}

/// Names the verb at the start of plain text input (`LOGIN`, …) for a log
/// line, and only the verb, since what follows may be a secret.
pub fn leading_verb(first: &[u8]) -> Option<&str> {
    let len = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    (len > 0)
        .then(|| std::str::from_utf8(&first[..len]).ok())
        .flatten()
}

/// The writing side of a connection: takes bytes of `\n`-terminated frames.
pub enum Writer {
    /// A byte stream (TCP or TLS): bytes go out as they are.
    Stream(Box<dyn AsyncWrite + Unpin + Send>),
    /// WebSocket: each frame goes out as one text message (boxed, so every
    /// session's writer is as small as a stream's).
    Ws(Box<WsWriter>),
}

impl Writer {
    /// Writes all of `buf`, a whole number of frames.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::Stream(w) => w.write_all(buf).await,
            Writer::Ws(w) => w.write_all(buf).await,
        }
    }

    /// Ends the sending side (FIN, or a WebSocket close message).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Writer::Stream(w) => w.shutdown().await,
            Writer::Ws(w) => w.shutdown().await,
        }
    }
}

/// An accepted connection, ready for a session.
pub struct Connection {
    /// Where bytes come from.
    pub reader: Reader,
    /// Where bytes go.
    pub writer: Writer,
    /// The peer, for logs and per-address limits.
    pub peer: Option<SocketAddr>,
    /// The transport, for logs and metrics.
    pub kind: TransportKind,
}

impl Connection {
    /// A plain TCP connection.
    pub fn plain(stream: TcpStream) -> Connection {
        let peer = stream.peer_addr().ok();
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Connection {
            reader: Reader::Plain(PlainReader {
                half: reader,
                sniff: true,
            }),
            writer: Writer::Stream(Box::new(writer)),
            peer,
            kind: TransportKind::Tcp,
        }
    }

    /// A TLS connection whose handshake is done.
    pub fn tls(stream: TlsStream<TcpStream>) -> Connection {
        let peer = stream.get_ref().0.peer_addr().ok();
        let _ = stream.get_ref().0.set_nodelay(true);
        let (reader, writer) = tokio::io::split(stream);
        Connection {
            reader: Reader::Tls(reader),
            writer: Writer::Stream(Box::new(writer)),
            peer,
            kind: TransportKind::Tls,
        }
    }

    /// An upgraded WebSocket (`secure`: over HTTPS).
    pub fn ws(
        reader: WsReader,
        writer: WsWriter,
        peer: Option<SocketAddr>,
        secure: bool,
    ) -> Connection {
        Connection {
            reader: Reader::Ws(reader),
            writer: Writer::Ws(Box::new(writer)),
            peer,
            kind: if secure {
                TransportKind::Wss
            } else {
                TransportKind::Ws
            },
        }
    }
}

impl Reader {
    /// Waits for input and appends what is there to `buf`, or says the
    /// peer closed or a unit of input was refused. `want` is how much room
    /// to make when input comes in a burst.
    pub async fn read_some(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<Input> {
        std::future::poll_fn(|cx| self.poll_read_some(cx, buf, want)).await
    }

    /// [`Reader::read_some`] as a poll: pending (and woken when input
    /// comes) while there is none. The reader stays where it is, so a
    /// connection waiting for input costs no future of its own.
    ///
    /// Over plain TCP it waits for readability before touching `buf` and
    /// reads short input through the stack, so an idle connection holds no
    /// buffer and a short frame costs an allocation of its own size. TLS
    /// keeps its own buffers, so it reads straight into `buf`.
    pub fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
    ) -> Poll<io::Result<Input>> {
        match self {
            Reader::Plain(plain) => plain.poll_read(cx, buf, want),
            Reader::Tls(r) => {
                buf.reserve(want.max(SMALL_READ));
                tokio_util::io::poll_read_buf(Pin::new(r), cx, buf).map_ok(Input::from_len)
            }
            Reader::Ws(r) => r.poll_read(cx, buf, want).map_ok(|read| match read {
                WsRead::Bytes(n) => Input::Bytes(n),
                WsRead::Refused(e) => Input::Refused(e),
                WsRead::Eof => Input::Eof,
            }),
        }
    }
}

impl PlainReader {
    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: usize,
    ) -> Poll<io::Result<Input>> {
        loop {
            if let Err(e) = ready!(self.half.as_ref().poll_read_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            let mut chunk = [0u8; SMALL_READ];
            let n = match self.half.try_read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
                Ok(n) => n,
            };
            if std::mem::take(&mut self.sniff) && looks_like_tls(&chunk[..n.min(3)]) {
                let peer = self
                    .half
                    .peer_addr()
                    .map_or_else(|_| "a client".to_owned(), |p| p.to_string());
                log::warn!(
                    "{peer}: looks like a TLS handshake on a plain port; closing (start the server with --tls-cert and --tls-key, or run the client without --tls)"
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a TLS handshake on a plain port",
                )));
            }
            if n < SMALL_READ {
                buf.extend_from_slice(&chunk[..n]);
                return Poll::Ready(Ok(Input::from_len(n)));
            }
            // A burst: read on into a buffer of growing size.
            buf.reserve(want);
            buf.extend_from_slice(&chunk[..n]);
            return Poll::Ready(match self.half.try_read_buf(buf) {
                Ok(m) => Ok(Input::Bytes(n + m)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Input::Bytes(n)),
                Err(e) => Err(e),
            });
        }
    }
}

/// Runs the server side of a TLS handshake on `stream` within `deadline`.
/// A failure is logged in one line, which says so when the client spoke
/// plain text (it then needs `--tls --ca-file`).
pub async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    deadline: std::time::Duration,
) -> Option<Connection> {
    let shown = stream
        .peer_addr()
        .map_or_else(|_| "a client".to_owned(), |p| p.to_string());
    let handshake = tokio::time::timeout(deadline, async {
        let mut first = [0u8; 8];
        let n = stream.peek(&mut first).await.unwrap_or(0);
        (first, n, acceptor.accept(stream).await)
    })
    .await;
    let (first, n, err) = match handshake {
        Ok((_, _, Ok(tls))) => return Some(Connection::tls(tls)),
        Ok((first, n, Err(e))) => (first, n, e),
        Err(_) => {
            log::info!("TLS handshake with {shown} timed out");
            return None;
        }
    };
    let first = &first[..n];
    if first.is_empty() || looks_like_tls(first) {
        log::info!("TLS handshake with {shown} failed: {err}");
    } else if let Some(verb) = leading_verb(first) {
        log::warn!(
            "{shown} spoke plain text (\"{verb} …\") to the TLS port, so the TLS handshake failed; clients need --tls --ca-file"
        );
    } else {
        log::warn!(
            "{shown} sent something other than TLS to the TLS port, so the TLS handshake failed ({err}); clients need --tls --ca-file"
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_looks_like_tls_and_protocol_text_does_not() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(looks_like_tls(&[0x16, 0x03]));
        assert!(looks_like_tls(&[0x16]));
        assert!(!looks_like_tls(&[0x16, 0x03, 0x09]));
        assert!(!looks_like_tls(b"LOGIN 1"));
        assert!(!looks_like_tls(b""));
    }

    #[test]
    fn only_the_verb_of_plain_text_is_named() {
        assert_eq!(leading_verb(b"LOGIN 1 secret"), Some("LOGIN"));
        assert_eq!(leading_verb(b"PING"), Some("PING"));
        assert_eq!(leading_verb(b"login 1"), None);
        assert_eq!(leading_verb(&[0x16, 0x03]), None);
    }
}
