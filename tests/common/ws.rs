//! A WebSocket protocol client for tests: one text message per frame.
//! Included with `#[path]` by the suites that speak WebSocket.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// How long any single expectation may wait.
pub const WS_DEADLINE: Duration = Duration::from_secs(20);

/// A plain or TLS byte stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open WebSocket to the server's `/ws`.
pub struct Ws {
    pub ws: WebSocketStream<Box<dyn Io>>,
}

/// What came instead of a text message.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A close message with this status.
    Close(Option<CloseCode>),
    /// The connection ended without one.
    Gone,
}

/// Opens `/ws` on `port` over plain TCP, sending `origin` if given; the
/// handshake error (e.g. HTTP 403) when refused.
pub async fn try_connect(port: u16, origin: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    handshake(Box::new(tcp), "ws", port, None, origin).await
}

/// Like [`try_connect`], with this `Host` header instead of
/// `127.0.0.1:port` (as a browser sends a name that resolved to the server).
pub async fn try_connect_as(
    port: u16,
    host: &str,
    origin: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    handshake(Box::new(tcp), "ws", port, Some(host), origin).await
}

/// Opens `/ws` on `port`, without `Origin` (as a non-browser client).
pub async fn connect(port: u16) -> Ws {
    try_connect(port, None).await.expect("WebSocket handshake")
}

/// Opens `wss://127.0.0.1:port/ws`, trusting the CA in `ca_file`.
pub async fn connect_tls(port: u16, ca_file: &str, origin: Option<&str>) -> Ws {
    let config = herald::net::tls::client_config(std::path::Path::new(ca_file)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    handshake(Box::new(tls), "wss", port, None, origin)
        .await
        .expect("WebSocket handshake")
}

async fn handshake(
    io: Box<dyn Io>,
    scheme: &str,
    port: u16,
    host: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("{scheme}://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    if let Some(h) = host {
        req.headers_mut()
            .insert("Host", HeaderValue::from_str(h).unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    let (ws, _) = tokio::time::timeout(WS_DEADLINE, tokio_tungstenite::client_async(req, io))
        .await
        .expect("handshake timed out")?;
    Ok(Ws { ws })
}

impl Ws {
    /// Sends one frame as a text message.
    pub async fn send(&mut self, frame: &str) {
        self.ws.send(Message::text(frame)).await.unwrap();
    }

    /// Sends one binary message.
    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws.send(Message::binary(data.to_vec())).await.unwrap();
    }

    /// The next text message, or how the connection ended; pings are
    /// answered (by the library) and skipped.
    pub async fn next(&mut self) -> Result<String, End> {
        loop {
            let msg = tokio::time::timeout(WS_DEADLINE, self.ws.next())
                .await
                .expect("timed out waiting for the server");
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(c))) => return Err(End::Close(c.map(|c| c.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Binary(b))) => panic!("binary message from the server: {b:?}"),
                Some(Err(_)) | None => return Err(End::Gone),
            }
        }
    }

    /// The next frame; panics when the connection ends instead.
    pub async fn line(&mut self) -> String {
        match self.next().await {
            Ok(t) => t,
            Err(e) => panic!("connection ended ({e:?}) while a frame was expected"),
        }
    }

    /// Asserts the server closes next (with a close message or without).
    pub async fn expect_end(&mut self) -> End {
        match self.next().await {
            Ok(t) => panic!("expected the connection to end, got {t:?}"),
            Err(e) => e,
        }
    }

    /// Logs in as `id` and returns the announced backlog.
    pub async fn login(&mut self, id: &str) -> u64 {
        self.send(&format!("LOGIN {id}")).await;
        let welcome = self.line().await;
        welcome
            .strip_prefix(&format!("WELCOME {id} "))
            .unwrap_or_else(|| panic!("expected WELCOME, got {welcome:?}"))
            .parse()
            .unwrap()
    }
}
