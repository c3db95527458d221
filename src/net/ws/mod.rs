//! The WebSocket transport: turns an upgraded `/ws` request into a
//! [`Connection`] whose reader yields `\n`-terminated frames and whose
//! writer sends each frame as one text message, so a session runs on it
//! exactly as on TCP.
//!
//! actix-ws's message stream cannot leave the HTTP worker that accepted the
//! request, and sessions run on the session threads; a pump on the HTTP
//! worker reads the stream, answers WebSocket pings, pings a silent peer, and
//! hands text messages to the session's reader through a channel bounded in
//! bytes ([`inbound_budget`]), the messages that are ready at once as one
//! item ([`pump`]). Outbound ([`outbound`]), the session's frames
//! go to the worker in batches through a channel bounded in bytes too, so a
//! peer that stops reading stops the session's writes and with them (as on
//! TCP) its reading.

pub mod outbound;
mod pump;

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use self::outbound::OutboundBody;
pub use self::outbound::WsWriter;
use self::pump::Pump;
use super::frame::FrameError;

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

/// Items (not bytes: those are bounded by the budget) the inbound channel
/// holds at most.
const INBOUND_ITEMS: usize = 256;

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
    /// Accepted frames, each followed by `\n` (the messages that were
    /// ready at once), holding their share of the byte budget until the
    /// reader has copied them.
    Frames(Bytes, OwnedSemaphorePermit),
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
                Inbound::Frames(frames, permit) => {
                    buf.extend_from_slice(&frames);
                    n += frames.len();
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
    let (tx, rx) = mpsc::channel(INBOUND_ITEMS);
    // The longest message out: a MSG frame of the longest text.
    let (out, body) = outbound::channel(outbound::outbound_budget(cap));
    let pump = Pump::new(
        tx,
        inbound_budget(max_frame_bytes),
        out.clone(),
        max_frame_bytes,
        ping_interval(idle_timeout),
    );
    actix_web::rt::spawn(pump.run(stream));
    (
        WsReader { rx, held: None },
        WsWriter { out: Some(out) },
        body,
    )
}
