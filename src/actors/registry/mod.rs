//! The registry: the one actor that knows every client id, who is online,
//! what each has acknowledged, and the message log.
//!
//! Messages flow one way: a session's `SEND` becomes a [`Publish`]; the
//! registry numbers a batch of them, appends the batch to the store in one
//! go (group commit), and only when the store says it is stored does it
//! answer `SENT` and push the messages to online sessions.
//!
//! Every online session has a cursor (the last seq it was considered for)
//! and a credit (how many frame bytes it may still have in flight). Live
//! fan-out, backlog replay after login and catch-up of a slow reader are one
//! mechanism, [`Registry::pump`]: while a session has credit and its cursor
//! is behind the head, send it the next messages, from the in-memory tail
//! when they are still there, from the store otherwise. A reader that stops
//! reading runs out of credit and simply stops being pushed to; the log is
//! its buffer.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::dedupe::MidWindow;
use super::messages::{Ack, Credit, Disconnect, Login, Publish, SessionId, Shutdown, ToSession};
pub use super::retention::Retain;
use super::retention::{PruneBounds, Pruning};
use super::tail::Tail;
use super::throttle::{Origin, Ready, Throttle, MAX_IN_PROGRESS_PER_ORIGIN};
use crate::auth::{Secrets, Verifier, Verify, VERIFIER_THREADS};
use crate::net::{ByeReason, ErrorCode, FrameError};
use crate::store::{
    Append, CountFromOthers, ForgetMids, MidRecord, ReadAfter, Recovered, SaveAcks, StoreActor,
    StoreError,
};
use crate::types::{unix_ms_now, ClientId, Message, Seq};

/// Tunables of the registry; the defaults suit a small machine.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// A session's delivery credit: frame bytes it may be pushed beyond
    /// what it has handed back as written. A store read may run one more
    /// window ahead, so at most twice this plus one frame is unwritten.
    pub session_window_bytes: usize,
    /// Most messages kept in the in-memory tail.
    pub tail_messages: usize,
    /// Most frame bytes kept in the in-memory tail.
    pub tail_bytes: usize,
    /// Most messages in one store append…
    pub max_batch: usize,
    /// …and most text bytes (but at least one message).
    pub max_batch_bytes: usize,
    /// Most messages read from the store at a time for one session (the
    /// bytes read are bounded by the session's credit plus one window).
    pub read_chunk: usize,
    /// Most messages in one push to a session.
    pub max_deliver: usize,
    /// How often changed `last_ack`s are saved.
    pub ack_flush_interval: Duration,
    /// How long a shutdown waits for sessions to close.
    pub shutdown_grace: Duration,
    /// Which acknowledged messages to keep.
    pub retain: Retain,
    /// Message ids remembered per client id, at least…
    pub dedupe_keep: usize,
    /// …and every one from this long ago.
    pub dedupe_window: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            session_window_bytes: 256 * 1024,
            tail_messages: 100_000,
            tail_bytes: 16 * 1024 * 1024,
            max_batch: 4096,
            max_batch_bytes: 8 * 1024 * 1024,
            read_chunk: 4096,
            max_deliver: 1024,
            ack_flush_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(3),
            retain: Retain::All,
            dedupe_keep: 10_000,
            dedupe_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// What the registry keeps about one allowed client id.
#[derive(Debug, Default)]
struct User {
    last_ack: Seq,
    online: Option<SessionId>,
}

/// An online (logged-in) session as the registry sees it.
struct Online {
    id: ClientId,
    to: Recipient<ToSession>,
    /// Highest seq this session was pushed or skipped past.
    cursor: Seq,
    /// Frame bytes it may still be pushed (may dip below zero by one push).
    credit: i64,
    /// `WELCOME` sent: pushing may start.
    welcomed: bool,
    /// A store read for it is under way.
    reading: bool,
}

