//! The WebSocket transport: turns an upgraded `/ws` request into a
//! [`Connection`] whose reader yields `\n`-terminated frames and whose
//! writer sends each frame as one text message, so a session runs on it
//! exactly as on TCP.
//!
//! actix-ws's message stream cannot leave the HTTP worker that accepted the
//! request, and sessions run on the session threads; a pump on the HTTP
//! worker reads the stream, answers WebSocket pings, pings a silent peer, and
//! hands text messages to the session's reader through a channel bounded in
//! bytes ([`inbound_budget`]). Outbound ([`outbound`]), the session's frames
//! go to the worker in batches through a channel bounded in bytes too, so a
//! peer that stops reading stops the session's writes and with them (as on
//! TCP) its reading.

pub mod outbound;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode};
use bytes::BytesMut;
use bytestring::ByteString;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

pub use self::outbound::WsWriter;
use self::outbound::{Opcode, Outbound, OutboundBody};
use super::frame::{ErrorCode, FrameError};

/// Largest WebSocket message accepted at all, for a frame limit of `limit`
/// bytes: twice the limit, and at least the limit plus 1 MiB. Messages
/// between the limit and this get `ERR FRAME_TOO_LONG` and the connection
/// goes on; a bigger one closes the connection with status 1009 (message
/// too big). The WebSocket layer holds a message whole before it can be
/// judged, so this is also the most one connection's input buffers.
pub fn hard_cap(limit: usize) -> usize {
    limit
        .saturating_mul(2)
        .max(limit.saturating_add(1024 * 1024))
}

/// Bytes of accepted frames that may wait between the pump and the session
/// (`\n` included): one frame of the longest accepted size, its `\r` and
/// its `\n`, or 64 KiB when that is more.
pub fn inbound_budget(limit: usize) -> usize {
    limit.saturating_add(2).max(64 * 1024)
}

/// Messages (not bytes: those are bounded by the budget) the inbound channel
/// holds at most.
const INBOUND_MESSAGES: usize = 256;

/// How long a WebSocket peer may stay silent before it is pinged, and then
/// how long it has to answer before it is closed: a quarter of the idle
/// timeout (so a dead peer is gone before a live silent one gets
/// `BYE idle`), at most 30 s; 30 s without an idle timeout.
pub fn ping_interval(idle_timeout: Option<Duration>) -> Duration {
    const MOST: Duration = Duration::from_secs(30);
    idle_timeout.map_or(MOST, |idle| {
        (idle / 4).clamp(Duration::from_millis(100), MOST)
    })
}

/// What the pump hands the session's reader.
enum Inbound {
    /// One accepted frame (without terminator), holding its share of the
    /// byte budget until the reader has copied it.
    Frame(ByteString, OwnedSemaphorePermit),
    /// A message refused as a frame: answered with this error, in order.
    Refused(FrameError),
    /// The connection failed (protocol error, or no answer to a ping).
    Failed(io::Error),
}

/// What one call of [`WsReader::poll_read`] produced.
pub enum WsRead {
    /// This many bytes of `\n`-terminated frames were appended.
    Bytes(usize),
    /// A message that is no frame: answer it with this error.
    Refused(FrameError),
    /// The peer closed.
    Eof,
}

/// The session's side of the inbound channel.
pub struct WsReader {
    rx: mpsc::Receiver<Inbound>,
    /// An item taken from the channel but left for the next read, so a
    /// refusal is answered after the frames before it.
    /// Boxed: rare, and it would make every session's reader as big.
    held: Option<Box<Inbound>>,
}

