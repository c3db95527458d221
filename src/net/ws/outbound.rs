//! The outbound direction of a WebSocket: the session's frames, encoded as
//! WebSocket text messages on the session's own thread, go to the HTTP
//! worker in batches through a channel bounded in bytes
//! ([`outbound_budget`]); the worker's response body takes them from there.
//!
//! actix-ws's `Session` sends one message per channel operation, which
//! costs a channel send and a cross-thread wake-up per frame; a fan-out
//! writes many small frames at once, and batching them here lets one write
//! of the session cost one channel operation.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Bytes of encoded messages a batch is cut at (a batch ends with the
/// frame that crosses it).
const BATCH: usize = 64 * 1024;

/// Bytes of encoded messages that may wait for the HTTP worker: one batch
/// plus the longest frame that may end it (`longest`, its header included).
/// Beyond it the session's writes wait, and (as over TCP) its reading pauses.
pub fn outbound_budget(longest: usize) -> usize {
    BATCH + longest + 16
}

/// Batches in flight at most (their bytes are bounded by the budget).
const BATCHES: usize = 16;

/// WebSocket opcodes of the messages the server sends.
#[derive(Clone, Copy)]
pub(super) enum Opcode {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Appends one unfragmented, unmasked (server to client) message.
pub(super) fn encode(op: Opcode, payload: &[u8], out: &mut BytesMut) {
    out.reserve(payload.len() + 10);
    out.put_u8(0x80 | op as u8);
    match payload.len() {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
}

/// The sending side, shared by the session's writer and the pump (for
/// pings, pongs and closes).
#[derive(Clone)]
pub(super) struct Outbound {
    tx: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    /// The budget's size: a batch bigger than it (a stored message longer
    /// than today's frame limit allows) waits for all of it instead of
    /// for more than there will ever be.
    total: u32,
    /// A close message went out: nothing may follow it.
    closed: Arc<AtomicBool>,
}

/// The channel's far end: the response body on the HTTP worker.
pub struct OutboundBody {
    rx: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>,
}

/// A channel of `budget` bytes.
pub(super) fn channel(budget: usize) -> (Outbound, OutboundBody) {
    let (tx, rx) = mpsc::channel(BATCHES);
    let total = u32::try_from(budget)
        .unwrap_or(u32::MAX)
        .min(u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX));
    let out = Outbound {
        tx,
        budget: Arc::new(Semaphore::new(total as usize)),
        total,
        closed: Arc::new(AtomicBool::new(false)),
    };
    (out, OutboundBody { rx })
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the WebSocket is closed")
}

impl Outbound {
    /// Sends encoded messages, waiting for room in the budget (all of it
    /// for a batch bigger than the budget, which then goes alone: the bound
    /// is the larger of the budget and one batch).
    pub(super) async fn send(&self, bytes: Bytes) -> std::io::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let need = u32::try_from(bytes.len())
            .unwrap_or(u32::MAX)
            .min(self.total);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(need)
            .await
            .map_err(|_| closed())?;
        self.tx.send((bytes, permit)).await.map_err(|_| closed())
    }

    /// Sends one control message (`Close` marks the connection closed).
    pub(super) async fn control(&self, op: Opcode, payload: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode(op, payload, &mut out);
        let sent = self.send(out.freeze()).await;
        if matches!(op, Opcode::Close) {
            self.closed.store(true, Ordering::Release);
        }
        sent
    }

    /// Sends a close message with `code` and a short reason.
    pub(super) async fn close(&self, code: u16, reason: &str) -> std::io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        // A control message's payload is at most 125 bytes.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.control(Opcode::Close, &payload).await
    }
}

impl futures_core::Stream for OutboundBody {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // The permit goes with the batch: actix-web polls the body only
        // while its own write buffer is short, so the bytes leave the
        // budget for a buffer that is bounded too.
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|(bytes, _permit)| Ok(bytes)))
    }
}

/// The session's writer: each `\n`-terminated frame becomes one text
/// message.
pub struct WsWriter {
    pub(super) out: Option<Outbound>,
}

impl WsWriter {
    /// Sends every frame in `buf` (a whole number of `\n`-terminated
    /// frames of UTF-8 text), in batches of about [`BATCH`] bytes.
    pub async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let out = self.out.as_ref().ok_or_else(closed)?;
        let mut batch = BytesMut::with_capacity((buf.len() + buf.len() / 8 + 16).min(2 * BATCH));
        // Text messages must be UTF-8: checked once for the whole buffer
        // (ASCII goes a word at a time). The frames are then split with a
        // vectorised newline search, which on frames of a hundred bytes
        // costs a fraction of a word-at-a-time one.
        std::str::from_utf8(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', buf) {
            encode(Opcode::Text, &buf[start..end], &mut batch);
            start = end + 1;
            if batch.len() >= BATCH {
                out.send(batch.split().freeze()).await?;
            }
        }
        if start < buf.len() {
            // Not expected (whole frames come in), but nothing is dropped.
            encode(Opcode::Text, &buf[start..], &mut batch);
        }
        if !batch.is_empty() {
            out.send(batch.freeze()).await?;
        }
        Ok(())
    }

    /// Sends a close message (status 1000): the peer answers with its own,
    /// which ends the reader's input.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        match self.out.take() {
            Some(out) => out.close(1000, "").await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_core::Stream as _;

    #[tokio::test]
    async fn a_batch_bigger_than_the_budget_waits_for_all_of_it_not_forever() {
        let (out, mut body) = channel(100);
        out.send(Bytes::from(vec![b'x'; 60])).await.unwrap();
        // 300 bytes can never fit in 100: it goes once the first batch is
        // taken, alone.
        let big = tokio::spawn({
            let out = out.clone();
            async move { out.send(Bytes::from(vec![b'y'; 300])).await }
        });
        let first = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_next(cx));
        assert_eq!(first.await.unwrap().unwrap().len(), 60);
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), big).await;
        assert!(
            matches!(sent, Ok(Ok(Ok(())))),
            "the big batch was never sent"
        );
        let second = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_next(cx));
        assert_eq!(second.await.unwrap().unwrap().len(), 300);
    }

    #[test]
    fn messages_are_encoded_with_the_three_length_forms() {
        let mut out = BytesMut::new();
        encode(Opcode::Text, b"PONG", &mut out);
        assert_eq!(&out[..], b"\x81\x04PONG");
        out.clear();
        encode(Opcode::Text, &[b'x'; 126], &mut out);
        assert_eq!(&out[..4], &[0x81, 126, 0, 126]);
        assert_eq!(out.len(), 4 + 126);
        out.clear();
        encode(Opcode::Ping, &[b'x'; 70_000], &mut out);
        assert_eq!(&out[..2], &[0x89, 127]);
        assert_eq!(&out[2..10], &70_000u64.to_be_bytes());
        assert_eq!(out.len(), 10 + 70_000);
    }
}
