//! Retention limits (`--retain-max-age`, `--retain-max-bytes`): pruning the
//! oldest messages even if some id never received them, and recording, per
//! id, what it lost.
//!
//! A limit prune is two requests. [`LimitCut`] asks the store how far the
//! limits want the log pruned; the registry then caps that at what its
//! online sessions still wait for, moves every id's `last_ack` up to it
//! and sends [`LimitPrune`], which records each id's loss, saves the new
//! acks and deletes the range. Logins that follow see only what is kept.

use actix::{Handler, Message as ActixMessage};

use super::{Store, StoreActor, StoreError};
use crate::types::{ClientId, Seq};

/// What the limits allow to be kept, measured now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Messages stored more than this long ago (by their stored unix ms)
    /// are pruned.
    pub max_age_ms: Option<u64>,
    /// The oldest messages are pruned while the stored text of all of them
    /// is more bytes than this.
    pub max_bytes: Option<u64>,
    /// The time the age is measured at.
    pub now_ms: u64,
    /// At most this many messages past what is pruned already in one
    /// prune, so a huge prune does not stall commits.
    pub batch: u64,
    /// Never cut past this seq (what online sessions still wait for).
    pub upto: Seq,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.max_age_ms.is_some() || self.max_bytes.is_some()
    }

    /// Whether a message stored at `unix_ms` is too old to keep.
    pub fn too_old(&self, unix_ms: u64) -> bool {
        self.max_age_ms
            .is_some_and(|age| unix_ms < self.now_ms.saturating_sub(age))
    }
}

/// What one client id lost to a limit prune: the messages from others in
/// `(after, upto]` that it had not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The id.
    pub client: ClientId,
    /// Its `last_ack` before the prune.
    pub after: Seq,
    /// The prune's end: its new `last_ack`.
    pub upto: Seq,
    /// How many messages from others it lost.
    pub lost: u64,
}

/// Ask how far the limits want the log pruned; see [`Store::limit_cut`].
#[derive(ActixMessage)]
#[rtype(result = "Result<Seq, StoreError>")]
pub struct LimitCut(pub Limits);

impl Handler<LimitCut> for StoreActor {
    type Result = Result<Seq, StoreError>;
    fn handle(&mut self, msg: LimitCut, _: &mut Self::Context) -> Self::Result {
        self.store()?.limit_cut(&msg.0)
    }
}

/// Prune everything up to `upto`, charging each id of `acks` whose
/// `last_ack` is below it with what it loses.
#[derive(ActixMessage)]
#[rtype(result = "Result<LimitPruned, StoreError>")]
pub struct LimitPrune {
    /// The last seq to delete.
    pub upto: Seq,
    /// Every allowed id with its `last_ack` before the prune.
    pub acks: Vec<(ClientId, Seq)>,
}

/// What a [`LimitPrune`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPruned {
    /// How many messages were deleted.
    pub deleted: u64,
    /// The ids that lost messages (those that lost none are left out).
    pub losses: Vec<Loss>,
}

impl Handler<LimitPrune> for StoreActor {
    type Result = Result<LimitPruned, StoreError>;
    fn handle(&mut self, msg: LimitPrune, _: &mut Self::Context) -> Self::Result {
        self.store()?.limit_prune(msg.upto, &msg.acks)
    }
}

/// Records the losses, moves the acks and deletes up to `upto`, in that
/// order: a crash in between leaves acks moved (so the losses are not
/// counted twice) and messages that the next prune deletes.
pub fn limit_prune<S: Store + ?Sized>(
    store: &mut S,
    upto: Seq,
    acks: &[(ClientId, Seq)],
) -> Result<LimitPruned, StoreError> {
    let mut moved = Vec::new();
    for (client, after) in acks.iter().filter(|(_, a)| *a < upto) {
        let lost = store.count_from_others(*after, upto, client)?;
        moved.push(Loss {
            client: client.clone(),
            after: *after,
            upto,
            lost,
        });
    }
    store.record_losses(&moved)?;
    let deleted = store.prune(upto)?;
    moved.retain(|l| l.lost > 0);
    Ok(LimitPruned {
        deleted,
        losses: moved,
    })
}
