//! Acknowledgements and retention: `ACK`s move each id's `last_ack`, which
//! are saved every `ack_flush_interval`; once saved, what `--retain` lets
//! go is pruned (see [`crate::actors::retention`]).

use actix::prelude::*;

use super::Registry;
use crate::actors::messages::{Ack, SaveAck};
use crate::actors::retention::{PruneBounds, Retain};
use crate::store::{SaveAcks, StoreError};
use crate::types::{ClientId, Seq};

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

impl Handler<SaveAck> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: SaveAck, _: &mut Self::Context) -> Self::Result {
        let last_ack = self.users.get(&msg.id).map(|u| u.last_ack);
        let Some(last_ack) = last_ack.filter(|_| self.dirty_acks.remove(&msg.id)) else {
            // Nothing new to save.
            return Box::pin(fut::ready(()));
        };
        Box::pin(self.store_acks(vec![(msg.id, last_ack)]).map(|_, _, _| ()))
    }
}

impl Registry {
    /// Saves changed `last_ack`s; once they are stored, prunes what
    /// `--retain` lets go.
    pub(super) fn save_acks(&mut self, ctx: &mut Context<Self>) {
        if self.dirty_acks.is_empty() {
            return;
        }
        let acks: Vec<(ClientId, Seq)> = self
            .dirty_acks
            .drain()
            .filter_map(|id| self.users.get(&id).map(|u| (id, u.last_ack)))
            .collect();
        self.store_acks(acks)
            .map(|saved, act, ctx| {
                if saved {
                    act.prune(ctx);
                }
            })
            .spawn(ctx);
    }

    /// Stores `acks`; says whether it worked. What is stored becomes each
    /// id's `saved_ack`; what failed is saved again with the next flush
    /// (an ack lost for good would only mean redelivery, but there is no
    /// need to lose it).
    fn store_acks(
        &mut self,
        acks: Vec<(ClientId, Seq)>,
    ) -> impl ActorFuture<Self, Output = bool> + 'static {
        self.store
            .send(SaveAcks(acks.clone()))
            .into_actor(self)
            .map(move |res, act, _| {
                let failed = match res {
                    Ok(Ok(())) => {
                        for (id, seq) in acks {
                            if let Some(u) = act.users.get_mut(&id) {
                                u.saved_ack = u.saved_ack.max(seq);
                            }
                        }
                        return true;
                    }
                    // An outage is logged once by the commits and reads;
                    // not again every flush.
                    Ok(Err(StoreError::Unavailable(e))) => {
                        log::debug!("saving acknowledgements must wait: {e}");
                        String::new()
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("store unreachable: {e}"),
                };
                if !failed.is_empty() {
                    log::warn!(
                        "saving the acknowledgements of {} client id(s) failed (tried again with the next flush): {failed}",
                        acks.len()
                    );
                }
                act.dirty_acks.extend(acks.into_iter().map(|(id, _)| id));
                false
            })
    }

    /// Deletes messages every allowed id has handled (acknowledged, or sent
    /// itself), keeping the newest `Retain::Newest(n)`; see
    /// [`crate::actors::retention`].
    pub(super) fn prune(&mut self, ctx: &mut Context<Self>) {
        if self.pruning.busy {
            return;
        }
        if self.limits_set() {
            // The limits first; the ack-based prune follows it.
            self.limit_prune(ctx);
            return;
        }
        self.ack_prune(ctx);
    }

    /// The `--retain N` prune: what every allowed id has handled.
    pub(super) fn ack_prune(&mut self, ctx: &mut Context<Self>) {
        let Retain::Newest(keep) = self.config.retain else {
            return;
        };
        if self.pruning.busy {
            return;
        }
        let limit = Seq(self.head.0.saturating_sub(keep));
        let acks = self.users.iter().map(|(id, u)| (id, u.saved_ack));
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
}
