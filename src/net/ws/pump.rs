//! The pump: reads a WebSocket's message stream on the HTTP worker that
//! owns the connection, answers pings, pings a silent peer, and hands
//! accepted frames to the session's reader.
//!
//! The text messages that are ready at once (a client that sends many
//! frames in one write) go to the session as one item holding one share
//! of the byte budget: one channel operation and one wake-up of the
//! session's thread per read, as over TCP, instead of one per message.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode};
use bytes::BytesMut;
use bytestring::ByteString;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use super::outbound::{Opcode, Outbound};
use super::Inbound;
use crate::net::frame::{ErrorCode, FrameError};

/// Bytes of frames an item is cut at (an item ends with the frame that
/// crosses it); the byte budget bounds them as well.
const ITEM: usize = 64 * 1024;

/// Reads the message stream on the HTTP worker.
pub(super) struct Pump {
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

/// Accepted frames not yet handed to the session, each followed by `\n`,
/// and their share of the byte budget.
#[derive(Default)]
struct Gathered {
    frames: BytesMut,
    permit: Option<OwnedSemaphorePermit>,
}

impl Pump {
    /// A pump handing the session frames through `tx`, at most `budget`
    /// bytes of them waiting at a time.
    pub(super) fn new(
        tx: mpsc::Sender<Inbound>,
        budget: usize,
        out: Outbound,
        max_frame_bytes: usize,
        ping_every: Duration,
    ) -> Pump {
        Pump {
            tx,
            budget: Arc::new(Semaphore::new(budget)),
            out,
            max_frame_bytes,
            ping_every,
        }
    }

