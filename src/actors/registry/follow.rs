//! The commit stream: the registry's `head` moves on only over committed
//! messages with nothing missing below them, and every committed message
//! reaches the tail in seq order, whichever node committed it.
//!
//! The store gives seqs inside the commit and commits in seq order, so a
//! read of "everything after my head" never skips a message. A node's own
//! commits that follow its head go straight into the tail; when another
//! node committed in between, the gap is read from the store first (and the
//! own messages wait in `ahead`). In a cluster the registry also reads after
//! its head on every wake-up from the database and every [`FOLLOW_EVERY`],
//! so a lost wake-up delays delivery by less than that.
//!
//! Takeover across nodes works the same way: a login claims the id's
//! session in the store under a new epoch; a node that holds the id under
//! an older epoch learns it from a wake-up, or from the same periodic check,
//! and ends its session with `BYE replaced`.

use std::time::Duration;

use actix::prelude::*;

use super::Registry;
use crate::actors::messages::{SessionId, ToSession};
use crate::net::{ByeReason, Message};
use crate::store::{ReadAfter, SessionEpochs, StoreError, Wake};
use crate::types::{ClientId, Seq};

/// How often a cluster node reads the log after its head and checks its
/// sessions' epochs, wake-ups or not: the bound on how late a lost wake-up
/// makes a delivery or a takeover.
pub(super) const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// The highest seq a store accepts as a bound (PostgreSQL's `bigint`).
const NO_BOUND: Seq = Seq(i64::MAX as u64);

/// Most frame bytes one catch-up read brings into the tail.
const FOLLOW_READ_BYTES: usize = 4 * 1024 * 1024;

impl Handler<Wake> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Self::Context) {
        match msg {
            Wake::Log => self.follow(ctx),
            Wake::Sessions => self.check_sessions(ctx),
            Wake::Reconnected => {
                self.follow(ctx);
                self.check_sessions(ctx);
            }
        }
    }
}

impl Registry {
    /// Starts the periodic catch-up of a cluster node.
    pub(super) fn start_following(&mut self, ctx: &mut Context<Self>) {
        if !self.shared {
            return;
        }
        ctx.run_interval(FOLLOW_EVERY, |act, ctx| {
            act.follow(ctx);
            act.check_sessions(ctx);
        });
    }

    /// This node's append stored `stored` (in seq order): what follows the
    /// head goes into the tail now; behind a gap another node's commits
    /// left, it waits for the read that fills the gap.
    pub(super) fn on_own_commit(&mut self, stored: Vec<Message>, ctx: &mut Context<Self>) {
        for m in stored {
            if m.seq() <= self.head {
                // Read from the store already, by a catch-up.
                continue;
            }
            if self.ahead.is_empty() && m.seq() == self.head.next() {
                self.push_committed(m);
            } else {
                self.ahead.push(m);
            }
        }
        if self.ahead.len() > self.config.tail_messages {
            // The store has them; the catch-up reads them back.
            self.ahead.clear();
            self.follow(ctx);
        }
        if !self.ahead.is_empty() {
            self.follow(ctx);
        }
        self.pump_all(ctx);
    }

    /// Moves the head onto `m`, the next committed message.
    fn push_committed(&mut self, m: Message) {
        if m.seq() != self.head.next() {
            // Pruned messages were skipped: the tail must stay gap-free.
            self.tail.clear();
        }
        self.head = m.seq();
        self.config.metrics.head_seq.set(self.head.0 as i64);
        self.tail
            .push(m, self.config.tail_messages, self.config.tail_bytes);
    }

