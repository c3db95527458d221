//! A connection's two byte streams, plain TCP or TLS, behind one interface:
//! sessions read and write bytes without knowing which.

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, ReadHalf};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

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
}

/// The reading side of a plain TCP connection; its first bytes are checked
/// for a TLS handshake, the sign of a client that wants TLS on a plain port.
pub struct PlainReader {
    half: OwnedReadHalf,
    /// Whether the first bytes are still to be checked.
    sniff: bool,
    peer: Option<SocketAddr>,
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

/// The writing side of a connection.
pub type Writer = Box<dyn AsyncWrite + Unpin + Send>;

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
                peer,
            }),
            writer: Box::new(writer),
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
            writer: Box::new(writer),
            peer,
            kind: TransportKind::Tls,
        }
    }
}

impl Reader {
    /// Waits for input and appends what is there to `buf`; 0 means the peer
    /// closed. `want` is how much room to make when input comes in a burst.
    ///
    /// Over plain TCP it waits for readability before touching `buf` and
    /// reads short input through the stack, so an idle connection holds no
    /// buffer and a short frame costs an allocation of its own size. TLS
    /// keeps its own buffers, so it reads straight into `buf`.
    pub async fn read_some(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        match self {
            Reader::Plain(PlainReader {
                half: r,
                sniff,
                peer,
            }) => loop {
                r.readable().await?;
                let mut chunk = [0u8; SMALL_READ];
                match r.try_read(&mut chunk) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                    Ok(n) if std::mem::take(sniff) && looks_like_tls(&chunk[..n.min(3)]) => {
                        let peer = peer.map_or_else(|| "a client".to_owned(), |p| p.to_string());
                        log::warn!(
                            "{peer}: looks like a TLS handshake on a plain port; closing (start the server with --tls-cert and --tls-key, or run the client without --tls)"
                        );
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a TLS handshake on a plain port",
                        ));
                    }
                    Ok(n) if n < SMALL_READ => {
                        buf.extend_from_slice(&chunk[..n]);
                        return Ok(n);
                    }
                    Ok(n) => {
                        // A burst: read on into a buffer of growing size.
                        buf.reserve(want);
                        buf.extend_from_slice(&chunk[..n]);
                        return match r.try_read_buf(buf) {
                            Ok(m) => Ok(n + m),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
                            Err(e) => Err(e),
                        };
                    }
                }
            },
            Reader::Tls(r) => {
                buf.reserve(want.max(SMALL_READ));
                r.read_buf(buf).await
            }
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
