//! The client's rules, apart from sockets, terminals and clocks: what to do
//! with each server frame, stdin line, tick of time and lost connection.
//!
//! Every input returns a list of [`Action`]s for the I/O shell to carry out
//! in order. Time is an argument (`now`), so tests drive the machine with a
//! fake clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::net::{ByeReason, ClientFrame, ErrorCode, FrameError, ServerFrame, Tags};
use herald::{ClientId, Seq};

/// Stdin lines kept until their `SENT`, at most.
pub const MAX_UNCONFIRMED_LINES: usize = 1024;
/// Stdin is not read while unconfirmed lines hold this many bytes or more
/// (so they hold at most this plus one line).
pub const MAX_UNCONFIRMED_BYTES: usize = 4 << 20;
/// Printed messages after which an `ACK` goes out without waiting.
const ACK_EVERY: u64 = 256;
/// How long acks may wait to be batched.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// How often the client pings, so a server's idle timeout never closes a
/// client that is merely quiet.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// How long to wait for `WELCOME` (or a refusal) after connecting.
pub const LOGIN_WAIT: Duration = Duration::from_secs(10);
/// How long to wait for `BYE` after `QUIT`.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Connections tried before the first login gives up: with the backoff
/// below, about 1.5 to 3 s, long enough for a server to restart. With
/// several servers, at least one try each (see [`Settings::servers`]).
pub const FIRST_LOGIN_TRIES: u32 = 6;
/// Reconnection delays: the first, and the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How the machine was configured.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The id to log in as.
    pub id: ClientId,
    /// The secret sent with `LOGIN`, if any.
    pub secret: Option<String>,
    /// After stdin ends and every line is confirmed, quit once no `MSG` and
    /// no stdin line came for this long.
    pub exit_when_idle: Option<Duration>,
    /// Reconnect when a connection is lost (else exit).
    pub reconnect: bool,
    /// Print `[<seq>] ` in front of each message.
    pub show_seq: bool,
    /// Prefix of this run's message ids (unique across runs).
    pub mid_prefix: String,
    /// How many servers the shell rotates through (at least 1). Before the
    /// first login the client gives up after [`FIRST_LOGIN_TRIES`] tries or
    /// once around the list, whichever is more; and a server that stays
    /// silent after connecting is final at once only when it is the only one.
    pub servers: usize,
}

/// How a client run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A polite close (`QUIT`, or a signal while not connected).
    Quit,
    /// The server refused the login; the text says why.
    Refused(String),
    /// The run cannot go on (final refusal, lost connection without
    /// reconnecting, no server at all); the text says why.
    Closed(String),
}

/// What the I/O shell must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this frame on the current connection.
    Send(ClientFrame),
    /// Write this line (newline included) to stdout, flushed.
    Print(Vec<u8>),
    /// Write this line to stderr.
    Note(String),
    /// End the current connection (after writing what is queued) and
    /// connect again once this delay, before jitter, has passed.
    Reconnect(Duration),
    /// End the connection and exit.
    Exit(Outcome),
}

/// A stdin event, as the shell's bounded line reader saw it.
#[derive(Debug)]
pub enum StdinEvent {
    /// One line, its terminator removed.
    Line(Vec<u8>),
    /// A line longer than the frame limit, skipped.
    TooLong,
    /// Stdin ended (or failed; the text says how).
    End(Option<String>),
}

/// A line waiting for its `SENT`.
#[derive(Debug)]
struct Line {
    mid: String,
    text: Bytes,
}

impl Line {
    fn frame(&self) -> ClientFrame {
        ClientFrame::Send {
            text: self.text.clone(),
            tags: Tags {
                mid: Some(self.mid.clone()),
            },
        }
    }
}

/// Where the machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection: waiting to (re)connect.
    Down,
    /// Connected, `LOGIN` sent, no `WELCOME` yet.
    LoggingIn { deadline: Instant },
    /// Logged in.
    Online,
    /// `QUIT` sent, waiting for `BYE`.
    Quitting { deadline: Instant },
    /// Exit was decided.
    Done,
}