/// A `SEND` waiting for the next append.
struct PendingSend {
    session: SessionId,
    from: ClientId,
    text: Bytes,
    unix_ms: u64,
    /// The client's message id, if it sent one.
    mid: Option<String>,
    /// A resend of a mid stored (or being stored) already: answered with
    /// the first copy's seq, not stored again.
    dup: bool,
    /// For a resend of a remembered mid: its first copy's seq, taken when
    /// it was queued (newer mids may push it out of the window meanwhile).
    first: Option<Seq>,
}

/// Pushes `s` the messages after its cursor that the tail holds, while it
/// has credit, in pushes of at most `max_deliver`. Returns whether it is
/// still behind and the next messages are only in the store.
fn push_from_tail(tail: &Tail, head: Seq, max_deliver: usize, s: &mut Online) -> bool {
    while s.welcomed && !s.reading && s.cursor < head {
        if !tail.covers_after(s.cursor, head) {
            return true;
        }
        if s.credit <= 0 {
            return false;
        }
        let mut batch = Vec::with_capacity(((head.0 - s.cursor.0) as usize).min(max_deliver));
        let mut bytes = 0i64;
        let mut last = s.cursor;
        for m in tail.after(s.cursor) {
            if batch.len() >= max_deliver || bytes >= s.credit {
                break;
            }
            last = m.seq();
            if m.from() != &s.id {
                bytes += m.frame().len() as i64;
                batch.push(m.clone());
            }
        }
        s.cursor = last;
        if !batch.is_empty() {
            s.credit -= bytes;
            s.to.do_send(ToSession::Deliver(batch));
        }
    }
    false
}

/// Refuses a login because the server is stopping; the client may retry
/// (on another node, or once it is back).
fn refuse_during_shutdown(to: &Recipient<ToSession>) {
    to.do_send(ToSession::LoginRefused(
        FrameError::new(ErrorCode::Limit, "server is shutting down"),
        ByeReason::Shutdown,
    ));
}

/// Secrets checking: the hashes, the verifier threads, and the throttle
/// that decides when each login's secret is checked, against guessing.
struct Auth {
    secrets: Secrets,
    verifier: Addr<Verifier>,
    throttle: Throttle<Attempt>,
    /// The timer that starts the check whose wait ends first, and when.
    wake: Option<(Instant, SpawnHandle)>,
}

/// A login whose secret waits to be checked.
struct Attempt {
    to: Recipient<ToSession>,
    secret: Option<String>,
    /// The peer, for logs.
    peer: String,
}

/// How often forgotten login failures are swept from memory.
const FAILURE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The registry actor. Start it on an arbiter of its own.
pub struct Registry {
    config: RegistryConfig,
    store: Addr<StoreActor>,
    users: HashMap<ClientId, User>,
    sessions: HashMap<SessionId, Online>,
    /// Highest stored (confirmed) seq.
    head: Seq,
    tail: Tail,
    pending: Vec<PendingSend>,
    /// Recent message ids per client id (see [`MidWindow`]).
    mids: HashMap<ClientId, MidWindow>,
    /// Message ids queued or being stored, not yet in `mids`.
    inflight_mids: HashSet<(ClientId, String)>,
    /// An append is in flight.
    committing: bool,
    /// Client ids whose `last_ack` changed since the last save.
    dirty_acks: HashSet<ClientId>,
    shutting_down: bool,
    /// Secrets checking, when the server has a secrets file.
    auth: Option<Auth>,
    /// Sessions whose secret is being checked, with the `SEND`s they
    /// pipelined behind their `LOGIN` (handled once they are admitted).
    authenticating: HashMap<SessionId, Vec<Publish>>,
    /// How far the store is pruned.
    pruning: Pruning,
    /// Woken when no append is in flight and nothing is pending.
    idle_waiters: Vec<oneshot::Sender<()>>,
    /// Woken when the last session is gone.
    empty_waiters: Vec<oneshot::Sender<()>>,
}

