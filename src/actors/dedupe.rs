//! The message ids (`@mid`) a client id used recently, so the registry can
//! answer a resent `SEND` with the first copy's seq instead of storing it
//! again.

use std::collections::{HashMap, VecDeque};

use crate::types::Seq;

/// The message ids one client id used recently, for dropping resends.
#[derive(Debug, Default)]
pub struct MidWindow {
    seqs: HashMap<String, Seq>,
    order: VecDeque<(String, u64)>,
}

impl MidWindow {
    /// The seq stored under `mid`, if it is remembered.
    pub fn get(&self, mid: &str) -> Option<Seq> {
        self.seqs.get(mid).copied()
    }

    /// Remembers `mid` → `seq`; forgets the oldest mids beyond `keep` that
    /// are older than `max_age_ms` (so at least `keep`, and everything from
    /// the last `max_age_ms`, is remembered).
    pub fn insert(
        &mut self,
        mid: String,
        seq: Seq,
        unix_ms: u64,
        keep: usize,
        max_age_ms: u64,
        now_ms: u64,
    ) {
        self.seqs.insert(mid.clone(), seq);
        self.order.push_back((mid, unix_ms));
        while self.order.len() > keep {
            match self.order.front() {
                Some((_, t)) if now_ms.saturating_sub(*t) > max_age_ms => {
                    if let Some((old, _)) = self.order.pop_front() {
                        // A mid stored again later points at its newer copy.
                        if self.order.iter().all(|(m, _)| *m != old) {
                            self.seqs.remove(&old);
                        }
                    }
                }
                _ => break,
            }
        }
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