    /// Runs until the peer or the session is gone, then closes the
    /// WebSocket (with a status when it failed).
    pub(super) async fn run(self, mut stream: AggregatedMessageStream) {
        let mut pinged = false;
        // One timer and one wait for the session's end for the whole
        // connection, not one each per message: the timer is pushed back
        // only when it fires, to a ping interval after the last message.
        let mut heard = tokio::time::Instant::now();
        let ping = tokio::time::sleep(self.ping_every);
        let closed = self.tx.closed();
        tokio::pin!(ping, closed);
        let close = loop {
            let next = tokio::select! {
                msg = stream.recv() => {
                    pinged = false;
                    heard = tokio::time::Instant::now();
                    match msg {
                        None => Next::End(None),
                        Some(msg) => self.on_ready(msg, &mut stream).await,
                    }
                }
                () = &mut ping => {
                    let now = tokio::time::Instant::now();
                    if now < heard + self.ping_every {
                        ping.as_mut().reset(heard + self.ping_every);
                        Next::Go
                    } else if pinged {
                        self.fail("no answer to a WebSocket ping").await;
                        Next::End(Some((CloseCode::Away, "no answer to ping".to_owned())))
                    } else {
                        pinged = true;
                        let next = self.control(Opcode::Ping, b"").await;
                        // The answer is due a ping interval after the ping
                        // is queued.
                        ping.as_mut().reset(tokio::time::Instant::now() + self.ping_every);
                        next
                    }
                }
                () = &mut closed => Next::End(None),
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

    /// Handles `first` and every message ready behind it; the accepted
    /// frames among them go to the session together.
    async fn on_ready(
        &self,
        first: Result<AggregatedMessage, actix_ws::ProtocolError>,
        stream: &mut AggregatedMessageStream,
    ) -> Next {
        let mut gathered = Gathered::default();
        let mut msg = first;
        let next = loop {
            if let Next::End(close) = self.on_message(msg, stream, &mut gathered).await {
                break Next::End(close);
            }
            match ready_now(stream).await {
                Some(more) => msg = more,
                None => break Next::Go,
            }
        };
        match (self.hand_on(&mut gathered).await, next) {
            (Next::Go, next) | (next, Next::Go) => next,
            (Next::End(_), end) => end,
        }
    }

    /// Hands the gathered frames to the session, waiting for room in the
    /// channel; ends the pump when the session is gone.
    async fn hand_on(&self, gathered: &mut Gathered) -> Next {
        let Some(permit) = gathered.permit.take() else {
            return Next::Go;
        };
        let frames = gathered.frames.split().freeze();
        self.send(Inbound::Frames(frames, permit)).await
    }

    /// Sends one item to the session (after the frames gathered before it,
    /// which the caller has handed on).
    async fn send(&self, item: Inbound) -> Next {
        match self.tx.send(item).await {
            Ok(()) => Next::Go,
            Err(_) => Next::End(None),
        }
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

    /// One message: a text message joins the gathered frames; anything
    /// else first hands them on, so the session sees everything in order.
    async fn on_message(
        &self,
        msg: Result<AggregatedMessage, actix_ws::ProtocolError>,
        stream: &mut AggregatedMessageStream,
        gathered: &mut Gathered,
    ) -> Next {
        if let Ok(AggregatedMessage::Text(text)) = msg {
            return self.frame(text, gathered).await;
        }
        if let Next::End(close) = self.hand_on(gathered).await {
            return Next::End(close);
        }
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => return Box::pin(self.on_error(e, stream, gathered)).await,
        };
        match msg {
            AggregatedMessage::Text(_) | AggregatedMessage::Pong(_) => Next::Go,
            AggregatedMessage::Binary(_) => {
                self.send(Inbound::Refused(FrameError::new(
                    ErrorCode::BadFrame,
                    "binary message: frames are text messages",
                )))
                .await
            }
            AggregatedMessage::Ping(data) => self.control(Opcode::Pong, &data).await,
            AggregatedMessage::Close(_) => Next::End(None),
        }
    }

    /// A text message as a frame (a `\r` at its end is left for the
    /// session to drop), or its refusal. Waits for room in the byte budget,
    /// handing on what was gathered first when there is none: those bytes
    /// are only freed once the session has them.
    async fn frame(&self, text: ByteString, gathered: &mut Gathered) -> Next {
        let len = text.len() - usize::from(text.ends_with('\r'));
        let refusal = if len > self.max_frame_bytes {
            Some(FrameError::new(
                ErrorCode::FrameTooLong,
                format!("frame longer than {} bytes", self.max_frame_bytes),
            ))
        } else if memchr::memchr(b'\n', text.as_bytes()).is_some() {
            Some(FrameError::new(
                ErrorCode::BadFrame,
                "a newline inside a message: one message is one frame",
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return match self.hand_on(gathered).await {
                Next::Go => self.send(Inbound::Refused(refusal)).await,
                end => end,
            };
        }
        let need = u32::try_from(text.len() + 1).unwrap_or(u32::MAX);
        let permit = match self.budget.clone().try_acquire_many_owned(need) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                if let Next::End(close) = self.hand_on(gathered).await {
                    return Next::End(close);
                }
                match self.budget.clone().acquire_many_owned(need).await {
                    Ok(permit) => permit,
                    Err(_) => return Next::End(None),
                }
            }
            Err(TryAcquireError::Closed) => return Next::End(None),
        };
        gathered.frames.extend_from_slice(text.as_bytes());
        gathered.frames.extend_from_slice(b"\n");
        match &mut gathered.permit {
            Some(held) => held.merge(permit),
            None => gathered.permit = Some(permit),
        }
        if gathered.frames.len() >= ITEM {
            return self.hand_on(gathered).await;
        }
        Next::Go
    }

    async fn on_error(
        &self,
        e: actix_ws::ProtocolError,
        stream: &mut AggregatedMessageStream,
        gathered: &mut Gathered,
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
            P::Io(_) => return self.on_transport_end(stream, gathered).await,
            _ => (CloseCode::Protocol, e.to_string()),
        };
        log::info!("closing a WebSocket: {why}");
        self.fail(&why).await;
        Next::End(Some((code, why)))
    }

    /// The connection ended without a close message (the peer closed its
    /// TCP connection): the messages that came before the end are still
    /// handed on, then the session sees the end of input, as over TCP.
    async fn on_transport_end(
        &self,
        stream: &mut AggregatedMessageStream,
        gathered: &mut Gathered,
    ) -> Next {
        while let Some(Ok(msg)) = ready_now(stream).await {
            if let Next::End(_) = self.on_message(Ok(msg), stream, gathered).await {
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