impl Registry {
    /// A registry for the allowed ids, continuing from what the store holds.
    pub fn new(
        config: RegistryConfig,
        allowed: impl IntoIterator<Item = ClientId>,
        recovered: Recovered,
        store: Addr<StoreActor>,
    ) -> Registry {
        let users = allowed
            .into_iter()
            .map(|id| {
                let last_ack = recovered.acks.get(&id).copied().unwrap_or(Seq::ZERO);
                (
                    id,
                    User {
                        last_ack,
                        online: None,
                    },
                )
            })
            .collect();
        let now = unix_ms_now();
        let mut mids: HashMap<ClientId, MidWindow> = HashMap::new();
        for r in recovered.mids {
            mids.entry(r.client).or_default().insert(
                r.mid,
                r.seq,
                r.unix_ms,
                config.dedupe_keep,
                config.dedupe_window.as_millis() as u64,
                now,
            );
        }
        Registry {
            mids,
            config,
            store,
            users,
            sessions: HashMap::new(),
            head: recovered.head,
            tail: Tail::default(),
            pending: Vec::new(),
            inflight_mids: HashSet::new(),
            committing: false,
            dirty_acks: HashSet::new(),
            shutting_down: false,
            auth: None,
            authenticating: HashMap::new(),
            pruning: Pruning::default(),
            idle_waiters: Vec::new(),
            empty_waiters: Vec::new(),
        }
    }

    /// Checks every `LOGIN`'s secret against `secrets` (on `verifier`'s
    /// [`VERIFIER_THREADS`] threads, throttled) before admitting it.
    pub fn with_secrets(mut self, secrets: Secrets, verifier: Addr<Verifier>) -> Registry {
        self.auth = Some(Auth {
            secrets,
            verifier,
            throttle: Throttle::new(VERIFIER_THREADS),
            wake: None,
        });
        self
    }

