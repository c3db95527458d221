//! How the load generator reaches a server: plain TCP, or WebSocket on the
//! server's `--http-bind` port (`/ws`, one text message per frame). Both
//! read and write `\n`-terminated frames, so the workloads are the same.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::ws::{WsReader, WsWriter};

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

/// The reading side: one frame at a time, with its `\n`.
pub enum Reader {
    Tcp(BufReader<OwnedReadHalf>),
    Ws(WsReader),
}

/// The writing side: takes whole `\n`-terminated frames.
pub enum Writer {
    Tcp(OwnedWriteHalf),
    Ws(WsWriter),
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
            let (r, w) = crate::ws::connect(stream, &addr.host, addr.port, capacity)
                .await
                .with_context(|| {
                    format!(
                        "no WebSocket at ws://{}:{}/ws (is the server started with --http-bind?)",
                        addr.host, addr.port
                    )
                })?;
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
            Reader::Ws(r) => r.read_until(delim, buf).await,
        }
    }
}

impl Writer {
    /// Sends every frame in `buf` (each ends with `\n`).
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(w) => w.write_all(buf).await,
            Writer::Ws(w) => w.write_all(buf).await,
        }
    }
}
