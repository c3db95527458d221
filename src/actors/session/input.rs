//! A session's input: reading the socket, decoding frames, pausing while
//! too much waits for an answer, and forwarding what the client sent to
//! the registry.

use super::*;

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

impl Session {
    pub(super) fn read_paused(&self) -> bool {
        !self.closing
            && (self.owed().is_some_and(|a| {
                a.unanswered_sends() >= self.config.max_unanswered_sends
                    || a.unanswered_send_bytes() >= self.config.max_unanswered_send_bytes
            }) || self.queued_reply_bytes() > self.config.max_queued_reply_bytes)
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
    pub(super) fn start_read(&mut self, ctx: &mut Context<Self>) {
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
        if self.closing || self.quitting {
            // Closing, or after QUIT: whatever else arrives is read and
            // dropped.
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
                self.outbox().answers.owe_login();
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
                self.outbox().answers.owe_send(text.len());
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
        self.quitting = true;
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
}