impl WsReader {
    /// Appends accepted frames, each followed by `\n`, to `buf` (at least
    /// one, and more while they are ready and fewer than `want` bytes were
    /// appended), or reports a refused message or the end of input on its
    /// own; pending (and woken later) while nothing came.
    pub fn poll_read(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut BytesMut,
        want: usize,
    ) -> std::task::Poll<io::Result<WsRead>> {
        use std::task::Poll;
        let mut next = match self.held.take() {
            Some(item) => *item,
            None => match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(Ok(WsRead::Eof)),
                Poll::Pending => return Poll::Pending,
            },
        };
        let mut n = 0;
        loop {
            match next {
                Inbound::Frame(text, permit) => {
                    buf.reserve(text.len() + 1);
                    buf.extend_from_slice(text.as_bytes());
                    buf.extend_from_slice(b"\n");
                    n += text.len() + 1;
                    drop(permit);
                }
                Inbound::Refused(e) if n == 0 => return Poll::Ready(Ok(WsRead::Refused(e))),
                Inbound::Failed(e) if n == 0 => return Poll::Ready(Err(e)),
                other => {
                    self.held = Some(Box::new(other));
                    break;
                }
            }
            if n >= want {
                break;
            }
            match self.rx.try_recv() {
                Ok(item) => next = item,
                Err(_) => break,
            }
        }
        Poll::Ready(Ok(WsRead::Bytes(n)))
    }
}

/// Splits an upgraded connection into the session's reader and writer and
/// the response body that carries what the writer sends, and spawns the
/// pump on the current (HTTP worker) thread.
pub fn start(
    stream: actix_ws::MessageStream,
    max_frame_bytes: usize,
    idle_timeout: Option<Duration>,
) -> (WsReader, WsWriter, OutboundBody) {
    let cap = hard_cap(max_frame_bytes);
    let stream = stream
        .max_frame_size(cap)
        .aggregate_continuations()
        .max_continuation_size(cap);
    let (tx, rx) = mpsc::channel(INBOUND_MESSAGES);
    // The longest message out: a MSG frame of the longest text.
    let (out, body) = outbound::channel(outbound::outbound_budget(cap));
    let pump = Pump {
        tx,
        budget: Arc::new(Semaphore::new(inbound_budget(max_frame_bytes))),
        out: out.clone(),
        max_frame_bytes,
        ping_every: ping_interval(idle_timeout),
    };
    actix_web::rt::spawn(pump.run(stream));
    (
        WsReader { rx, held: None },
        WsWriter { out: Some(out) },
        body,
    )
}

/// Reads the message stream on the HTTP worker.
struct Pump {
    tx: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    /// For pings, pongs and closes, in line with the session's messages.
    out: Outbound,
    max_frame_bytes: usize,
    ping_every: Duration,
}

/// What the pump does after one event.
enum Next {
    Go,
    /// Stop reading; close with this status and reason (none: the peer
    /// closed, or the session is gone).
    End(Option<(CloseCode, String)>),
}

impl Pump {
    async fn run(mut self, mut stream: AggregatedMessageStream) {
        let mut pinged = false;
        let close = loop {
            let next = tokio::select! {
                msg = stream.recv() => {
                    pinged = false;
                    match msg {
                        None => Next::End(None),
                        Some(msg) => self.on_message(msg, &mut stream).await,
                    }
                }
                () = tokio::time::sleep(self.ping_every) => {
                    if pinged {
                        self.fail("no answer to a WebSocket ping").await;
                        Next::End(Some((CloseCode::Away, "no answer to ping".to_owned())))
                    } else {
                        pinged = true;
                        self.control(Opcode::Ping, b"").await
                    }
                }
                () = self.tx.closed() => Next::End(None),
            };
            if let Next::End(close) = next {
                break close;
            }
        };
        if let Some((code, why)) = close {
            // A peer that does not read gets no close message either.
            let _ = tokio::time::timeout(self.ping_every, self.out.close(code.into(), &why)).await;
        }
        // Dropping the sender ends the session's input.
    }

    /// Queues a ping or pong behind the session's messages. A peer that
    /// leaves no room for it within a ping interval is not reading: it is
    /// closed as one that does not answer pings. Gives up at once when the
    /// session is gone.
    async fn control(&self, op: Opcode, payload: &[u8]) -> Next {
        let sent = tokio::select! {
            sent = tokio::time::timeout(self.ping_every, self.out.control(op, payload)) => sent,
            () = self.tx.closed() => return Next::End(None),
        };
        match sent {
            Ok(Ok(())) => Next::Go,
            Ok(Err(_)) => Next::End(None),
            Err(_) => {
                self.fail("a WebSocket peer that does not read").await;
                Next::End(Some((CloseCode::Away, "not reading".to_owned())))
            }
        }
    }

