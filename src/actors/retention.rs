//! Retention: which stored messages every allowed id has handled, so
//! `--retain N` may delete them, and who holds that back.
//!
//! A message is handled by an id that acknowledged it and by the id that
//! sent it (a sender is never sent its own messages, so it never
//! acknowledges them). With the ids' `last_ack`s sorted, everything up to
//! the second lowest is handled by all but the lowest id, the *owner*; the
//! owner has handled it only up to the first message after its ack that it
//! did not send itself, which the store finds with one range scan.

use std::time::{Duration, Instant};

use crate::store::{Prune, Pruned};
use crate::types::{ClientId, Seq};

/// How long messages are kept once every allowed id has handled them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Retain {
    /// Keep every message forever.
    #[default]
    All,
    /// Delete handled messages, but always keep the newest N.
    Newest(u64),
}

impl std::str::FromStr for Retain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Retain::All),
            n => n
                .parse()
                .map(Retain::Newest)
                .map_err(|_| format!("'{s}' is neither 'all' nor a number of messages")),
        }
    }
}

/// How far behind what `--retain` allows pruning may be held by one id
/// before the registry says so.
const PRUNE_WARN_BEHIND: u64 = 10_000;
/// At most one such warning this often.
const PRUNE_WARN_EVERY: Duration = Duration::from_secs(600);

/// What bounds a prune: everything up to `upto` is handled by every id but
/// `owner` (the id with the lowest `last_ack`); `owner` has handled it only
/// up to the first message after `owner_ack` it did not send itself. The
/// second lowest ack bounds `upto` when lower than `--retain`'s limit.
#[derive(Debug, Clone)]
pub(super) struct PruneBounds {
    pub(super) upto: Seq,
    owner: ClientId,
    owner_ack: Seq,
    /// The (up to) three ids with the lowest acks, lowest first: the ones
    /// that may be holding pruning back.
    lowest: Vec<(ClientId, Seq)>,
}

impl PruneBounds {
    /// The bounds for these `(id, last_ack)`s, or `None` without ids.
    pub(super) fn of<'a>(
        acks: impl Iterator<Item = (&'a ClientId, Seq)>,
        limit: Seq,
    ) -> Option<PruneBounds> {
        let mut lowest: Vec<(&ClientId, Seq)> = Vec::with_capacity(4);
        for (id, a) in acks {
            let at = lowest.partition_point(|(_, l)| *l <= a);
            if at < 3 {
                lowest.insert(at, (id, a));
                lowest.truncate(3);
            }
        }
        let (owner, owner_ack) = *lowest.first()?;
        let upto = lowest.get(1).map_or(limit, |(_, a)| (*a).min(limit));
        Some(PruneBounds {
            upto,
            owner: owner.clone(),
            owner_ack,
            lowest: lowest.iter().map(|(id, a)| ((*id).clone(), *a)).collect(),
        })
    }
}

/// How far the store is pruned, and whether a prune is under way.
#[derive(Debug, Default)]
pub(super) struct Pruning {
    /// Everything up to here is pruned from the store.
    pruned: Seq,
    /// A prune is under way.
    pub(super) busy: bool,
    /// When the registry last said who holds pruning back.
    warned: Option<Instant>,
    /// A limit prune that failed after the registry moved the acks up to
    /// its end, with the acks from before: tried again as it was.
    pub(super) retry: Option<(Seq, Vec<(ClientId, Seq)>)>,
}

impl Pruning {
    /// Everything up to here is pruned from the store.
    pub(super) fn pruned(&self) -> Seq {
        self.pruned
    }

    /// Records that everything up to `upto` is pruned.
    pub(super) fn advance(&mut self, upto: Seq) {
        self.pruned = self.pruned.max(upto);
    }

    /// The prune to ask the store for, if it could delete anything or a
    /// warning about what holds it back is due.
    pub(super) fn next(&self, b: &PruneBounds, limit: Seq) -> Option<Prune> {
        let warn = self.warn_due(limit);
        if b.upto <= self.pruned && !warn {
            return None;
        }
        let after = b.owner_ack.max(self.pruned);
        let owner = (after < b.upto).then(|| b.owner.clone());
        Some(Prune {
            upto: b.upto,
            after,
            owner,
            pruned: self.pruned,
            want_next_sender: warn,
        })
    }

    /// Whether pruning is far enough behind `limit`, and the last warning
    /// long enough ago, to say who holds it back.
    fn warn_due(&self, limit: Seq) -> bool {
        limit.0.saturating_sub(self.pruned.0) > PRUNE_WARN_BEHIND
            && self.warned.is_none_or(|t| t.elapsed() >= PRUNE_WARN_EVERY)
    }

    /// Records what was pruned, and says (at most every
    /// [`PRUNE_WARN_EVERY`]) which id holds pruning back when it is more
    /// than [`PRUNE_WARN_BEHIND`] messages behind what `--retain` allows:
    /// one whose ack is below the first message kept and that did not send
    /// it.
    pub(super) fn done(&mut self, b: &PruneBounds, limit: Seq, done: Pruned) {
        if done.deleted > 0 {
            log::debug!("pruned {} message(s) up to seq {}", done.deleted, done.upto);
        }
        self.pruned = self.pruned.max(done.upto);
        if !self.warn_due(limit) {
            return;
        }
        let Some(sender) = done.next_sender else {
            return;
        };
        let holder = b
            .lowest
            .iter()
            .find(|(id, ack)| *ack <= self.pruned && *id != sender);
        let Some((id, ack)) = holder else {
            return;
        };
        log::warn!(
            "retention: client {id} (last ack {ack}) has not acknowledged seq {} and \
             holds pruning back by {} message(s); an allowed id that never logs \
             in or never acknowledges keeps the log growing",
            self.pruned.next(),
            limit.0.saturating_sub(self.pruned.0)
        );
        self.warned = Some(Instant::now());
    }
}