/// The client's state across connections; see the module docs.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    phase: Phase,
    /// Lines read and not yet confirmed, oldest first; while online, every
    /// one of them has been sent on the current connection.
    unconfirmed: VecDeque<Line>,
    unconfirmed_bytes: usize,
    next_mid: u64,
    stdin_open: bool,
    /// Highest seq printed, across connections.
    printed: Seq,
    /// Highest seq received (and printed, now or before) on this connection.
    received: Seq,
    /// Highest seq acknowledged on this connection.
    acked: Seq,
    ack_due: Option<Instant>,
    next_ping: Option<Instant>,
    /// When the last `MSG` or stdin line came.
    last_activity: Instant,
    /// Failed attempts since the last login, for the backoff.
    attempt: u32,
    /// A login succeeded at least once.
    ever_logged_in: bool,
}

impl Machine {
    /// A machine that has not connected yet.
    pub fn new(settings: Settings, now: Instant) -> Machine {
        Machine {
            settings,
            phase: Phase::Down,
            unconfirmed: VecDeque::new(),
            unconfirmed_bytes: 0,
            next_mid: 0,
            stdin_open: true,
            printed: Seq::ZERO,
            received: Seq::ZERO,
            acked: Seq::ZERO,
            ack_due: None,
            next_ping: None,
            last_activity: now,
            attempt: 0,
            ever_logged_in: false,
        }
    }

    /// Whether the shell should read stdin now: it is open, the run is not
    /// ending, and the unconfirmed lines are under their bounds.
    pub fn wants_line(&self) -> bool {
        self.stdin_open
            && !matches!(self.phase, Phase::Quitting { .. } | Phase::Done)
            && self.unconfirmed.len() < MAX_UNCONFIRMED_LINES
            && self.unconfirmed_bytes < MAX_UNCONFIRMED_BYTES
    }

    /// Whether a connection is up (logging in, online or quitting).
    pub fn connected(&self) -> bool {
        !matches!(self.phase, Phase::Down | Phase::Done)
    }

    /// Connections tried before the first login gives up: see
    /// [`Settings::servers`].
    pub fn first_login_tries(&self) -> u32 {
        let servers = u32::try_from(self.settings.servers).unwrap_or(u32::MAX);
        FIRST_LOGIN_TRIES.max(servers)
    }

    /// Whether a login ever succeeded in this run.
    pub fn ever_logged_in(&self) -> bool {
        self.ever_logged_in
    }

