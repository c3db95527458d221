//! Group commit: `SEND`s queue up while an append is in flight; the next
//! append takes them all (within bounds), numbers them from the head, and
//! only once the store has them are they answered `SENT` and delivered.
//! A resent message id (`@mid`) is answered with its first copy's seq and
//! not stored again.

use actix::prelude::*;
use bytes::Bytes;

use super::Registry;
use crate::actors::messages::{Publish, PublishBatch, SessionId, ToSession};
use crate::net::{ErrorCode, FrameError, Message};
use crate::store::{Append, Appended, ForgetMids, MidPolicy, NewMessage, StoreError};
use crate::types::{unix_ms_now, ClientId, Seq};

/// How long a commit waits before trying an unavailable store again (the
/// store has a backoff of its own for reconnecting).
const STORE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// A `SEND` waiting for the next append.
pub(super) struct PendingSend {
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

impl Handler<Publish> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        self.accept(msg);
        self.schedule_commit(ctx);
    }
}

impl Handler<PublishBatch> for Registry {
    type Result = ();

    fn handle(&mut self, msg: PublishBatch, ctx: &mut Self::Context) {
        for p in msg.0 {
            self.accept(p);
        }
        self.schedule_commit(ctx);
    }
}

impl Registry {
    /// Queues a `SEND` for the next commit, or behind its session's `LOGIN`
    /// while that is still being checked.
    fn accept(&mut self, msg: Publish) {
        if let Some(queued) = self.authenticating.get_mut(&msg.session) {
            queued.push(msg);
            return;
        }
        self.enqueue(msg);
    }

    /// Queues logged-in sessions' `SEND`s for the next commit.
    pub(super) fn publish_all(&mut self, msgs: Vec<Publish>, ctx: &mut Context<Self>) {
        for msg in msgs {
            self.enqueue(msg);
        }
        self.schedule_commit(ctx);
    }

