//! Retention limits (`--retain-max-age`, `--retain-max-bytes`): the oldest
//! messages are pruned even if some id never received them; each such id
//! is told in the log, and its loss recorded for `server inspect` (see
//! [`crate::store::limits`]).
//!
//! The store says how far the limits want the log pruned; that is capped
//! at the lowest cursor of the sessions online here (what they were pushed
//! or counted in `WELCOME` is never taken from under them). Before the
//! prune is sent, every id's `last_ack` moves up to its end and the tail
//! forgets the pruned messages, so a login that follows counts and gets
//! only what is kept.

use actix::prelude::*;

use super::Registry;
use crate::store::{LimitCut, LimitPrune, LimitPruned, Limits};
use crate::types::{ClientId, Seq};

/// At most this many messages are deleted by one limit prune; the next
/// prune (after the next ack flush, or the minute's timer) goes on.
const LIMIT_BATCH: u64 = 50_000;

impl Registry {
    /// Whether `--retain-max-age` or `--retain-max-bytes` is set.
    pub(super) fn limits_set(&self) -> bool {
        self.config.retain_max_age.is_some() || self.config.retain_max_bytes.is_some()
    }

    /// Which limits can have pruned a message, for the log.
    fn limits_named(&self) -> &'static str {
        match (self.config.retain_max_age, self.config.retain_max_bytes) {
            (Some(_), Some(_)) => "older than --retain-max-age or beyond --retain-max-bytes",
            (Some(_), None) => "older than --retain-max-age",
            _ => "beyond --retain-max-bytes",
        }
    }

    /// Asks the store how far the limits want the log pruned, then prunes
    /// that far (see the module docs) and goes on with the `--retain` prune.
    pub(super) fn limit_prune(&mut self, ctx: &mut Context<Self>) {
        if let Some((cut, acks)) = self.pruning.retry.take() {
            self.pruning.busy = true;
            self.send_limit_prune(cut, acks, ctx);
            return;
        }
        let floor = self.sessions.values().map(|s| s.cursor).min();
        let limits = Limits {
            upto: floor.unwrap_or(Seq(u64::MAX)),
            max_age_ms: self.config.retain_max_age.map(|d| d.as_millis() as u64),
            max_bytes: self.config.retain_max_bytes,
            now_ms: crate::types::unix_ms_now(),
            batch: LIMIT_BATCH,
        };
        self.pruning.busy = true;
        self.store
            .send(LimitCut(limits))
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(Ok(cut)) => act.prune_upto(cut, ctx),
                Ok(Err(e)) => act.limit_failed(format!("measuring the log failed: {e}")),
                Err(e) => act.limit_failed(format!("store unreachable: {e}")),
            })
            .spawn(ctx);
    }

    /// Prunes up to `cut`, capped at what online sessions still wait for.
    fn prune_upto(&mut self, cut: Seq, ctx: &mut Context<Self>) {
        let floor = self.sessions.values().map(|s| s.cursor).min();
        let cut = floor.map_or(cut, |f| cut.min(f));
        if cut <= self.pruning.pruned() {
            self.pruning.busy = false;
            self.ack_prune(ctx);
            return;
        }
        let acks: Vec<(ClientId, Seq)> = self
            .users
            .iter()
            .map(|(id, u)| (id.clone(), u.last_ack))
            .collect();
        for u in self.users.values_mut() {
            u.last_ack = u.last_ack.max(cut);
        }
        self.tail.drop_upto(cut);
        self.send_limit_prune(cut, acks, ctx);
    }

    /// Sends the prune; one that fails is kept to be tried again as it
    /// was (the store's prune is idempotent).
    fn send_limit_prune(&mut self, cut: Seq, acks: Vec<(ClientId, Seq)>, ctx: &mut Context<Self>) {
        let kept = acks.clone();
        self.store
            .send(LimitPrune { upto: cut, acks })
            .into_actor(self)
            .map(move |res, act, ctx| {
                let why = match res {
                    Ok(Ok(done)) => {
                        act.pruning.busy = false;
                        act.limit_pruned(cut, done);
                        act.ack_prune(ctx);
                        return;
                    }
                    Ok(Err(e)) => format!("pruning up to seq {cut} failed: {e}"),
                    Err(e) => format!("store unreachable: {e}"),
                };
                act.pruning.retry = Some((cut, kept));
                act.limit_failed(why);
            })
            .spawn(ctx);
    }

    /// Logs, once per id, what it lost, and notes the prune.
    fn limit_pruned(&mut self, cut: Seq, done: LimitPruned) {
        for u in self.users.values_mut() {
            u.saved_ack = u.saved_ack.max(cut);
        }
        self.pruning.advance(cut);
        let why = self.limits_named();
        for l in &done.losses {
            log::warn!(
                "retention: client {} will not get {} message(s) in seqs {}..={}: {why}",
                l.client,
                l.lost,
                l.after.next(),
                l.upto
            );
        }
        log::debug!("pruned {} message(s) up to seq {cut} ({why})", done.deleted);
    }

    /// A limit prune failed: it is tried again with the next prune.
    fn limit_failed(&mut self, why: String) {
        self.pruning.busy = false;
        match why.contains("unavailable") {
            true => log::debug!("retention limits must wait: {why}"),
            false => log::warn!("retention limits: {why}"),
        }
    }
}