    /// Reads the committed messages after the head (up to the first own
    /// message waiting in `ahead`), unless a read is under way: then one
    /// more follows it.
    pub(super) fn follow(&mut self, ctx: &mut Context<Self>) {
        if !self.shared && self.ahead.is_empty() {
            return;
        }
        if self.following {
            self.follow_again = true;
            return;
        }
        self.following = true;
        self.follow_again = false;
        let upto = self.ahead.first().map_or(NO_BOUND, |m| Seq(m.seq().0 - 1));
        let max = self.config.read_chunk;
        let read = ReadAfter {
            after: self.head,
            upto,
            max,
            max_bytes: FOLLOW_READ_BYTES,
        };
        self.store
            .send(read)
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.following = false;
                let res = res.unwrap_or_else(|e| {
                    Err(StoreError::Engine(format!("store actor unreachable: {e}")))
                });
                match res {
                    Ok(messages) => {
                        if std::mem::take(&mut act.follow_failing) {
                            log::info!("reading the log again after seq {}", act.head);
                        }
                        // A read stops at `max` messages, or before the
                        // message that would pass the byte bound: one that
                        // brought half the bound may have stopped early.
                        let more = messages.len() >= max
                            || messages.iter().map(|m| m.frame().len()).sum::<usize>()
                                > FOLLOW_READ_BYTES / 2;
                        act.on_followed(messages, upto, more);
                        act.pump_all(ctx);
                        if more || act.follow_again {
                            act.follow(ctx);
                        }
                    }
                    // The periodic catch-up tries again; one line until it
                    // works, not one per try.
                    Err(e) => {
                        if !std::mem::replace(&mut act.follow_failing, true) {
                            log::warn!(
                                "reading the log after seq {} failed: {e}; delivery waits, retrying every {} ms",
                                act.head,
                                FOLLOW_EVERY.as_millis()
                            );
                        }
                    }
                }
            })
            .spawn(ctx);
    }

    /// A catch-up read came back with everything committed after the head
    /// up to `upto` (or the first part of it, when `more`).
    fn on_followed(&mut self, messages: Vec<Message>, upto: Seq, more: bool) {
        let read_nothing = messages.is_empty();
        for m in messages {
            if m.seq() > self.head {
                self.push_committed(m);
            }
        }
        if more {
            return;
        }
        let Some(first) = self.ahead.first().map(Message::seq) else {
            return;
        };
        // An empty read bounded by the first own message waiting saw
        // everything below it (it was committed before that one): what is
        // still missing there was pruned meanwhile. A read that brought
        // something may have stopped at its byte bound, and one that began
        // before the own message was known proves nothing: the next read
        // tells.
        if upto.next() == first && self.head < upto && read_nothing {
            self.head = upto;
            self.config.metrics.head_seq.set(self.head.0 as i64);
            self.tail.clear();
        }
        // The own messages that now follow the head (or are behind it
        // already) leave `ahead`; the rest wait for the next read.
        let mut head = self.head;
        let ready = self
            .ahead
            .iter()
            .take_while(|m| {
                let next = m.seq() <= head.next();
                head = head.max(m.seq());
                next
            })
            .count();
        for m in self.ahead.drain(..ready).collect::<Vec<_>>() {
            if m.seq() > self.head {
                self.push_committed(m);
            }
        }
        if !self.ahead.is_empty() {
            self.follow_again = true;
        }
    }

    /// Asks the store for the session epochs of the ids online here, and
    /// ends the sessions a login on another node took over.
    pub(super) fn check_sessions(&mut self, ctx: &mut Context<Self>) {
        if !self.shared {
            return;
        }
        if self.checking_sessions {
            // A wake-up during a check: the claim may be newer than what
            // the check reads, so one more follows it.
            self.check_sessions_again = true;
            return;
        }
        self.check_sessions_again = false;
        let ids: Vec<ClientId> = self
            .sessions
            .values()
            .filter(|s| s.welcomed)
            .map(|s| s.id.clone())
            .collect();
        if ids.is_empty() {
            return;
        }
        self.checking_sessions = true;
        self.store
            .send(SessionEpochs(ids))
            .into_actor(self)
            .map(|res, act, ctx| {
                act.checking_sessions = false;
                if std::mem::take(&mut act.check_sessions_again) {
                    act.check_sessions(ctx);
                }
                match res {
                    Ok(Ok(epochs)) => act.on_epochs(epochs),
                    // Logged by the read of the log, which fails alike.
                    Ok(Err(e)) => log::debug!("checking session claims failed: {e}"),
                    Err(e) => log::warn!("store unreachable while checking sessions: {e}"),
                }
            })
            .spawn(ctx);
    }

    /// Ends every welcomed session whose id was claimed again, under a
    /// higher epoch, by a login on another node.
    fn on_epochs(&mut self, epochs: Vec<(ClientId, u64)>) {
        for (id, epoch) in epochs {
            let Some(sid) = self.users.get(&id).and_then(|u| u.online) else {
                continue;
            };
            let replaced = self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.welcomed && s.epoch < epoch);
            if replaced {
                self.end_replaced(sid, &id);
            }
        }
    }

    /// Ends a session whose id logged in on another node.
    fn end_replaced(&mut self, sid: SessionId, id: &ClientId) {
        log::info!("client {id} logged in on another node; replacing its connection here");
        if let Some(s) = self.sessions.get(&sid) {
            s.to.do_send(ToSession::Bye(ByeReason::Replaced));
        }
        self.remove_session(sid);
    }
}
