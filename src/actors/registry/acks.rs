//! Acknowledgements and retention: `ACK`s move each id's `last_ack`, which
//! are saved every `ack_flush_interval`; once saved, what `--retain` lets
//! go is pruned (see [`crate::actors::retention`]).

use actix::prelude::*;

use super::Registry;
use crate::actors::messages::{Ack, SaveAck};
use crate::actors::retention::{PruneBounds, Retain};
use crate::store::SaveAcks;
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
        let id = msg.id;
        Box::pin(
            self.store
                .send(SaveAcks(vec![(id.clone(), last_ack)]))
                .into_actor(self)
                .map(move |res, act, _| {
                    let failed = match res {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => format!("store unreachable: {e}"),
                    };
                    log::warn!("saving the acknowledgements of {id} failed (retried with the next flush): {failed}");
                    act.dirty_acks.insert(id);
                }),
        )
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
    /// [`crate::actors::retention`].
    pub(super) fn prune(&mut self, ctx: &mut Context<Self>) {
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
}
