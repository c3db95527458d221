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

/// The reading side of a connection.
pub enum Reader {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS over TCP.
    Tls(ReadHalf<TlsStream<TcpStream>>),
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
}

impl Connection {
    /// A plain TCP connection.
    pub fn plain(stream: TcpStream) -> Connection {
        let peer = stream.peer_addr().ok();
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Connection {
            reader: Reader::Plain(reader),
            writer: Box::new(writer),
            peer,
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
            Reader::Plain(r) => loop {
                r.readable().await?;
                let mut chunk = [0u8; SMALL_READ];
                match r.try_read(&mut chunk) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
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