    /// Tells the session the connection failed (it may be gone already).
    /// Within a ping interval: a session that has stopped reading sees the
    /// end of input instead, once the pump is gone.
    async fn fail(&self, why: &str) {
        let failed = Inbound::Failed(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            why.to_owned(),
        ));
        let _ = tokio::time::timeout(self.ping_every, self.tx.send(failed)).await;
    }

    async fn on_message(
        &mut self,
        msg: Result<AggregatedMessage, actix_ws::ProtocolError>,
        stream: &mut AggregatedMessageStream,
    ) -> Next {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => return Box::pin(self.on_error(e, stream)).await,
        };
        let item = match msg {
            AggregatedMessage::Text(text) => self.frame(text).await,
            AggregatedMessage::Binary(_) => Some(Inbound::Refused(FrameError::new(
                ErrorCode::BadFrame,
                "binary message: frames are text messages",
            ))),
            AggregatedMessage::Ping(data) => return self.control(Opcode::Pong, &data).await,
            AggregatedMessage::Pong(_) => None,
            AggregatedMessage::Close(_) => return Next::End(None),
        };
        match item {
            Some(item) => match self.tx.send(item).await {
                Ok(()) => Next::Go,
                Err(_) => Next::End(None),
            },
            None => Next::Go,
        }
    }

    /// A text message as a frame (a `\r` at its end dropped), or its
    /// refusal; waits for room in the byte budget.
    async fn frame(&self, text: ByteString) -> Option<Inbound> {
        let len = text.len() - usize::from(text.ends_with('\r'));
        if len > self.max_frame_bytes {
            return Some(Inbound::Refused(FrameError::new(
                ErrorCode::FrameTooLong,
                format!("frame longer than {} bytes", self.max_frame_bytes),
            )));
        }
        if text.contains('\n') {
            return Some(Inbound::Refused(FrameError::new(
                ErrorCode::BadFrame,
                "a newline inside a message: one message is one frame",
            )));
        }
        let need = u32::try_from(text.len() + 1).unwrap_or(u32::MAX);
        let permit = self.budget.clone().acquire_many_owned(need).await.ok()?;
        Some(Inbound::Frame(text, permit))
    }

    async fn on_error(
        &mut self,
        e: actix_ws::ProtocolError,
        stream: &mut AggregatedMessageStream,
    ) -> Next {
        use actix_ws::ProtocolError as P;
        let (code, why) = match &e {
            P::Overflow => (CloseCode::Size, "message too big".to_owned()),
            P::Io(io) if io.kind() == io::ErrorKind::InvalidData => {
                (CloseCode::Invalid, "text message is not UTF-8".to_owned())
            }
            P::Io(io) if io.to_string().contains("continuation size") => {
                (CloseCode::Size, "message too big".to_owned())
            }
            P::Io(_) => return self.on_transport_end(stream).await,
            _ => (CloseCode::Protocol, e.to_string()),
        };
        log::info!("closing a WebSocket: {why}");
        self.fail(&why).await;
        Next::End(Some((code, why)))
    }

    /// The connection ended without a close message (the peer closed its
    /// TCP connection): the messages that came before the end are still
    /// handed on, then the session sees the end of input, as over TCP.
    async fn on_transport_end(&mut self, stream: &mut AggregatedMessageStream) -> Next {
        while let Some(Ok(msg)) = ready_now(stream).await {
            if let Next::End(_) = self.on_message(Ok(msg), stream).await {
                break;
            }
        }
        Next::End(None)
    }
}

/// The stream's next message if one is ready without waiting.
async fn ready_now(
    stream: &mut AggregatedMessageStream,
) -> Option<Result<AggregatedMessage, actix_ws::ProtocolError>> {
    use std::future::Future;
    use std::task::Poll;
    let mut next = std::pin::pin!(stream.recv());
    std::future::poll_fn(|cx| match next.as_mut().poll(cx) {
        Poll::Ready(msg) => Poll::Ready(msg),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}
