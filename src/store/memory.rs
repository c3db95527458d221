//! The in-memory store: the seed's behaviour, nothing touches the disk and
//! everything is gone when the process ends.

use std::collections::{HashMap, VecDeque};

use super::{number_from, Appended, Limits, MidPolicy, NewMessage, Recovered, Store, StoreError};
use crate::net::Message;
use crate::types::{ClientId, Seq};

/// Keeps the whole log and the cursors in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    log: VecDeque<Message>,
    acks: HashMap<ClientId, Seq>,
    /// Highest seq pruned, so the numbering survives an emptied log.
    pruned_upto: Seq,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The highest seq given.
    fn head(&self) -> Seq {
        self.log.back().map_or(self.pruned_upto, Message::seq)
    }

    /// Appends messages that already have their seqs.
    fn write(&mut self, batch: &[Message]) {
        self.log.extend(batch.iter().cloned());
    }

    /// Index in `log` of the first message with seq > `after`.
    fn index_after(&self, after: Seq) -> usize {
        self.log.partition_point(|m| m.seq() <= after)
    }
}

impl Store for MemoryStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        Ok(Recovered {
            head: self.head(),
            acks: self.acks.clone(),
            mids: Vec::new(),
            shared: false,
        })
    }

    fn append(&mut self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        // The registry remembers mids itself; nothing outlives the process.
        let (messages, _mids) = number_from(self.head(), batch);
        self.write(&messages);
        Ok(messages.into_iter().map(Appended::Stored).collect())
    }

    fn read_after(
        &mut self,
        after: Seq,
        upto: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let start = self.index_after(after);
        let mut bytes = 0;
        let mut out = Vec::new();
        for m in self.log.range(start..).take_while(|m| m.seq() <= upto) {
            bytes += m.frame().len();
            if out.len() >= max || (!out.is_empty() && bytes > max_bytes) {
                break;
            }
            out.push(m.clone());
        }
        Ok(out)
    }

    fn first_not_from(
        &mut self,
        after: Seq,
        upto: Seq,
        sender: &ClientId,
    ) -> Result<Option<Seq>, StoreError> {
        let start = self.index_after(after);
        Ok(self
            .log
            .range(start..)
            .take_while(|m| m.seq() <= upto)
            .find(|m| m.from() != sender)
            .map(Message::seq))
    }

    fn count_from_others(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
    ) -> Result<u64, StoreError> {
        let start = self.index_after(after);
        Ok(self
            .log
            .range(start..)
            .take_while(|m| m.seq() <= upto)
            .filter(|m| m.from() != reader)
            .count() as u64)
    }

    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        for (id, seq) in acks {
            self.acks.insert(id.clone(), *seq);
        }
        Ok(())
    }

    fn prune(&mut self, upto: Seq) -> Result<u64, StoreError> {
        let n = self.index_after(upto);
        self.log.drain(..n);
        self.pruned_upto = self.pruned_upto.max(upto);
        Ok(n as u64)
    }

    fn limit_cut(&mut self, limits: &Limits) -> Result<Seq, StoreError> {
        let total: u64 = self.log.iter().map(|m| m.text().len() as u64).sum();
        let mut over = limits.max_bytes.map_or(0, |max| total.saturating_sub(max));
        let mut cut = Seq::ZERO;
        // Never the newest message: the head stays stored.
        let candidates = self.log.len().saturating_sub(1);
        let scan = self.log.iter().take(candidates.min(limits.batch as usize));
        for m in scan.take_while(|m| m.seq() <= limits.upto) {
            if over == 0 && !limits.too_old(m.unix_ms()) {
                break;
            }
            over = over.saturating_sub(m.text().len() as u64);
            cut = m.seq();
        }
        Ok(cut)
    }

    fn forget_mids(
        &mut self,
        _cutoffs: &[(ClientId, Seq)],
        _policy: &MidPolicy,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, from: &str) -> Message {
        Message::new(Seq(seq), 0, ClientId::new(from).unwrap(), b"x")
    }

    #[test]
    fn reads_ranges_and_counts_others() {
        let mut s = MemoryStore::new();
        s.write(&[msg(1, "a"), msg(2, "b"), msg(3, "a"), msg(4, "c")]);
        let got: Vec<u64> = s
            .read_after(Seq(1), Seq(4), 2, usize::MAX)
            .unwrap()
            .iter()
            .map(|m| m.seq().0)
            .collect();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(
            s.read_after(Seq(3), Seq(3), 10, usize::MAX).unwrap(),
            vec![]
        );
        // A byte bound stops the read, but never before the first message.
        let frame = msg(1, "a").frame().len();
        let seqs = |v: Vec<Message>| v.iter().map(|m| m.seq().0).collect::<Vec<_>>();
        assert_eq!(seqs(s.read_after(Seq(0), Seq(4), 10, 1).unwrap()), [1]);
        assert_eq!(
            seqs(s.read_after(Seq(0), Seq(4), 10, 2 * frame).unwrap()),
            [1, 2]
        );
        assert_eq!(
            s.first_not_from(Seq(0), Seq(4), &ClientId::new("a").unwrap())
                .unwrap(),
            Some(Seq(2))
        );
        assert_eq!(
            s.first_not_from(Seq(2), Seq(3), &ClientId::new("a").unwrap())
                .unwrap(),
            None
        );
        let a = ClientId::new("a").unwrap();
        assert_eq!(s.count_from_others(Seq(0), Seq(4), &a).unwrap(), 2);
        assert_eq!(s.count_from_others(Seq(2), Seq(3), &a).unwrap(), 0);
        assert_eq!(s.recover().unwrap().head, Seq(4));
    }

    #[test]
    fn a_limit_prune_charges_each_id_and_keeps_the_newest() {
        let mut s = MemoryStore::new();
        // Texts of one byte, stored at unix ms 0.
        s.write(&[msg(1, "a"), msg(2, "b"), msg(3, "a"), msg(4, "c")]);
        let limits = Limits {
            max_age_ms: None,
            max_bytes: Some(0),
            now_ms: 0,
            batch: 100,
            upto: Seq(u64::MAX),
        };
        // Everything is over the size; the newest stays.
        let cut = s.limit_cut(&limits).unwrap();
        assert_eq!(cut, Seq(3));
        let (a, b) = (ClientId::new("a").unwrap(), ClientId::new("b").unwrap());
        let done =
            super::super::limits::limit_prune(&mut s, cut, &[(a.clone(), Seq(0)), (b, Seq(2))])
                .unwrap();
        assert_eq!(done.deleted, 3);
        // a loses b's message 2 (1 and 3 are its own); b, at 2, loses 3.
        let lost: Vec<(String, u64, Seq)> = done
            .losses
            .iter()
            .map(|l| (l.client.to_string(), l.lost, l.upto))
            .collect();
        assert_eq!(
            lost,
            [("a".to_owned(), 1, Seq(3)), ("b".to_owned(), 1, Seq(3))]
        );
        assert_eq!(s.acks.get(&a), Some(&Seq(3)));
        assert_eq!(s.recover().unwrap().head, Seq(4));
    }
}