    /// Sends the next batch of pending `SEND`s to the store, if none is in
    /// flight. Seqs are given here, so a failed append gives them back.
    fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        if self.pending.is_empty() {
            for w in self.idle_waiters.drain(..) {
                let _ = w.send(());
            }
            return;
        }
        let mut take = 0;
        let mut bytes = 0;
        for p in self.pending.iter().take(self.config.max_batch) {
            bytes += p.text.len();
            if take > 0 && bytes > self.config.max_batch_bytes {
                break;
            }
            take += 1;
        }
        let batch: Vec<PendingSend> = self.pending.drain(..take).collect();
        let mut seq = self.head;
        let mut mids = Vec::new();
        let messages: Vec<Message> = batch
            .iter()
            .filter(|p| !p.dup)
            .map(|p| {
                seq = seq.next();
                if let Some(mid) = &p.mid {
                    mids.push(MidRecord {
                        client: p.from.clone(),
                        mid: mid.clone(),
                        seq,
                        unix_ms: p.unix_ms,
                    });
                }
                Message::new(seq, p.unix_ms, p.from.clone(), &p.text)
            })
            .collect();
        if messages.is_empty() {
            // Only resends: nothing to store, answer them now.
            self.on_committed(batch, Vec::new(), ctx);
            self.commit(ctx);
            return;
        }
        self.committing = true;
        self.store
            .send(Append { messages, mids })
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.committing = false;
                let res = res.unwrap_or_else(|e| {
                    Err(StoreError::Engine(format!("store actor unreachable: {e}")))
                });
                match res {
                    Ok(stored) => act.on_committed(batch, stored, ctx),
                    Err(e) => act.on_commit_failed(batch, e),
                }
                act.commit(ctx);
            })
            .spawn(ctx);
    }

    fn on_committed(
        &mut self,
        batch: Vec<PendingSend>,
        stored: Vec<Message>,
        ctx: &mut Context<Self>,
    ) {
        let now = unix_ms_now();
        let keep = self.config.dedupe_keep;
        let max_age = self.config.dedupe_window.as_millis() as u64;
        let mut seqs = stored.iter().map(Message::seq);
        // Each answer in the order of the SENDs, per session.
        let mut answers: Vec<(SessionId, Result<Seq, FrameError>)> =
            Vec::with_capacity(batch.len());
        for p in batch {
            let answer = if p.dup {
                let first = p.first.or_else(|| {
                    p.mid
                        .as_deref()
                        .and_then(|mid| self.mids.get(&p.from)?.get(mid))
                });
                first.ok_or_else(|| {
                    FrameError::new(
                        ErrorCode::Limit,
                        "a resend of a message that is no longer remembered",
                    )
                })
            } else {
                let Some(seq) = seqs.next() else {
                    log::error!("the store gave back fewer messages than it was given");
                    continue;
                };
                if let Some(mid) = p.mid {
                    self.inflight_mids.remove(&(p.from.clone(), mid.clone()));
                    self.mids
                        .entry(p.from.clone())
                        .or_default()
                        .insert(mid, seq, p.unix_ms, keep, max_age, now);
                }
                Ok(seq)
            };
            answers.push((p.session, answer));
        }
        self.send_answers(answers);
        for m in stored {
            self.head = m.seq();
            self.tail
                .push(m, self.config.tail_messages, self.config.tail_bytes);
        }
        self.pump_all(ctx);
    }

    /// Sends each session its answers in order, consecutive `SENT`s in one
    /// message.
    fn send_answers(&self, answers: Vec<(SessionId, Result<Seq, FrameError>)>) {
        let mut per_session: Vec<(SessionId, Vec<ToSession>)> = Vec::new();
        for (sid, answer) in answers {
            let msgs = match per_session.iter_mut().find(|(s, _)| *s == sid) {
                Some((_, msgs)) => msgs,
                None => {
                    per_session.push((sid, Vec::new()));
                    match per_session.last_mut() {
                        Some((_, msgs)) => msgs,
                        None => continue,
                    }
                }
            };
            match (answer, msgs.last_mut()) {
                (Ok(seq), Some(ToSession::Sent(seqs))) => seqs.push(seq),
                (Ok(seq), _) => msgs.push(ToSession::Sent(vec![seq])),
                (Err(e), _) => msgs.push(ToSession::SendRefused(e)),
            }
        }
        for (sid, msgs) in per_session {
            if let Some(s) = self.sessions.get(&sid) {
                for m in msgs {
                    s.to.do_send(m);
                }
            }
        }
    }

    fn on_commit_failed(&mut self, batch: Vec<PendingSend>, e: StoreError) {
        log::error!(
            "storing {} message(s) failed, refusing them: {e}",
            batch.len()
        );
        let reason = format!("message not stored: {e}");
        let mut answers = Vec::with_capacity(batch.len());
        for p in batch {
            if let (false, Some(mid)) = (p.dup, &p.mid) {
                let key = (p.from.clone(), mid.clone());
                self.inflight_mids.remove(&key);
                // A resend of it waiting for the next batch is now the copy
                // to store.
                if let Some(next) = self
                    .pending
                    .iter_mut()
                    .find(|q| q.dup && q.from == p.from && q.mid.as_ref() == Some(mid))
                {
                    next.dup = false;
                    self.inflight_mids.insert(key);
                }
            }
            answers.push((
                p.session,
                Err(FrameError::new(ErrorCode::Limit, reason.clone())),
            ));
        }
        self.send_answers(answers);
    }

    /// Pumps every session after new messages were stored. Sessions served
    /// from the tail are handled in one pass; only those that fell behind
    /// it go through [`Registry::pump`] to start a store read.
    fn pump_all(&mut self, ctx: &mut Context<Self>) {
        let mut behind = Vec::new();
        for (sid, s) in self.sessions.iter_mut() {
            if push_from_tail(&self.tail, self.head, self.config.max_deliver, s) {
                behind.push(*sid);
            }
        }
        for sid in behind {
            self.pump(sid, ctx);
        }
    }

    /// Pushes a session as far as its credit allows; see the module docs.
    fn pump(&mut self, sid: SessionId, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !push_from_tail(&self.tail, self.head, self.config.max_deliver, s) {
            return;
        }
        // Behind the tail: read the next chunk from the store, while the
        // session has credit left. A read asks for the credit plus one window
        // of frame bytes, so it runs up to a window ahead of the socket (the
        // disk and the socket work at the same time while a reader catches
        // up), and a session never has more than two windows plus one frame
        // pushed and not yet written.
        if s.credit <= 0 {
            return;
        }
        s.reading = true;
        let upto = self.tail.first_seq().map_or(self.head, |f| Seq(f.0 - 1));
        let read = ReadAfter {
            after: s.cursor,
            upto,
            max: self.config.read_chunk,
            max_bytes: s.credit as usize + self.config.session_window_bytes,
        };
        self.store
            .send(read)
            .into_actor(self)
            .map(move |res, act, ctx| act.on_read(sid, upto, res, ctx))
            .spawn(ctx);
    }

    fn on_read(
        &mut self,
        sid: SessionId,
        upto: Seq,
        res: Result<Result<Vec<Message>, StoreError>, MailboxError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.reading = false;
        match res {
            Ok(Ok(messages)) => {
                let last = messages.last().map_or(upto, Message::seq);
                let batch: Vec<Message> =
                    messages.into_iter().filter(|m| m.from() != &s.id).collect();
                s.credit -= batch.iter().map(|m| m.frame().len() as i64).sum::<i64>();
                s.cursor = last;
                if !batch.is_empty() {
                    s.to.do_send(ToSession::Deliver(batch));
                }
                self.pump(sid, ctx);
            }
            Ok(Err(e)) => {
                log::error!(
                    "reading the log for {} failed: {e}; closing its session",
                    s.id
                );
                s.to.do_send(ToSession::Bye(ByeReason::Limit));
            }
            Err(e) => {
                log::error!("store unreachable while reading for {}: {e}", s.id);
                s.to.do_send(ToSession::Bye(ByeReason::Shutdown));
            }
        }
    }

    fn welcome(&mut self, sid: SessionId, pending: u64, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.welcomed = true;
        s.to.do_send(ToSession::Welcome {
            id: s.id.clone(),
            pending,
            window: self.config.session_window_bytes,
        });
        self.pump(sid, ctx);
    }

    /// Saves changed `last_ack`s; once they are stored, prunes what
    /// `--retain` lets go.
    fn save_acks(&mut self, ctx: &mut Context<Self>) {
        if self.dirty_acks.is_empty() {
            return;
        }
        let acks: Vec<(ClientId, Seq)> = self
            .dirty_acks
            .drain()
            .filter_map(|id| self.users.get(&id).map(|u| (id, u.last_ack)))
            .collect();
        self.store
            .send(SaveAcks(acks))
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(Ok(())) => act.prune(ctx),
                Ok(Err(e)) => {
                    log::warn!("saving acknowledgements failed (they will be redelivered): {e}")
                }
                Err(e) => log::warn!("store unreachable while saving acknowledgements: {e}"),
            })
            .spawn(ctx);
    }

    /// Deletes messages every allowed id has handled (acknowledged, or sent
    /// itself), keeping the newest `Retain::Newest(n)`; see
    /// [`super::retention`].
    fn prune(&mut self, ctx: &mut Context<Self>) {
        let Retain::Newest(keep) = self.config.retain else {
            return;
        };
        if self.pruning.busy {
            return;
        }
        let limit = Seq(self.head.0.saturating_sub(keep));
        let acks = self.users.iter().map(|(id, u)| (id, u.last_ack));
        let Some(b) = PruneBounds::of(acks, limit) else {
            return;
        };
        let Some(prune) = self.pruning.next(&b, limit) else {
            return;
        };
        self.pruning.busy = true;
        self.store
            .send(prune)
            .into_actor(self)
            .map(move |res, act, _| {
                act.pruning.busy = false;
                match res {
                    Ok(Ok(done)) => act.pruning.done(&b, limit, done),
                    Ok(Err(e)) => log::warn!("pruning up to seq {} failed: {e}", b.upto),
                    Err(e) => log::warn!("store unreachable while pruning: {e}"),
                }
            })
            .spawn(ctx);
    }

    /// Lets mids older than the dedupe window go (beyond each id's newest
    /// `dedupe_keep`) and tells the store, per client id whose oldest
    /// remembered mid moved on, below which seq it may forget them.
    fn forget_mids(&mut self) {
        let keep = self.config.dedupe_keep;
        let max_age = self.config.dedupe_window.as_millis() as u64;
        let now = unix_ms_now();
        let cutoffs: Vec<(ClientId, Seq)> = self
            .mids
            .iter_mut()
            .filter_map(|(id, w)| {
                w.expire(keep, max_age, now);
                w.cutoff_changed().map(|seq| (id.clone(), seq))
            })
            .collect();
        if !cutoffs.is_empty() {
            self.store.do_send(ForgetMids(cutoffs));
        }
    }

    fn remove_session(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.remove(&sid) {
            if let Some(u) = self.users.get_mut(&s.id) {
                if u.online == Some(sid) {
                    u.online = None;
                }
            }
        }
        if self.sessions.is_empty() {
            for w in self.empty_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.config.ack_flush_interval;
        ctx.run_interval(every, |act, ctx| act.save_acks(ctx));
        // Every minute: mids age out, the store forgets those the registry
        // no longer remembers, and pruning is retried (and what holds it
        // back reported).
        ctx.run_interval(Duration::from_secs(60), |act, ctx| {
            act.forget_mids();
            act.prune(ctx);
        });
        ctx.run_interval(FAILURE_SWEEP_INTERVAL, |act, _| {
            if let Some(auth) = act.auth.as_mut() {
                auth.throttle.sweep(Instant::now());
            }
        });
    }
}

