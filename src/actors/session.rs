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

/// A session's read of its socket, spawned in its context: it polls the
/// reader where it lies in the session, so a connection waiting for input
/// holds no future state of its own (the spawned box is empty).
struct ReadInput;

impl ActorFuture<Session> for ReadInput {
    type Output = io::Result<Input>;

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Session,
        _: &mut Context<Session>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<Self::Output> {
        act.poll_input(task)
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
    /// Frames queued for the next write.
    out: BytesMut,
    /// Bytes of `out` that are delivered `MSG` frames (credit to return).
    out_msg_bytes: usize,
    /// `MSG` frames in `out` (counted as deliveries once written).
    out_msgs: u64,
    /// The registry's credit window for this session (from `WELCOME`).
    window: usize,
    /// Delivered bytes the registry has not had back as credit yet, and of
    /// those, the ones already written.
    unreturned: usize,
    written_unreturned: usize,
    /// The buffer of the finished write, kept to be reused.
    spare: BytesMut,
    writing: bool,
    /// The write half was shut down: nothing more goes out.
    write_closed: bool,

    answers: Answers,
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
            out: BytesMut::new(),
            out_msg_bytes: 0,
            out_msgs: 0,
            window: 0,
            unreturned: 0,
            written_unreturned: 0,
            spare: BytesMut::new(),
            writing: false,
            write_closed: false,
            answers: Answers::default(),
            highest_delivered: Seq::ZERO,
            acked: Seq::ZERO,
            closing: false,
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
            .encode(&mut self.out);
        ServerFrame::Bye {
            reason: ByeReason::Limit,
        }
        .encode(&mut self.out);
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
            .encode(&mut self.out);
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

    // ---- reading -------------------------------------------------------

    fn read_paused(&self) -> bool {
        !self.closing
            && (self.answers.unanswered_sends() >= self.config.max_unanswered_sends
                || self.answers.unanswered_send_bytes() >= self.config.max_unanswered_send_bytes
                || self.out.len() - self.out_msg_bytes + self.answers.ready_bytes()
                    > self.config.max_queued_reply_bytes)
    }

    /// Counts a pause that began or ended in the paused sessions gauge.
    fn note_pause(&mut self) {
        let paused = self.read_paused();
        if paused != self.paused {
            self.paused = paused;
            match paused {
                true => self.config.metrics.sessions_paused.inc(),
                false => {
                    // The client was not silent while we did not read.
                    self.last_input = Instant::now();
                    self.config.metrics.sessions_paused.dec()
                }
            };
        }
    }

    /// Goes on reading: first the frames a pause left in `read_buf`, then
    /// the end of input if it came, then the socket.
    fn start_read(&mut self, ctx: &mut Context<Self>) {
        self.note_pause();
        // A stopping session reads no more (a read would keep it alive).
        if self.reading || self.read_paused() || ctx.state().stopping() {
            return;
        }
        if self.stalled {
            self.decode_frames(ctx);
            if self.stalled {
                return;
            }
        }
        if self.eof {
            self.eof = false;
            return self.on_eof(ctx);
        }
        if self.reader.is_none() {
            return;
        }
        self.reading = true;
        self.read_yielded = false;
        ReadInput
            .map(|res, act: &mut Session, ctx| act.on_input(res, ctx))
            .spawn(ctx);
    }

    /// Polls the socket for input, in place; see [`ReadInput`].
    fn poll_input(&mut self, task: &mut std::task::Context<'_>) -> Poll<io::Result<Input>> {
        // Let the event loop run first: a peer that always has input ready
        // would otherwise keep this session's context polling forever,
        // starving timers (the close grace) and the other sessions on this
        // thread.
        if !self.read_yielded {
            self.read_yielded = true;
            task.waker().wake_by_ref();
            return Poll::Pending;
        }
        match self.reader.as_mut() {
            Some(reader) => reader.poll_read_some(task, &mut self.read_buf, self.read_size),
            None => Poll::Ready(Ok(Input::Eof)),
        }
    }

    /// A read finished: handles what it brought and reads on.
    fn on_input(&mut self, res: io::Result<Input>, ctx: &mut Context<Self>) {
        self.reading = false;
        match res {
            Ok(Input::Eof) => {
                self.eof = true;
                self.start_read(ctx);
            }
            Ok(Input::Refused(e)) => {
                self.last_input = Instant::now();
                self.handle_item(Err(e), &mut Vec::new(), ctx);
                self.flush(ctx);
                self.start_read(ctx);
            }
            Ok(Input::Bytes(n)) => {
                self.last_input = Instant::now();
                // Grow the next read while reads fill the buffer; start
                // small again once the client pauses.
                self.read_size = if n >= self.read_size {
                    (self.read_size * 2).min(MAX_READ)
                } else {
                    MIN_READ
                };
                self.config.metrics.received_bytes.inc_by(n as u64);
                self.decode_frames(ctx);
                self.start_read(ctx);
            }
            Err(e) => {
                log::debug!("read from {} failed: {e}", self.peer());
                ctx.stop();
            }
        }
    }

    /// Lets go of a read buffer that is empty, or that a long frame made
    /// big and that now holds little.
    fn shrink_read_buf(&mut self) {
        if self.read_buf.is_empty() {
            self.read_buf = BytesMut::new();
            self.read_buf_grown = false;
        } else if self.read_buf.len() > 2 * MAX_READ {
            self.read_buf_grown = true;
        } else if self.read_buf_grown && self.read_buf.len() <= MAX_READ {
            self.read_buf = BytesMut::from(&self.read_buf[..]);
            self.read_buf_grown = false;
        }
    }

    fn on_eof(&mut self, ctx: &mut Context<Self>) {
        // A last frame without a newline still counts.
        let mut sends = Vec::new();
        while let Ok(Some(item)) = self.codec.decode_eof(&mut self.read_buf) {
            self.handle_item(item, &mut sends, ctx);
        }
        self.read_buf = BytesMut::new();
        self.reader = None;
        if matches!(self.login, LoginState::Pending(_)) {
            self.registry.do_send(InputEnded { session: self.id });
        }
        self.forward_read(sends);
        self.flush(ctx);
        if self.write_closed {
            // We had finished already and the peer has now stopped too.
            ctx.stop();
        } else if !self.closing {
            log::debug!("{} closed its sending side", self.peer());
            self.begin_close(ctx);
        }
    }

    /// Decodes and handles frames from `read_buf` until it holds no
    /// complete one or reading is paused.
    fn decode_frames(&mut self, ctx: &mut Context<Self>) {
        self.stalled = false;
        // This read's SENDs, forwarded together at its end.
        let mut sends = Vec::new();
        loop {
            if self.read_paused() {
                self.stalled = true;
                break;
            }
            match self.codec.decode(&mut self.read_buf) {
                Ok(Some(item)) => self.handle_item(item, &mut sends, ctx),
                Ok(None) => break,
                Err(e) => {
                    log::debug!("decoding from {} failed: {e}", self.peer());
                    // What was decoded before is still the client's.
                    self.forward_read(sends);
                    ctx.stop();
                    return;
                }
            }
        }
        self.shrink_read_buf();
        self.forward_read(sends);
        self.flush(ctx);
    }

    /// Handles one decoded frame; a `SEND` joins `sends`, which the caller
    /// forwards at the end of the read.
    fn handle_item(
        &mut self,
        item: Result<ClientFrame, FrameError>,
        sends: &mut Vec<Publish>,
        ctx: &mut Context<Self>,
    ) {
        if self.closing {
            // Closing: whatever else arrives is read and dropped.
            return;
        }
        let frame = match item {
            Ok(frame) => frame,
            Err(e) => {
                log::debug!("{}: refused frame: {e}", self.peer());
                return self.answer(ServerFrame::Err(e));
            }
        };
        log::debug!("{}: {:?}", self.peer(), frame);
        match frame {
            ClientFrame::Login { id, secret } => {
                if self.login != LoginState::None {
                    return self.refuse(
                        ErrorCode::AlreadyLoggedIn,
                        "this connection is logged in already",
                    );
                }
                self.login = LoginState::Pending(id.clone());
                self.answers.owe_login();
                self.registry.do_send(Login {
                    session: self.id,
                    id,
                    secret,
                    to: ctx.address().recipient(),
                    peer: self.peer,
                });
            }
            ClientFrame::Send { text, tags } => {
                if self.login == LoginState::None {
                    return self.refuse(ErrorCode::NotLoggedIn, "log in first");
                }
                self.answers.owe_send(text.len());
                sends.push(Publish {
                    session: self.id,
                    text,
                    tags,
                });
            }
            ClientFrame::Ack { seq } => {
                if self.login == LoginState::None {
                    return self.refuse(ErrorCode::NotLoggedIn, "log in first");
                }
                if seq > self.highest_delivered {
                    return self.refuse(
                        ErrorCode::BadAck,
                        format!("seq {seq} was never sent on this connection"),
                    );
                }
                self.acked = self.acked.max(seq);
            }
            ClientFrame::Ping { token } => self.answer(ServerFrame::Pong { token }),
            ClientFrame::Quit => {
                // The SENDs before it are answered before its `BYE`.
                self.forward_read(std::mem::take(sends));
                self.quit(ctx)
            }
        }
    }

    /// `QUIT`: says `BYE quit` and closes, once the registry saved the
    /// client's acknowledgements (waiting at most [`SAVE_ACK_WAIT`]; frames
    /// after `QUIT` are not read meanwhile).
    fn quit(&mut self, ctx: &mut Context<Self>) {
        self.forward_read(Vec::new());
        let bye = |act: &mut Session, ctx: &mut Context<Session>| {
            act.answer(ServerFrame::Bye {
                reason: ByeReason::Quit,
            });
            act.begin_close(ctx);
        };
        let Some(id) = self.login.id().cloned() else {
            return bye(self, ctx);
        };
        let saved = tokio::time::timeout(SAVE_ACK_WAIT, self.registry.send(SaveAck { id }));
        ctx.wait(saved.into_actor(self).map(move |_, act, ctx| bye(act, ctx)));
    }

    /// Sends the read's `SEND`s (one message) and the highest new ack to the
    /// registry: once per read, not per frame.
    fn forward_read(&mut self, mut sends: Vec<Publish>) {
        match sends.len() {
            0 => {}
            1 => {
                if let Some(p) = sends.pop() {
                    self.registry.do_send(p);
                }
            }
            _ => self.registry.do_send(PublishBatch(sends)),
        }
        let Some(id) = self.login.id() else {
            return;
        };
        if self.acked > Seq::ZERO {
            self.registry.do_send(Ack {
                id: id.clone(),
                seq: self.acked,
            });
            self.acked = Seq::ZERO;
        }
    }

    fn refuse(&mut self, code: ErrorCode, reason: impl Into<String>) {
        self.answer(ServerFrame::Err(FrameError::new(code, reason)));
    }

    // ---- answers and writing -------------------------------------------

    /// Queues an answer behind every earlier one.
    fn answer(&mut self, frame: ServerFrame) {
        self.answers.answer(frame, &mut self.out);
    }

    /// The registry answered the oldest frame of kind `owed` still waiting;
    /// `extra` follows the answer.
    fn fill(&mut self, owed: Owed, frame: ServerFrame, extra: Option<ServerFrame>) {
        if !self.answers.fill(owed, frame, extra, &mut self.out) {
            log::debug!("{}: an answer came for no {owed:?}", self.peer());
        }
    }

    /// Writes everything queued, one write at a time.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.write_closed {
            return;
        }
        if self.out.is_empty() {
            if self.closing && self.answers.is_empty() {
                self.close_write(ctx);
            }
            return;
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let mut buf = std::mem::replace(&mut self.out, std::mem::take(&mut self.spare));
        let credit = std::mem::take(&mut self.out_msg_bytes);
        let (len, msgs) = (buf.len() as u64, std::mem::take(&mut self.out_msgs));
        self.writing = true;
        async move {
            let res = writer.write_all(&buf).await;
            buf.clear();
            (writer, buf, res)
        }
        .into_actor(self)
        .map(move |(writer, buf, res), act, ctx| {
            act.writing = false;
            act.writer = Some(writer);
            // Keep the buffer of a busy connection for the next time; let a
            // big one go, and a tiny one (a quiet connection keeps nothing).
            act.spare = if buf.capacity() > 64 * 1024 || buf.capacity() < 1024 {
                BytesMut::new()
            } else {
                buf
            };
            if let Err(e) = res {
                log::debug!("write to {} failed: {e}", act.peer());
                ctx.stop();
                return;
            }
            act.config.metrics.sent_bytes.inc_by(len);
            act.config.metrics.deliveries.inc_by(msgs);
            act.written_unreturned += credit;
            // Hand written bytes back only once the registry's credit for
            // us is down to half the window: an idle broadcast then costs
            // one message, not two.
            if act.written_unreturned > 0 && act.unreturned * 2 >= act.window {
                act.registry.do_send(Credit {
                    session: act.id,
                    bytes: act.written_unreturned,
                });
                act.unreturned -= act.written_unreturned;
                act.written_unreturned = 0;
            }
            act.flush(ctx);
            act.start_read(ctx);
        })
        .spawn(ctx);
    }

