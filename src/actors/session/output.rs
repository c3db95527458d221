//! A session's output: answers in the order of the frames they answer,
//! what the registry sends, one write at a time, and closing.

use super::*;

/// What a session holds only while it has bytes to write or answers owed:
/// boxed, and let go once everything is written and answered, so an idle
/// connection pays one pointer for it instead of about 160 bytes (which
/// keeps the session's task in a smaller allocation; docs/benchmarks.md).
#[derive(Default)]
pub(super) struct Outbox {
    /// Frames queued for the next write.
    pub(super) out: BytesMut,
    /// Bytes of `out` that are delivered `MSG` frames (credit to return).
    out_msg_bytes: usize,
    /// `MSG` frames in `out` (counted as deliveries once written).
    out_msgs: u64,
    /// The buffer of the write under way, kept to be reused while more
    /// waits.
    spare: BytesMut,
    /// The answers owed, in the order of the frames they answer.
    pub(super) answers: Answers,
}

/// Outboxes let go by a thread's sessions, kept for the next session there
/// that needs one, so a busy connection does not grow a new write buffer
/// at every burst: at most [`POOLED`] per thread, each keeping one buffer
/// of at most 64 KiB.
const POOLED: usize = 8;

/// Capacities of a write buffer worth keeping for the next write: a tiny
/// one costs nothing to make again, a big one is not held on to.
const KEPT_CAPACITY: std::ops::RangeInclusive<usize> = 1024..=64 * 1024;