impl Handler<Login> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Login, ctx: &mut Self::Context) {
        let Login {
            session: sid,
            id,
            to,
            peer,
            secret,
        } = msg;
        let origin = Origin::of(peer.map(|p| p.ip()));
        let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
        if self.shutting_down {
            refuse_during_shutdown(&to);
            return;
        }
        let Some(auth) = self.auth.as_mut() else {
            self.admit(sid, id, to, &peer, ctx);
            return;
        };
        let attempt = Attempt { to, secret, peer };
        match auth.throttle.request(sid, origin, id.clone(), attempt) {
            Ok(()) => {
                self.authenticating.insert(sid, Vec::new());
                self.start_checks(ctx);
            }
            Err(attempt) => {
                log::warn!(
                    "refused login as {id} from {}: {MAX_IN_PROGRESS_PER_ORIGIN} logins already in progress from its address",
                    attempt.peer
                );
                attempt.to.do_send(ToSession::LoginRefused(
                    FrameError::new(
                        ErrorCode::Limit,
                        "too many logins in progress from your address",
                    ),
                    ByeReason::Limit,
                ));
            }
        }
    }
}

impl Registry {
    /// Hands the verifier threads every check the throttle lets start now,
    /// and sets a timer for the wait that ends first.
    fn start_checks(&mut self, ctx: &mut Context<Self>) {
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut started = Vec::new();
        while let Some(mut ready) = auth.throttle.next(now) {
            let hash = self
                .users
                .contains_key(&ready.id)
                .then(|| auth.secrets.hash(&ready.id).map(str::to_owned))
                .flatten();
            log::debug!(
                "checking the secret of {} from {}",
                ready.id,
                ready.item.peer
            );
            let check = auth.verifier.send(Verify {
                secret: ready.item.secret.take(),
                hash,
            });
            started.push((ready, check));
        }
        if let Some(at) = auth.throttle.wake_at(now) {
            if auth.wake.as_ref().is_none_or(|(t, _)| at < *t) {
                if let Some((_, old)) = auth.wake.take() {
                    ctx.cancel_future(old);
                }
                let timer = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
                    if let Some(auth) = act.auth.as_mut() {
                        auth.wake = None;
                    }
                    act.start_checks(ctx);
                });
                auth.wake = Some((at, timer));
            }
        }
        for (ready, check) in started {
            let Ready { session, id, item } = ready;
            check
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let ok = res.unwrap_or_else(|e| {
                        log::error!("secret verifier unreachable: {e}");
                        false
                    });
                    act.on_verified(ok, session, id, item, ctx);
                })
                .spawn(ctx);
        }
    }

    /// A secret was checked: admit the session, or refuse it once the wait
    /// its failure earned is over (see [`Throttle`]). The outcome counts even
    /// if the connection closed meanwhile.
    fn on_verified(
        &mut self,
        ok: bool,
        sid: SessionId,
        id: ClientId,
        attempt: Attempt,
        ctx: &mut Context<Self>,
    ) {
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        let verdict = auth.throttle.finished(sid, ok, Instant::now());
        // `None`: it disconnected while its secret was being checked.
        let queued = self.authenticating.remove(&sid);
        self.start_checks(ctx);
        let Attempt { to, peer, .. } = attempt;
        if ok {
            match queued {
                Some(queued) => {
                    self.admit(sid, id, to, &peer, ctx);
                    for p in queued {
                        self.publish(p, ctx);
                    }
                }
                None => log::info!("right secret for {id} from {peer}, but it had disconnected"),
            }
            return;
        }
        let n = verdict.failures;
        let gone = if queued.is_some() {
            ""
        } else {
            "; it had disconnected"
        };
        let refusal = if self.users.contains_key(&id) {
            log::warn!(
                "failed login as {id} from {peer}: wrong or missing secret ({n} in a row{gone})"
            );
            ToSession::LoginRefused(
                FrameError::new(ErrorCode::AuthFailed, "wrong or missing secret"),
                ByeReason::AuthFailed,
            )
        } else {
            log::warn!("failed login as unknown client id {id} from {peer} ({n} in a row{gone})");
            ToSession::LoginRefused(
                FrameError::new(
                    ErrorCode::UnknownClient,
                    format!("client id {id} is not allowed"),
                ),
                ByeReason::UnknownClient,
            )
        };
        if queued.is_some() {
            ctx.run_later(verdict.delay, move |_, _| to.do_send(refusal));
        }
    }

    /// Queues a logged-in session's `SEND` for the next commit.
    fn publish(&mut self, msg: Publish, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get(&msg.session) else {
            // A session whose login was refused or replaced; it is closing.
            return;
        };
        if self.shutting_down {
            // Refusing it would make the client drop a line it could store
            // after a reconnect; left unanswered, the session's `BYE
            // shutdown` tells the client to resend it.
            return;
        }
        let from = s.id.clone();
        let mid = msg.tags.mid;
        let first = mid.as_deref().and_then(|m| self.mids.get(&from)?.get(m));
        let dup = first.is_some()
            || mid
                .as_ref()
                .is_some_and(|m| self.inflight_mids.contains(&(from.clone(), m.clone())));
        if let (false, Some(m)) = (dup, &mid) {
            self.inflight_mids.insert((from.clone(), m.clone()));
        }
        self.pending.push(PendingSend {
            session: msg.session,
            from,
            text: msg.text,
            unix_ms: unix_ms_now(),
            mid,
            dup,
            first,
        });
        self.commit(ctx);
    }

    /// Logs a session in as `id` if `id` is allowed: takes it over from an
    /// older session, counts its backlog and welcomes it.
    fn admit(
        &mut self,
        sid: SessionId,
        id: ClientId,
        to: Recipient<ToSession>,
        peer: &str,
        ctx: &mut Context<Self>,
    ) {
        // Every login passes here, also one whose secret was checked while
        // the shutdown began: it would never be told `BYE shutdown`.
        if self.shutting_down {
            refuse_during_shutdown(&to);
            return;
        }
        let Some(user) = self.users.get_mut(&id) else {
            log::info!("refused login of unknown client id {id} from {peer}");
            to.do_send(ToSession::LoginRefused(
                FrameError::new(
                    ErrorCode::UnknownClient,
                    format!("client id {id} is not allowed"),
                ),
                ByeReason::UnknownClient,
            ));
            return;
        };
        let last_ack = user.last_ack;
        let previous = user.online.replace(sid);
        if let Some(old) = previous.and_then(|old| self.sessions.remove(&old)) {
            log::info!("client {id} logged in again from {peer}; replacing its older connection");
            old.to.do_send(ToSession::Bye(ByeReason::Replaced));
        }
        log::info!("client {id} logged in from {peer} (last ack {last_ack})");
        self.sessions.insert(
            sid,
            Online {
                id: id.clone(),
                to,
                cursor: last_ack,
                credit: self.config.session_window_bytes as i64,
                welcomed: false,
                reading: false,
            },
        );
        if self.tail.covers_after(last_ack, self.head) {
            let pending = self
                .tail
                .after(last_ack)
                .filter(|m| m.from() != &id)
                .count() as u64;
            self.welcome(sid, pending, ctx);
            return;
        }
        let count = CountFromOthers {
            after: last_ack,
            upto: self.head,
            reader: id,
        };
        self.store
            .send(count)
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(Ok(pending)) => act.welcome(sid, pending, ctx),
                Ok(Err(e)) => {
                    log::error!("counting a backlog failed: {e}");
                    if let Some(s) = act.sessions.get(&sid) {
                        s.to.do_send(ToSession::LoginRefused(
                            FrameError::new(ErrorCode::Limit, format!("cannot read the log: {e}")),
                            ByeReason::Limit,
                        ));
                    }
                    act.remove_session(sid);
                }
                Err(e) => log::error!("store unreachable during login: {e}"),
            })
            .spawn(ctx);
    }
}