    /// Starts a commit once the registry has handled every message already
    /// in its mailbox, not on the first `SEND`: what arrives together (one
    /// client's burst, several sessions' reads) shares one commit and one
    /// fsync, while a lone `SEND` waits for no timer. With `max_batch`
    /// waiting it starts at once, so a mailbox that never empties cannot
    /// hold commits back.
    pub(super) fn schedule_commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        if self.pending.len() >= self.config.max_batch {
            return self.commit(ctx);
        }
        if self.commit_scheduled {
            return;
        }
        self.commit_scheduled = true;
        // Spawned futures run after the mailbox is drained (actix polls the
        // mailbox first).
        ctx.spawn(fut::ready(()).map(|(), act: &mut Registry, ctx| {
            act.commit_scheduled = false;
            act.commit(ctx);
        }));
    }

    /// Queues a logged-in session's `SEND` for the next commit.
    fn enqueue(&mut self, msg: Publish) {
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
    }

    /// Sends the next batch of pending `SEND`s to the store, if none is in
    /// flight. Seqs are given here, so a failed append gives them back.
    pub(super) fn commit(&mut self, ctx: &mut Context<Self>) {
        if self.committing {
            return;
        }
        if self.pending.is_empty() {
            self.wake_idle();
            return;
        }
        let batch = self.take_batch();
        let messages: Vec<NewMessage> = batch
            .iter()
            .filter(|p| !p.dup)
            .map(|p| NewMessage {
                from: p.from.clone(),
                unix_ms: p.unix_ms,
                text: p.text.clone(),
                mid: p.mid.clone(),
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
            .send(Append(messages))
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.committing = false;
                let res = res.unwrap_or_else(|e| {
                    Err(StoreError::Engine(format!("store actor unreachable: {e}")))
                });
                match res {
                    Ok(stored) => {
                        if let Some(since) = act.commits_waiting_since.take() {
                            log::info!(
                                "store available again after {:.1} s; the waiting SENDs are being committed",
                                since.elapsed().as_secs_f64()
                            );
                        }
                        act.on_committed(batch, stored, ctx)
                    }
                    Err(StoreError::Unavailable(e)) => {
                        return act.on_store_unavailable(batch, e, ctx)
                    }
                    Err(e) => act.on_commit_failed(batch, e),
                }
                act.commit(ctx);
            })
            .spawn(ctx);
    }

    /// The store could not be reached and stored nothing. The batch is not
    /// refused (a resend would be stored once the store is back, so an
    /// `ERR` would make a client drop a line for nothing): it goes back to
    /// the head of the queue and the commit is tried again after
    /// [`STORE_RETRY`], its `SEND`s unanswered meanwhile (and the senders'
    /// reading paused once their bounds fill). During a stop it is dropped
    /// unanswered instead; the clients resend it after `BYE shutdown`.
    fn on_store_unavailable(
        &mut self,
        batch: Vec<PendingSend>,
        e: String,
        ctx: &mut Context<Self>,
    ) {
        if self.shutting_down {
            log::warn!(
                "store unavailable during the stop ({e}); {} SEND(s) left unanswered for their clients to resend",
                batch.len()
            );
            for p in &batch {
                if let (false, Some(mid)) = (p.dup, &p.mid) {
                    self.inflight_mids.remove(&(p.from.clone(), mid.clone()));
                }
            }
            self.commit(ctx);
            return;
        }
        if self.commits_waiting_since.is_none() {
            // One line until the store is back, not one per retry.
            log::warn!(
                "store unavailable ({e}); {} SEND(s) wait unanswered, trying again every {} ms",
                batch.len(),
                STORE_RETRY.as_millis()
            );
            self.commits_waiting_since = Some(std::time::Instant::now());
        }
        self.pending.splice(0..0, batch);
        self.committing = true;
        ctx.run_later(STORE_RETRY, |act, ctx| {
            act.committing = false;
            act.commit(ctx);
        });
    }

    /// Takes the next batch off the queue: at most `max_batch` `SEND`s and
    /// `max_batch_bytes` of text, but at least one.
    fn take_batch(&mut self) -> Vec<PendingSend> {
        let mut take = 0;
        let mut bytes = 0;
        for p in self.pending.iter().take(self.config.max_batch) {
            bytes += p.text.len();
            if take > 0 && bytes > self.config.max_batch_bytes {
                break;
            }
            take += 1;
        }
        self.pending.drain(..take).collect()
    }

    /// The store numbered and stored the batch's new messages (`appended`,
    /// one per `SEND` not known locally as a resend): answers every `SEND`
    /// of the batch, and feeds what was stored to the commit stream.
    fn on_committed(
        &mut self,
        batch: Vec<PendingSend>,
        appended: Vec<Appended>,
        ctx: &mut Context<Self>,
    ) {
        let now = unix_ms_now();
        let keep = self.config.dedupe_keep;
        let max_age = self.config.dedupe_window.as_millis() as u64;
        let mut stored: Vec<Message> = Vec::with_capacity(appended.len());
        let mut outcomes = appended.into_iter();
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
                // A mid stored before through another node comes back as a
                // duplicate: answered with its first seq, like a local one.
                let seq = match outcomes.next() {
                    Some(Appended::Stored(m)) => {
                        let seq = m.seq();
                        stored.push(m);
                        seq
                    }
                    Some(Appended::Duplicate(first)) => first,
                    None => {
                        log::error!("the store gave back fewer messages than it was given");
                        continue;
                    }
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
        self.on_own_commit(stored, ctx);
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

    /// The append failed: refuses every `SEND` of the batch (none got a
    /// seq), and makes a queued resend of a refused mid the copy to store.
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

    /// Lets mids older than the dedupe window go (beyond each id's newest
    /// `dedupe_keep`) and tells the store, per client id whose oldest
    /// remembered mid moved on, below which seq it may forget them.
    pub(super) fn forget_mids(&mut self) {
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
        // A shared store applies the policy over every node's mids, so it
        // is asked every time; a single-node one only when a cutoff moved.
        if self.shared || !cutoffs.is_empty() {
            self.store.do_send(ForgetMids {
                cutoffs,
                policy: MidPolicy {
                    keep,
                    max_age_ms: max_age,
                    now_ms: now,
                    cap: crate::actors::dedupe::MAX_MIDS_PER_ID.max(keep),
                },
            });
        }
    }
}
