//! How the load generator reaches a server: plain TCP, or WebSocket on the
//! server's `--http-bind` port (`/ws`, one text message per frame). Both
//! read and write `\n`-terminated frames, so the workloads are the same.

use std::io;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// The transport of every connection of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The protocol's own TCP port.
    Tcp,
    /// WebSocket at `/ws` of the server's HTTP port.
    Ws,
}

/// Where one server is, and how to reach it.
#[derive(Clone, Debug)]
pub struct Addr {
    /// Host name or address.
    pub host: String,
    /// The TCP port, or the HTTP port for WebSocket.
    pub port: u16,
    /// How to connect.
    pub transport: Transport,
}

type Ws = WebSocketStream<TcpStream>;

/// The reading side: one frame at a time, with its `\n`.
pub enum Reader {
    Tcp(BufReader<OwnedReadHalf>),
    Ws(SplitStream<Ws>),
}

/// The writing side: takes whole `\n`-terminated frames.
pub enum Writer {
    Tcp(OwnedWriteHalf),
    Ws(SplitSink<Ws, Message>),
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

/// Opens a connection; `capacity` is the TCP read buffer's size.
pub async fn connect(addr: &Addr, capacity: usize) -> anyhow::Result<(Reader, Writer)> {
    use anyhow::Context as _;
    let stream = TcpStream::connect((addr.host.as_str(), addr.port))
        .await
        .with_context(|| format!("cannot connect to {}:{}", addr.host, addr.port))?;
    stream.set_nodelay(true)?;
    match addr.transport {
        Transport::Tcp => {
            let (r, w) = stream.into_split();
            Ok((
                Reader::Tcp(BufReader::with_capacity(capacity, r)),
                Writer::Tcp(w),
            ))
        }
        Transport::Ws => {
            let url = format!("ws://{}:{}/ws", addr.host, addr.port);
            let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
                .await
                .with_context(|| {
                    format!("no WebSocket at {url} (is the server started with --http-bind?)")
                })?;
            let (w, r) = ws.split();
            Ok((Reader::Ws(r), Writer::Ws(w)))
        }
    }
}

impl Reader {
    /// Appends the next frame and its `\n` to `buf`; 0 when the server
    /// closed.
    pub async fn read_until(&mut self, delim: u8, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Reader::Tcp(r) => r.read_until(delim, buf).await,
            Reader::Ws(r) => loop {
                match r.next().await {
                    Some(Ok(Message::Text(t))) => {
                        buf.extend_from_slice(t.as_bytes());
                        buf.push(delim);
                        return Ok(t.len() + 1);
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(0),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(ws_error(e)),
                }
            },
        }
    }
}

impl Writer {
    /// Sends every frame in `buf` (each ends with `\n`).
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(buf).await,
            Writer::Ws(w) => {
                for frame in buf.split(|&b| b == b'\n').filter(|f| !f.is_empty()) {
                    let text = std::str::from_utf8(frame)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    w.feed(Message::text(text)).await.map_err(ws_error)?;
                }
                w.flush().await.map_err(ws_error)
            }
        }
    }
}