impl Handler<Publish> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        if let Some(queued) = self.authenticating.get_mut(&msg.session) {
            // Its LOGIN is still being checked.
            queued.push(msg);
            return;
        }
        self.publish(msg, ctx);
    }
}

impl Handler<Ack> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Ack, _: &mut Self::Context) {
        if let Some(u) = self.users.get_mut(&msg.id) {
            if msg.seq > u.last_ack {
                u.last_ack = msg.seq;
                self.dirty_acks.insert(msg.id);
            }
        }
    }
}

impl Handler<Credit> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Credit, ctx: &mut Self::Context) {
        if let Some(s) = self.sessions.get_mut(&msg.session) {
            s.credit += msg.bytes as i64;
            self.pump(msg.session, ctx);
        }
    }
}

impl Handler<Disconnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Self::Context) {
        if self.authenticating.remove(&msg.session).is_some() {
            // Its secret will not be checked, if that has not begun.
            if let Some(auth) = self.auth.as_mut() {
                auth.throttle.cancel(msg.session);
            }
        }
        if let Some(s) = self.sessions.get(&msg.session) {
            log::info!("client {} disconnected", s.id);
        }
        self.remove_session(msg.session);
    }
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        // Logins still waiting for their secret check are told now; those
        // being checked are refused by `admit` when the check ends.
        if let Some(auth) = self.auth.as_mut() {
            for (sid, attempt) in auth.throttle.drain_waiting() {
                self.authenticating.remove(&sid);
                refuse_during_shutdown(&attempt.to);
            }
        }
        let (idle_tx, idle_rx) = oneshot::channel();
        self.idle_waiters.push(idle_tx);
        self.commit(ctx);
        let grace = self.config.shutdown_grace;
        Box::pin(
            async move {
                let _ = idle_rx.await;
            }
            .into_actor(self)
            .then(move |_, act, _| {
                let (empty_tx, empty_rx) = oneshot::channel();
                if act.sessions.is_empty() {
                    let _ = empty_tx.send(());
                } else {
                    act.empty_waiters.push(empty_tx);
                }
                for s in act.sessions.values() {
                    s.to.do_send(ToSession::Bye(ByeReason::Shutdown));
                }
                async move {
                    let _ = tokio::time::timeout(grace, empty_rx).await;
                }
                .into_actor(act)
            })
            .then(|_, act, ctx| {
                // Sessions acknowledge until they close, so save after that.
                act.save_acks(ctx);
                let flush = act.store.send(crate::store::Flush);
                async move {
                    match flush.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::error!("flushing the store at shutdown failed: {e}"),
                        Err(e) => log::error!("store unreachable at shutdown: {e}"),
                    }
                }
                .into_actor(act)
            }),
        )
    }
}
