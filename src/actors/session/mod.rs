//! One session per connection (TCP, TLS or WebSocket, all behind
//! [`Connection`]): reads and decodes the client's frames,
//! forwards them to the registry, and writes back what the registry sends.
//!
//! Reading and writing are each one future at a time, spawned in the
//! session's own context:
//! - the reader reads what the socket has, decodes the complete frames and
//!   handles them; it pauses while too many `SEND`s (or `SEND` bytes) wait
//!   for an answer or too many bytes of replies wait to be written, so a
//!   client cannot make the broker buffer without bound. A pause takes
//!   effect between two frames: the rest of the read waits in the read
//!   buffer and is decoded before the socket is read again;
//! - the writer takes everything queued so far and writes it in one go
//!   (frames coalesce while a write is under way), then returns the
//!   delivered bytes to the registry as credit.
//!
//! Answers to a client's frames (`SENT`, `PONG`, `ERR`, `BYE quit`) go out
//! in the order of the frames they answer.
//!
//! This file holds the session's state, its deadlines and its life as an
//! actor; `input.rs` the reading side, `output.rs` the writing side and
//! what the registry sends.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::answers::{Answers, Owed};
use super::deadlines::{self, Due};
use super::messages::{
    Ack, Credit, Disconnect, InputEnded, Login, Publish, PublishBatch, SaveAck, SessionId,
    ToSession,
};
use super::registry::Registry;
use crate::net::transport::{Connection, Input, Reader, TransportKind, Writer, SMALL_READ};
use crate::net::{ByeReason, ClientFrame, ErrorCode, FrameError, ServerCodec, ServerFrame};
use crate::types::{ClientId, Seq};
use output::Outbox;

mod input;
mod output;

/// Smallest and largest room made for one socket read.
const MIN_READ: usize = SMALL_READ;
const MAX_READ: usize = 64 * 1024;

/// How long `QUIT` waits for the client's acknowledgements to be stored
/// before it says `BYE quit` anyway (they are then saved with the next
/// flush; at worst a few messages come again).
const SAVE_ACK_WAIT: Duration = Duration::from_secs(1);

/// Tunables of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Longest accepted frame, terminator excluded.
    pub max_frame_bytes: usize,
    /// `SEND`s that may wait for their `SENT` before reading pauses…
    pub max_unanswered_sends: usize,
    /// …and bytes of their text (one `SEND` is always let through).
    pub max_unanswered_send_bytes: usize,
    /// Bytes of replies that may wait to be written (or wait behind an
    /// answer still owed) before reading pauses.
    pub max_queued_reply_bytes: usize,
    /// How long a closing session waits for its last bytes to be written.
    pub close_grace: Duration,
    /// A connection that has not sent `LOGIN` within this is closed.
    pub login_timeout: Option<Duration>,
    /// A logged-in connection that sent nothing for this long is closed
    /// with `BYE idle`.
    pub idle_timeout: Option<Duration>,
    /// The server's metrics, updated by every session.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_frame_bytes: crate::net::DEFAULT_MAX_FRAME_BYTES,
            max_unanswered_sends: 1024,
            max_unanswered_send_bytes: 1024 * 1024,
            max_queued_reply_bytes: 256 * 1024,
            close_grace: Duration::from_secs(5),
            login_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(300)),
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        }
    }
}