thread_local! {
    // Boxed: an outbox moves between a session and the pool as one box.
    #[allow(clippy::vec_box)]
    static POOL: std::cell::RefCell<Vec<Box<Outbox>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Outbox {
    /// Empties a let-go outbox for the pool; false if it is not worth
    /// keeping (its buffer is outside the sizes kept for reuse).
    fn recycle(&mut self) -> bool {
        let kept = |b: &BytesMut| KEPT_CAPACITY.contains(&b.capacity());
        let mut buf = std::mem::take(&mut self.out);
        if !kept(&buf) {
            buf = std::mem::take(&mut self.spare);
        }
        self.spare = BytesMut::new();
        self.answers.clear();
        (self.out_msg_bytes, self.out_msgs) = (0, 0);
        buf.clear();
        self.out = buf;
        kept(&self.out)
    }
}

impl Session {
    /// The outbox, made (or taken from this thread's pool) when the first
    /// byte or owed answer needs one.
    pub(super) fn outbox(&mut self) -> &mut Outbox {
        self.outbox
            .get_or_insert_with(|| POOL.with_borrow_mut(|pool| pool.pop()).unwrap_or_default())
    }

    /// Queued bytes that are not delivered `MSG` frames (answers, errors),
    /// plus the answers ready behind an owed one; reading pauses on them.
    pub(super) fn queued_reply_bytes(&self) -> usize {
        self.outbox.as_deref().map_or(0, |o| {
            o.out.len() - o.out_msg_bytes + o.answers.ready_bytes()
        })
    }

    /// The answers owed, if any are.
    pub(super) fn owed(&self) -> Option<&Answers> {
        self.outbox.as_deref().map(|o| &o.answers)
    }

    /// Lets the outbox go once nothing waits to be written or answered and
    /// no write is under way.
    fn release_outbox(&mut self) {
        let idle = self
            .outbox
            .as_deref()
            .is_some_and(|o| o.out.is_empty() && o.answers.is_empty());
        if !idle || self.writing {
            return;
        }
        if let Some(mut o) = self.outbox.take() {
            if o.recycle() {
                POOL.with_borrow_mut(|pool| {
                    if pool.len() < POOLED {
                        pool.push(o);
                    }
                });
            }
        }
    }

    /// Answers the frame being handled with `ERR code reason`.
    pub(super) fn refuse(&mut self, code: ErrorCode, reason: impl Into<String>) {
        self.answer(ServerFrame::Err(FrameError::new(code, reason)));
    }

    /// Queues an answer behind every earlier one.
    pub(super) fn answer(&mut self, frame: ServerFrame) {
        let o = self.outbox();
        o.answers.answer(frame, &mut o.out);
    }

    /// The registry answered the oldest frame of kind `owed` still waiting;
    /// `extra` follows the answer.
    fn fill(&mut self, owed: Owed, frame: ServerFrame, extra: Option<ServerFrame>) {
        let o = self.outbox();
        if !o.answers.fill(owed, frame, extra, &mut o.out) {
            log::debug!("{}: an answer came for no {owed:?}", self.peer());
        }
    }

    /// Writes everything queued, one write at a time.
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.write_closed {
            return;
        }
        let Some(o) = self.outbox.as_deref_mut().filter(|o| !o.out.is_empty()) else {
            if self.closing && self.owed().is_none_or(Answers::is_empty) {
                self.close_write(ctx);
            }
            return;
        };
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let mut buf = std::mem::replace(&mut o.out, std::mem::take(&mut o.spare));
        let credit = std::mem::take(&mut o.out_msg_bytes);
        let (len, msgs) = (buf.len() as u64, std::mem::take(&mut o.out_msgs));
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
            // Keep the buffer for the next write; let a big one go, and a
            // tiny one. A connection that has written everything keeps
            // nothing: its outbox goes to the thread's pool
            // (release_outbox below).
            if KEPT_CAPACITY.contains(&buf.capacity()) {
                if let Some(o) = act.outbox.as_deref_mut() {
                    o.spare = buf;
                }
            }
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
            act.release_outbox();
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
    pub(super) fn begin_close(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        ctx.run_later(self.config.close_grace, |_, ctx| ctx.stop());
        self.flush(ctx);
    }

    /// The registry ends the connection: answers it still owed will not come.
    pub(super) fn drop_owed_answers(&mut self) {
        if let Some(o) = self.outbox.as_deref_mut() {
            o.answers.clear();
        }
    }
}

impl Session {
    /// Logged in: the idle deadline starts, `WELCOME` answers the `LOGIN`.
    fn welcomed(&mut self, id: ClientId, pending: u64, window: usize, ctx: &mut Context<Self>) {
        self.window = window;
        self.config.metrics.logins.inc();
        self.login = LoginState::In(id.clone());
        if let Some(idle) = self.config.idle_timeout {
            self.arm_deadline(self.last_input + idle, ctx);
        }
        self.fill(Owed::Login, ServerFrame::Welcome { id, pending }, None);
    }

    /// Queues delivered frames (`count` messages, the highest `newest`):
    /// their bytes count against the credit until written and handed back.
    fn queue_delivery(&mut self, frames: &[u8], count: usize, newest: Seq) {
        let o = self.outbox();
        o.out.extend_from_slice(frames);
        o.out_msg_bytes += frames.len();
        o.out_msgs += count as u64;
        self.unreturned += frames.len();
        self.highest_delivered = self.highest_delivered.max(newest);
    }

    /// The registry refused the login: the error, `BYE`, and the close.
    fn login_refused(&mut self, e: FrameError, reason: ByeReason, ctx: &mut Context<Self>) {
        log::info!("{}: login refused: {e}", self.peer());
        self.config.metrics.login_refused(reason);
        // Nothing after the refused login will be answered.
        self.outbox().answers.drop_after_login();
        self.fill(
            Owed::Login,
            ServerFrame::Err(e),
            Some(ServerFrame::Bye { reason }),
        );
        self.drop_owed_answers();
        self.begin_close(ctx);
    }

    /// The registry ends the session: an error if there is one, `BYE`,
    /// and the close.
    fn ended(&mut self, e: Option<FrameError>, reason: ByeReason, ctx: &mut Context<Self>) {
        if let Some(e) = &e {
            log::info!("{}: {e}; closing", self.peer());
        }
        self.drop_owed_answers();
        if !self.write_closed {
            if let Some(e) = e {
                ServerFrame::Err(e).encode(&mut self.outbox().out);
            }
            ServerFrame::Bye { reason }.encode(&mut self.outbox().out);
        }
        self.begin_close(ctx);
    }
}

impl Handler<ToSession> for Session {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        // A closing session takes no more deliveries (and reads no more).
        if self.closing && matches!(msg, ToSession::Deliver(_) | ToSession::Backlog(_)) {
            return;
        }
        match msg {
            ToSession::Welcome {
                id,
                pending,
                window,
            } => self.welcomed(id, pending, window, ctx),
            ToSession::Deliver(messages) => {
                for m in &messages {
                    self.queue_delivery(m.frame(), 1, m.seq());
                }
            }
            ToSession::Backlog(b) => self.queue_delivery(b.frames(), b.len(), b.newest()),
            ToSession::Sent(seqs) => {
                for seq in seqs {
                    self.fill(Owed::Send, ServerFrame::Sent { seq }, None);
                }
            }
            ToSession::SendRefused(e) => self.fill(Owed::Send, ServerFrame::Err(e), None),
            ToSession::LoginRefused(e, reason) => self.login_refused(e, reason, ctx),
            ToSession::Ended(e, reason) => self.ended(Some(e), reason, ctx),
            ToSession::Bye(reason) => self.ended(None, reason, ctx),
        }
        self.flush(ctx);
        self.release_outbox();
        // An answer may have ended a pause.
        self.start_read(ctx);
    }
}