    /// Everything is written: send FIN, then wait (bounded) for the peer to
    /// close, so unread input does not turn our close into a reset that
    /// could destroy the last frames.
    fn close_write(&mut self, ctx: &mut Context<Self>) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        self.write_closed = true;
        async move {
            let _ = writer.shutdown().await;
            writer
        }
        .into_actor(self)
        .map(|writer, act, ctx| {
            act.writer = Some(writer);
            // No reader and none reading: the peer's end of input was seen.
            if act.reader.is_none() && !act.reading {
                ctx.stop();
            } else {
                act.start_read(ctx);
            }
        })
        .spawn(ctx);
    }

    /// Stops handling frames; the connection closes once every owed answer
    /// is written, or after the grace period if the peer does not read.
    fn begin_close(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        ctx.run_later(self.config.close_grace, |_, ctx| ctx.stop());
        self.flush(ctx);
    }

    /// The registry ends the connection: answers it still owed will not come.
    fn drop_owed_answers(&mut self) {
        self.answers.clear();
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

impl Handler<ToSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::Welcome {
                id,
                pending,
                window,
            } => {
                self.window = window;
                self.config.metrics.logins.inc();
                self.login = LoginState::In(id.clone());
                if let Some(idle) = self.config.idle_timeout {
                    self.arm_deadline(self.last_input + idle, ctx);
                }
                self.fill(Owed::Login, ServerFrame::Welcome { id, pending }, None);
                self.answers.release_if_empty();
            }
            ToSession::Deliver(messages) => {
                if self.closing {
                    return;
                }
                for m in &messages {
                    self.out.extend_from_slice(m.frame());
                    self.out_msg_bytes += m.frame().len();
                    self.out_msgs += 1;
                    self.unreturned += m.frame().len();
                }
                if let Some(last) = messages.last() {
                    self.highest_delivered = last.seq();
                }
            }
            ToSession::Backlog(backlog) => {
                if self.closing {
                    return;
                }
                let bytes = backlog.frames().len();
                self.out.extend_from_slice(backlog.frames());
                self.out_msg_bytes += bytes;
                self.out_msgs += backlog.len() as u64;
                self.unreturned += bytes;
                self.highest_delivered = self.highest_delivered.max(backlog.newest());
            }
            ToSession::Sent(seqs) => {
                for seq in seqs {
                    self.fill(Owed::Send, ServerFrame::Sent { seq }, None);
                }
            }
            ToSession::SendRefused(e) => self.fill(Owed::Send, ServerFrame::Err(e), None),
            ToSession::LoginRefused(e, reason) => {
                log::info!("{}: login refused: {e}", self.peer());
                self.config.metrics.login_refused(reason);
                // Nothing after the refused login will be answered.
                self.answers.drop_after_login();
                self.fill(
                    Owed::Login,
                    ServerFrame::Err(e),
                    Some(ServerFrame::Bye { reason }),
                );
                self.drop_owed_answers();
                self.begin_close(ctx);
            }
            ToSession::Ended(e, reason) => {
                log::info!("{}: {e}; closing", self.peer());
                self.drop_owed_answers();
                if !self.write_closed {
                    ServerFrame::Err(e).encode(&mut self.out);
                    ServerFrame::Bye { reason }.encode(&mut self.out);
                }
                self.begin_close(ctx);
            }
            ToSession::Bye(reason) => {
                self.drop_owed_answers();
                if !self.write_closed {
                    ServerFrame::Bye { reason }.encode(&mut self.out);
                }
                self.begin_close(ctx);
            }
        }
        self.flush(ctx);
        // An answer may have ended a pause.
        self.start_read(ctx);
    }
}