    /// Lines read and not yet confirmed.
    #[cfg(test)]
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// The earliest time [`Machine::on_tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::LoggingIn { deadline } | Phase::Quitting { deadline } => Some(deadline),
            _ => None,
        };
        [phase, self.ack_due, self.next_ping, self.idle_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When `--exit-when-idle` fires, if it may.
    fn idle_at(&self) -> Option<Instant> {
        let idle = self.settings.exit_when_idle?;
        let ready = !self.stdin_open && self.unconfirmed.is_empty() && self.phase == Phase::Online;
        ready.then(|| self.last_activity + idle)
    }

    /// A new connection is up: log in.
    pub fn on_connected(&mut self, now: Instant) -> Vec<Action> {
        self.phase = Phase::LoggingIn {
            deadline: now + LOGIN_WAIT,
        };
        self.received = Seq::ZERO;
        self.acked = Seq::ZERO;
        self.ack_due = None;
        self.next_ping = None;
        vec![Action::Send(ClientFrame::Login {
            id: self.settings.id.clone(),
            secret: self.settings.secret.clone(),
        })]
    }

    /// Connecting failed (`why` says how). Before the first login this is
    /// tried [`Machine::first_login_tries`] times and then final: a server that is
    /// restarting comes back within that, a wrong address or port does not.
    pub fn on_connect_failed(&mut self, why: &str) -> Vec<Action> {
        if !self.ever_logged_in {
            return self.before_first_login(why);
        }
        self.retry(format!("cannot reconnect ({why})"))
    }

    /// The server's certificate is not trusted. Before the first login
    /// this is final once every listed server was tried (the same
    /// certificate would come again); later, a server may have been given
    /// a wrong one by mistake and be fixed, so it is retried like any lost
    /// connection.
    pub fn on_untrusted(&mut self, why: &str) -> Vec<Action> {
        if self.ever_logged_in {
            return self.retry(why.to_owned());
        }
        let servers = u32::try_from(self.settings.servers).unwrap_or(u32::MAX);
        if self.attempt + 1 >= servers {
            return self.exit(Outcome::Closed(why.to_owned()));
        }
        self.lost(why.to_owned())
    }

    /// The connection ended without a `BYE` (EOF, read error, or one the
    /// shell gave up on); `why` says how.
    pub fn on_lost(&mut self, why: &str) -> Vec<Action> {
        match self.phase {
            Phase::Down | Phase::Done => Vec::new(),
            Phase::Quitting { .. } => self.exit(Outcome::Quit),
            // Lost before the first login: a server killed while it let us
            // in, or the wrong server or port (see `before_first_login`).
            Phase::LoggingIn { .. } if !self.ever_logged_in => self.before_first_login(why),
            _ => self.lost(why.to_owned()),
        }
    }

    /// SIGINT or SIGTERM: acknowledge what was printed, say `QUIT`, and
    /// exit once the server answers (or at once when not logged in).
    pub fn on_signal(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Online => self.quit(now),
            Phase::Quitting { .. } => Vec::new(),
            _ => self.exit(Outcome::Quit),
        }
    }

    /// A stdin event.
    pub fn on_stdin(&mut self, now: Instant, event: StdinEvent) -> Vec<Action> {
        self.last_activity = now;
        let mut text = match event {
            StdinEvent::End(why) => {
                self.stdin_open = false;
                return why
                    .map(|e| {
                        note(format!(
                            "cannot read stdin ({e}); no more lines will be sent"
                        ))
                    })
                    .into_iter()
                    .collect();
            }
            StdinEvent::TooLong => {
                return vec![note("skipped a line longer than --max-frame-bytes")];
            }
            StdinEvent::Line(text) => text,
        };
        while text.last() == Some(&b'\r') {
            text.pop();
        }
        if text.is_empty() {
            return Vec::new();
        }
        if std::str::from_utf8(&text).is_err() {
            return vec![note("skipped a line that is not valid UTF-8")];
        }
        if text.contains(&b'\r') {
            return vec![note("skipped a line with a carriage return inside")];
        }
        let line = Line {
            mid: format!("{}.{}", self.settings.mid_prefix, self.next_mid),
            text: Bytes::from(text),
        };
        self.next_mid += 1;
        self.unconfirmed_bytes += line.text.len();
        let mut out = Vec::new();
        if self.phase == Phase::Online {
            out.push(Action::Send(line.frame()));
        }
        self.unconfirmed.push_back(line);
        out
    }

    /// Time passed: batched acks, pings, the login and quit deadlines, and
    /// `--exit-when-idle`.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::LoggingIn { deadline } if now >= deadline => {
                let why = format!(
                    "the server did not answer LOGIN within {} s",
                    LOGIN_WAIT.as_secs()
                );
                // A server that accepts and stays silent is not restarting:
                // before the first login this is final at once, unless
                // other servers are left to try.
                if !self.ever_logged_in && self.settings.servers <= 1 {
                    return self.exit(Outcome::Closed(why));
                }
                return self.on_lost(&why);
            }
            Phase::Quitting { deadline } if now >= deadline => {
                let mut out = vec![note("the server did not answer QUIT; closing")];
                out.extend(self.exit(Outcome::Quit));
                return out;
            }
            _ => {}
        }
        if self.idle_at().is_some_and(|at| now >= at) {
            return self.quit(now);
        }
        let mut out = Vec::new();
        if self.ack_due.is_some_and(|at| now >= at) {
            self.ack(&mut out);
        }
        if self.next_ping.is_some_and(|at| now >= at) {
            out.push(Action::Send(ClientFrame::Ping { token: None }));
            self.next_ping = Some(now + PING_EVERY);
        }
        out
    }

    /// A frame from the server, or one that could not be decoded.
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: Result<ServerFrame, FrameError>,
    ) -> Vec<Action> {
        match self.phase {
            Phase::Down | Phase::Done => return Vec::new(),
            // After QUIT only the end matters: any BYE, or anything the
            // client cannot decode, ends the run as asked.
            Phase::Quitting { .. }
                if frame.is_err() || matches!(frame, Ok(ServerFrame::Bye { .. })) =>
            {
                return self.exit(Outcome::Quit);
            }
            _ => {}
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // Skipping it would let the next cumulative ACK cover a
                // message that was never printed.
                let mut out = Vec::new();
                self.ack(&mut out);
                out.extend(self.lost(format!(
                    "the server sent a frame this client cannot decode ({e}); \
                     ending the connection without acknowledging it \
                     (if it is a long message, raise --max-frame-bytes)"
                )));
                return out;
            }
        };
        match frame {
            ServerFrame::Welcome { id, pending } => self.on_welcome(now, &id, pending),
            ServerFrame::Msg {
                seq, from, text, ..
            } => self.on_msg(now, seq, &from, &text),
            ServerFrame::Sent { .. } => {
                if matches!(self.phase, Phase::Online | Phase::Quitting { .. }) {
                    self.drop_front();
                }
                Vec::new()
            }
            ServerFrame::Pong { .. } => Vec::new(),
            ServerFrame::Err(e) => self.on_err(e),
            ServerFrame::Bye { reason } => self.on_bye(reason),
        }
    }

    fn on_welcome(&mut self, now: Instant, id: &ClientId, pending: u64) -> Vec<Action> {
        if !matches!(self.phase, Phase::LoggingIn { .. }) {
            return Vec::new();
        }
        self.phase = Phase::Online;
        self.ever_logged_in = true;
        self.attempt = 0;
        self.next_ping = Some(now + PING_EVERY);
        let mut out = vec![note(format!(
            "logged in as {id}; {pending} message(s) waiting"
        ))];
        // Lines never confirmed go (again) in order, with their mids.
        out.extend(self.unconfirmed.iter().map(|l| Action::Send(l.frame())));
        out
    }

    fn on_msg(&mut self, now: Instant, seq: Seq, from: &ClientId, text: &[u8]) -> Vec<Action> {
        // After QUIT the final ACK is out: what comes now stays unprinted
        // and unacknowledged, for the next run.
        if self.phase != Phase::Online {
            return Vec::new();
        }
        self.last_activity = now;
        let mut out = Vec::new();
        if seq > self.printed {
            let mut line = Vec::with_capacity(from.as_str().len() + text.len() + 24);
            if self.settings.show_seq {
                line.extend_from_slice(format!("[{seq}] ").as_bytes());
            }
            line.extend_from_slice(from.as_str().as_bytes());
            line.extend_from_slice(b": ");
            line.extend_from_slice(text);
            line.push(b'\n');
            out.push(Action::Print(line));
            self.printed = seq;
        }
        self.received = self.received.max(seq);
        if self.received.0.saturating_sub(self.acked.0) >= ACK_EVERY {
            self.ack(&mut out);
        } else if self.received > self.acked && self.ack_due.is_none() {
            self.ack_due = Some(now + ACK_DELAY);
        }
        out
    }

    fn on_err(&mut self, e: FrameError) -> Vec<Action> {
        let what = format!("{} {}", e.code, e.reason);
        if matches!(self.phase, Phase::LoggingIn { .. }) {
            return match e.code {
                // The server is full or stopping: it may take us later.
                ErrorCode::Limit => self.lost(format!("the server refused the login: {what}")),
                ErrorCode::AuthFailed => self.exit(Outcome::Refused(format!(
                    "{what} (give this id's secret with --secret-file PATH or HERALD_SECRET)"
                ))),
                _ => self.exit(Outcome::Refused(what)),
            };
        }
        if self.phase != Phase::Online {
            return Vec::new();
        }
        match e.code {
            // Our only frames that can be refused are SENDs, answered in
            // order: this refusal is the oldest unconfirmed line's, and
            // sending it again would be refused again.
            ErrorCode::EmptyMessage | ErrorCode::FrameTooLong | ErrorCode::BadFrame => {
                self.drop_front();
                vec![note(format!("the server refused a line, dropped: {what}"))]
            }
            // A limit may lift: keep the line, and start over on a new
            // connection so that the resend keeps the lines' order.
            ErrorCode::Limit => self.lost(format!("the server refused a line for now: {what}")),
            ErrorCode::BadAck => vec![note(format!("the server refused an ACK: {what}"))],
            ErrorCode::UnknownClient | ErrorCode::AuthFailed => self.exit(Outcome::Refused(what)),
            ErrorCode::NotLoggedIn | ErrorCode::AlreadyLoggedIn => {
                self.lost(format!("the server answered {what}"))
            }
        }
    }

    fn on_bye(&mut self, reason: ByeReason) -> Vec<Action> {
        let why = format!("server closed the connection: {reason}");
        match reason {
            ByeReason::Quit => self.exit(Outcome::Quit),
            ByeReason::Shutdown | ByeReason::Idle | ByeReason::Limit => self.lost(why),
            // Someone else is this id now, or it may not log in at all:
            // trying again would not help.
            ByeReason::Replaced | ByeReason::UnknownClient => self.exit(Outcome::Closed(why)),
            ByeReason::AuthFailed => self.exit(Outcome::Closed(format!(
                "{why} (give this id's secret with --secret-file PATH or HERALD_SECRET)"
            ))),
        }
    }

    /// Forgets the oldest unconfirmed line (confirmed, or refused for good).
    fn drop_front(&mut self) {
        if let Some(line) = self.unconfirmed.pop_front() {
            self.unconfirmed_bytes -= line.text.len();
        }
    }

    fn ack(&mut self, out: &mut Vec<Action>) {
        self.ack_due = None;
        if self.received > self.acked {
            out.push(Action::Send(ClientFrame::Ack { seq: self.received }));
            self.acked = self.received;
        }
    }

    fn quit(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.ack(&mut out);
        out.push(Action::Send(ClientFrame::Quit));
        self.phase = Phase::Quitting {
            deadline: now + QUIT_GRACE,
        };
        self.next_ping = None;
        out
    }

    /// A connection failed before any login worked: try again with backoff
    /// a few times (and each server at least once), then give up with `why`.
    fn before_first_login(&mut self, why: &str) -> Vec<Action> {
        if self.attempt + 1 >= self.first_login_tries() {
            return self.exit(Outcome::Closed(why.to_owned()));
        }
        self.lost(why.to_owned())
    }

    /// This connection is over but the run may go on.
    fn lost(&mut self, why: String) -> Vec<Action> {
        if !self.settings.reconnect {
            return self.exit(Outcome::Closed(why));
        }
        self.retry(why)
    }

    fn retry(&mut self, why: String) -> Vec<Action> {
        self.phase = Phase::Down;
        self.ack_due = None;
        self.next_ping = None;
        let wait = backoff(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        vec![
            note(format!(
                "{why}; reconnecting in about {} ms",
                wait.as_millis()
            )),
            Action::Reconnect(wait),
        ]
    }

    fn exit(&mut self, outcome: Outcome) -> Vec<Action> {
        self.phase = Phase::Done;
        let mut out = Vec::new();
        if !self.unconfirmed.is_empty() {
            out.push(note(format!(
                "{} line(s) were not confirmed by the server and may not have been stored",
                self.unconfirmed.len()
            )));
        }
        out.push(Action::Exit(outcome));
        out
    }
}

/// The delay before reconnection attempt `n` (0-based), before jitter:
/// doubling from 100 ms up to 5 s.
pub fn backoff(n: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(1u32 << n.min(16))
        .min(BACKOFF_MAX)
}

fn note(s: impl Into<String>) -> Action {
    Action::Note(s.into())
}

#[cfg(test)]
mod tests;