/// One open connection in the server's count; gives its place back when
/// dropped (with the session).
#[derive(Debug)]
pub struct ConnectionSlot(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ConnectionSlot {
    /// Takes a place in `open` if fewer than `max` are taken.
    pub fn take(
        open: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
        max: usize,
    ) -> Option<ConnectionSlot> {
        use std::sync::atomic::Ordering;
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnectionSlot(open.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Where the session is in its login.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoginState {
    None,
    /// `LOGIN` forwarded, `WELCOME` not yet received.
    Pending(ClientId),
    In(ClientId),
}

impl LoginState {
    fn id(&self) -> Option<&ClientId> {
        match self {
            LoginState::None => None,
            LoginState::Pending(id) | LoginState::In(id) => Some(id),
        }
    }
}

/// The actor behind one connection.
pub struct Session {
    id: SessionId,
    peer: Option<SocketAddr>,
    kind: TransportKind,
    /// The registry's address and the configuration, each shared by the
    /// server's sessions.
    registry: std::sync::Arc<Addr<Registry>>,
    config: std::sync::Arc<SessionConfig>,
    login: LoginState,
    codec: ServerCodec,

    reader: Option<Reader>,
    read_buf: BytesMut,
    /// Bytes to make room for before the next read.
    read_size: usize,
    /// A read is under way ([`ReadInput`] spawned).
    reading: bool,
    /// That read let the event loop run once before touching the socket.
    read_yielded: bool,
    /// Decoding stopped at a pause: `read_buf` may hold complete frames,
    /// decoded before the next read.
    stalled: bool,
    /// The peer ended its input; handled once what is left is decoded.
    eof: bool,
    /// `read_buf` grew past a read (a long frame): let its allocation go
    /// once that frame is decoded.
    read_buf_grown: bool,

    writer: Option<Writer>,
    /// What is queued to write and the answers owed; only while there are
    /// any (see [`Outbox`]).
    outbox: Option<Box<Outbox>>,
    /// The registry's credit window for this session (from `WELCOME`).
    window: usize,
    /// Delivered bytes the registry has not had back as credit yet, and of
    /// those, the ones already written.
    unreturned: usize,
    written_unreturned: usize,
    writing: bool,
    /// The write half was shut down: nothing more goes out.
    write_closed: bool,

    /// Highest seq written to this connection (acks above it are refused).
    highest_delivered: Seq,
    /// Highest ack forwarded to the registry.
    acked: Seq,
    /// When the client last sent anything.
    last_input: Instant,
    /// The earliest deadline armed with the thread's deadline queue.
    due: Option<Instant>,
    /// Counted in the paused sessions gauge.
    paused: bool,
    /// Counts this connection among the open ones while it lives.
    _counted: Option<ConnectionSlot>,
    /// Closing: no new frames are handled; once every owed answer is
    /// written the write side is shut down.
    closing: bool,
    /// `QUIT` was read: the frames after it are not handled (its answer,
    /// `BYE quit`, is the last frame).
    quitting: bool,
}

impl Session {
    /// A session for an accepted connection. Sessions may share one `Arc`
    /// of the registry's address and of their configuration.
    pub fn new(
        conn: Connection,
        registry: impl Into<std::sync::Arc<Addr<Registry>>>,
        config: impl Into<std::sync::Arc<SessionConfig>>,
    ) -> Session {
        let (registry, config) = (registry.into(), config.into());
        let Connection {
            reader,
            writer,
            peer,
            kind,
        } = conn;
        Session {
            id: SessionId::next(),
            peer,
            kind,
            registry,
            codec: ServerCodec::new(config.max_frame_bytes),
            config,
            login: LoginState::None,
            reader: Some(reader),
            read_buf: BytesMut::new(),
            read_size: MIN_READ,
            reading: false,
            read_yielded: false,
            stalled: false,
            eof: false,
            read_buf_grown: false,
            writer: Some(writer),
            outbox: None,
            window: 0,
            unreturned: 0,
            written_unreturned: 0,
            writing: false,
            write_closed: false,
            highest_delivered: Seq::ZERO,
            acked: Seq::ZERO,
            closing: false,
            quitting: false,
            last_input: Instant::now(),
            due: None,
            paused: false,
            _counted: None,
        }
    }

    /// Counts this session among the open connections until it ends.
    pub fn counted(mut self, slot: ConnectionSlot) -> Session {
        self._counted = Some(slot);
        self
    }

    /// Closes a connection that has not logged in in time.
    fn login_deadline(&mut self, ctx: &mut Context<Self>) {
        if self.login != LoginState::None || self.closing {
            return;
        }
        log::info!("{}: no LOGIN in time; closing", self.peer());
        ServerFrame::Err(FrameError::new(ErrorCode::Limit, "no LOGIN in time"))
            .encode(&mut self.outbox().out);
        ServerFrame::Bye {
            reason: ByeReason::Limit,
        }
        .encode(&mut self.outbox().out);
        self.drop_owed_answers();
        self.begin_close(ctx);
    }

    /// Closes a logged-in connection that has been silent for too long, or
    /// arms the check for when it would have been. A connection whose
    /// reading we paused ourselves is not silent.
    fn idle_check(&mut self, ctx: &mut Context<Self>) {
        let Some(idle) = self.config.idle_timeout else {
            return;
        };
        if self.closing || !matches!(self.login, LoginState::In(_)) {
            return;
        }
        if self.read_paused() {
            self.last_input = Instant::now();
        }
        if self.last_input.elapsed() >= idle {
            log::info!("{}: silent for {idle:?}; closing", self.peer());
            ServerFrame::Bye {
                reason: ByeReason::Idle,
            }
            .encode(&mut self.outbox().out);
            self.drop_owed_answers();
            self.begin_close(ctx);
        } else {
            self.arm_deadline(self.last_input + idle, ctx);
        }
    }

    /// Has the thread's deadline queue send [`Due`] at `at`, unless a
    /// deadline no later than it is armed already (its check arms the next).
    fn arm_deadline(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if self.due.is_none_or(|d| at < d) {
            self.due = Some(at);
            deadlines::arm(at, ctx.address().downgrade());
        }
    }

    fn peer(&self) -> String {
        self.peer.map_or_else(|| "-".to_owned(), |p| p.to_string())
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::info!("connection from {} ({})", self.peer(), self.kind.label());
        if let Some(t) = self.config.login_timeout {
            self.arm_deadline(Instant::now() + t, ctx);
        }
        self.config.metrics.connection_opened(self.kind);
        self.start_read(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        log::info!("connection from {} closed", self.peer());
        self.config.metrics.connection_closed(self.kind);
        if self.paused {
            self.config.metrics.sessions_paused.dec();
        }
        self.registry.do_send(Disconnect { session: self.id });
    }
}

impl Handler<Due> for Session {
    type Result = ();

    /// A deadline passed: before `LOGIN` the only one armed is the login
    /// deadline; after it, the idle check says whether the client was
    /// silent for too long and arms the next check.
    fn handle(&mut self, _: Due, ctx: &mut Self::Context) {
        if self.due.is_some_and(|d| d <= Instant::now()) {
            self.due = None;
        }
        match self.login {
            LoginState::None => self.login_deadline(ctx),
            LoginState::Pending(_) => {}
            LoginState::In(_) => self.idle_check(ctx),
        }
    }
}
