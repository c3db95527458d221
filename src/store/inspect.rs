//! What a store holds, read without changing it: the figures `server
//! inspect` prints. Each store reads its own tables (`sqlite/inspect.rs`,
//! `postgres/inspect.rs`) in one read-only snapshot and fills a [`Report`].

use std::collections::BTreeMap;

use crate::types::Seq;

/// Everything `server inspect` shows about one store, as of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `"sqlite"` or `"postgresql"`.
    pub kind: &'static str,
    /// Where the store is: the data directory, or `host:port/database`
    /// (never a password).
    pub location: String,
    /// The schema version the store was written with.
    pub schema_version: i64,
    /// The highest seq ever stored (pruned ones included).
    pub head: Seq,
    /// How many messages are stored now.
    pub messages: u64,
    /// The lowest stored seq, `None` when no message is stored.
    pub oldest: Option<Seq>,
    /// Every message up to here was pruned (`--retain`).
    pub pruned_upto: Seq,
    /// How many message ids (`@mid`) are remembered, all ids together.
    pub mids: u64,
    /// The store's size on disk in bytes, per part (file or table).
    pub size: Vec<(String, u64)>,
    /// One row per client id the store knows, sorted (numbers by value).
    pub ids: Vec<IdReport>,
    /// The cluster's session claims, sorted by id; empty for SQLite.
    pub sessions: Vec<SessionRow>,
}

impl Report {
    /// The size of every part together, in bytes.
    pub fn total_size(&self) -> u64 {
        self.size.iter().map(|(_, n)| n).sum()
    }
}

/// What the store holds for one client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdReport {
    /// The client id, as stored.
    pub id: String,
    /// Its saved `last_ack`; `None` when it never acknowledged anything.
    pub last_ack: Option<Seq>,
    /// Stored messages from other ids after its `last_ack`: what it would
    /// be owed if it logged in now.
    pub backlog: u64,
    /// Stored messages it sent.
    pub sent: u64,
    /// Message ids of its `SEND`s still remembered.
    pub mids: u64,
    /// Messages from others it never acknowledged that a retention limit
    /// (`--retain-max-age`, `--retain-max-bytes`) pruned.
    pub lost: u64,
    /// The last seq such a prune took from it; `None` when it lost nothing.
    pub lost_upto: Option<Seq>,
}

/// One row of the cluster's `sessions` table: which node last claimed an
/// id's session, under which claim number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The client id.
    pub id: String,
    /// The claim number (higher replaces lower).
    pub epoch: u64,
    /// The node that holds it.
    pub node: String,
}

/// The per-id figures as a store reads them, before backlogs are counted.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    /// Saved `last_ack` per id.
    pub acks: BTreeMap<String, u64>,
    /// Stored messages per sender.
    pub sent: BTreeMap<String, u64>,
    /// Remembered message ids per id.
    pub mids: BTreeMap<String, u64>,
    /// Messages lost to retention limits, and up to which seq, per id.
    pub losses: BTreeMap<String, (u64, u64)>,
}

/// `(client id, number)` rows as a store's query returns them.
pub(crate) type Pairs = Vec<(String, i64)>;

impl Tallies {
    /// The tallies from the rows of the acks, of the stored messages per
    /// sender and of the remembered mids per id.
    pub(crate) fn new(acks: Pairs, sent: Pairs, mids: Pairs) -> Tallies {
        let map = |rows: Pairs| rows.into_iter().map(|(id, n)| (id, unsigned(n))).collect();
        Tallies {
            acks: map(acks),
            sent: map(sent),
            mids: map(mids),
            losses: BTreeMap::new(),
        }
    }

    /// Adds the `(client id, lost, lost_upto)` rows of a store that
    /// records losses (older schemas have none).
    pub(crate) fn with_losses(mut self, rows: Vec<(String, i64, i64)>) -> Tallies {
        self.losses = rows
            .into_iter()
            .map(|(id, n, upto)| (id, (unsigned(n), unsigned(upto))))
            .collect();
        self
    }

    /// The remembered mids of every id together.
    pub(crate) fn mids_total(&self) -> u64 {
        self.mids.values().sum()
    }

    /// One row per id that has an ack, a stored message, a remembered mid
    /// or a session, sorted; `backlog(id, last_ack)` counts each backlog.
    pub(crate) fn rows<E>(
        self,
        sessions: &[SessionRow],
        mut backlog: impl FnMut(&str, Seq) -> Result<u64, E>,
    ) -> Result<Vec<IdReport>, E> {
        let mut ids: Vec<String> = self
            .acks
            .keys()
            .chain(self.sent.keys())
            .chain(self.mids.keys())
            .chain(self.losses.keys())
            .chain(sessions.iter().map(|s| &s.id))
            .cloned()
            .collect();
        ids.sort_by(|a, b| id_order(a, b));
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let last_ack = self.acks.get(&id).map(|&a| Seq(a));
                let loss = self.losses.get(&id).copied();
                Ok(IdReport {
                    lost: loss.map_or(0, |(n, _)| n),
                    lost_upto: loss.map(|(_, upto)| Seq(upto)),
                    backlog: backlog(&id, last_ack.unwrap_or(Seq::ZERO))?,
                    last_ack,
                    sent: self.sent.get(&id).copied().unwrap_or(0),
                    mids: self.mids.get(&id).copied().unwrap_or(0),
                    id,
                })
            })
            .collect()
    }
}

/// Ids in the order people expect: numeric ones by value (2 before 10)
/// and before the others, which go alphabetically.
pub fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    let number = |s: &str| {
        (s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.trim_start_matches('0'))
            .map(|d| (d.len(), d.to_owned()))
    };
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Clamps a count or seq read as a signed database integer.
pub(crate) fn unsigned(v: i64) -> u64 {
    v.max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_numbers_by_value_then_names() {
        let mut ids = vec!["b", "10", "2", "a", "02", "1"];
        ids.sort_by(|a, b| id_order(a, b));
        assert_eq!(ids, ["1", "02", "2", "10", "a", "b"]);
    }

    #[test]
    fn rows_join_every_source_of_ids_and_count_each_backlog_once() {
        let mut t = Tallies::default();
        t.acks.insert("2".into(), 5);
        t.sent.insert("10".into(), 3);
        t.mids.insert("2".into(), 1);
        let sessions = [SessionRow {
            id: "x".into(),
            epoch: 1,
            node: "n".into(),
        }];
        let mut asked = Vec::new();
        let rows = t
            .rows::<()>(&sessions, |id, after| {
                asked.push((id.to_owned(), after));
                Ok(after.0 + 100)
            })
            .unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["2", "10", "x"]);
        assert_eq!(rows[0].last_ack, Some(Seq(5)));
        assert_eq!((rows[0].backlog, rows[0].mids, rows[0].sent), (105, 1, 0));
        assert_eq!((rows[1].last_ack, rows[1].sent), (None, 3));
        assert_eq!(asked.len(), 3);
    }
}
