//! The message ids (`@mid`) a client id used recently, so the registry can
//! answer a resent `SEND` with the first copy's seq instead of storing it
//! again.
//!
//! Each id's window remembers at least its newest `keep` mids (10,000 by
//! default, what the protocol promises) and every mid from the last
//! `max_age` (24 h by default), but never more than [`MAX_MIDS_PER_ID`]
//! (or `keep`, if that is larger): a client that sends faster than that for
//! a whole day has its oldest mids forgotten early. One remembered mid costs
//! its text once (shared by the lookup table and the age queue) plus about
//! 60 bytes of bookkeeping, so at most about 200 bytes with a 64-character
//! mid and 11 MB per client id at the cap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::types::Seq;

/// The most mids remembered per client id, however recent (unless `keep`
/// is larger).
pub const MAX_MIDS_PER_ID: usize = 50_000;

/// The message ids one client id used recently, for dropping resends.
#[derive(Debug, Default)]
pub struct MidWindow {
    /// Mid → the seq of its newest stored copy.
    seqs: HashMap<Arc<str>, Seq>,
    /// Every insert, oldest first: the mid, the seq it was stored as, when.
    /// An entry whose seq is no longer the mid's seq in `seqs` is a stale
    /// older copy and is dropped without touching `seqs`.
    order: VecDeque<(Arc<str>, Seq, u64)>,
    /// The oldest seq the store was last told to keep (see
    /// [`MidWindow::cutoff_changed`]).
    reported: Seq,
}

impl MidWindow {
    /// The seq stored under `mid`, if it is remembered.
    pub fn get(&self, mid: &str) -> Option<Seq> {
        self.seqs.get(mid).copied()
    }

    /// Remembers `mid` → `seq`; forgets the oldest mids beyond `keep` that
    /// are older than `max_age_ms` (so at least `keep`, and everything from
    /// the last `max_age_ms`, is remembered), and any beyond the hard cap.
    pub fn insert(
        &mut self,
        mid: String,
        seq: Seq,
        unix_ms: u64,
        keep: usize,
        max_age_ms: u64,
        now_ms: u64,
    ) {
        let mid: Arc<str> = Arc::from(mid);
        self.seqs.insert(mid.clone(), seq);
        self.order.push_back((mid, seq, unix_ms));
        self.expire(keep, max_age_ms, now_ms);
    }

    /// Forgets what [`MidWindow::insert`] would forget now; each step looks
    /// at the oldest entry only.
    pub fn expire(&mut self, keep: usize, max_age_ms: u64, now_ms: u64) {
        let cap = MAX_MIDS_PER_ID.max(keep);
        while self.order.len() > keep {
            let Some((mid, seq, t)) = self.order.front() else {
                break;
            };
            let old = now_ms.saturating_sub(*t) > max_age_ms;
            if !old && self.order.len() <= cap {
                break;
            }
            // A mid stored again later points at its newer copy.
            if self.seqs.get(mid) == Some(seq) {
                self.seqs.remove(mid);
            }
            self.order.pop_front();
        }
        if self.order.capacity() > 2 * self.order.len().max(1024) {
            self.order.shrink_to(self.order.len().max(1024));
            self.seqs.shrink_to(self.seqs.len().max(1024));
        }
    }

    /// The seq of the oldest mid still remembered, when it moved on since
    /// the last call: the store may forget every mid of this id stored
    /// under a lower seq.
    pub fn cutoff_changed(&mut self) -> Option<Seq> {
        let oldest = self.order.front().map(|(_, seq, _)| *seq)?;
        (oldest > self.reported).then(|| {
            self.reported = oldest;
            oldest
        })
    }

    /// How many mids are remembered.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}
