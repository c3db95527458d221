//! The retention limits on PostgreSQL (`--retain-max-age`): how far to
//! cut, and the prune that records what each id lost, safe with several
//! nodes pruning and committing at once.

use super::PostgresStore;
use crate::store::{LimitPruned, Limits, Loss, StoreError};
use crate::types::{ClientId, Seq};

impl PostgresStore {
    /// See [`crate::store::Store::limit_cut`]. By age only (`--retain-max-bytes` is refused with a database: the
    /// text size of a log that several nodes write has no cheap count).
    pub(super) fn cut_for(&mut self, limits: &Limits) -> Result<Seq, StoreError> {
        let Some(age) = limits.max_age_ms else {
            return Ok(Seq::ZERO);
        };
        let before = limits.now_ms.saturating_sub(age) as i64;
        let upto = limits.upto.0.min(i64::MAX as u64) as i64;
        let batch = limits.batch.clamp(1, i64::MAX as u64) as i64;
        self.run(|conn| {
            // The oldest rows, up to the first young one; never the newest.
            let rows = conn.query(
                "SELECT seq, unix_ms FROM messages
                 WHERE seq < (SELECT max(seq) FROM messages) AND seq <= $1
                 ORDER BY seq LIMIT $2",
                &[&upto, &batch],
            )?;
            let mut cut = Seq::ZERO;
            for r in rows {
                if r.try_get::<_, i64>(1)? >= before {
                    break;
                }
                cut = Seq(r.try_get::<_, i64>(0)?.max(0) as u64);
            }
            Ok(cut)
        })
    }

    /// See [`crate::store::Store::limit_prune`]. One transaction that first locks `pruned_upto`: a node that finds
    /// the range pruned already does nothing, and each id is charged from
    /// the higher of its given and its stored ack, so nothing is counted
    /// twice. Commits go on meanwhile (they only add higher seqs).
    pub(super) fn prune_for_limits(
        &mut self,
        upto: Seq,
        acks: &[(ClientId, Seq)],
    ) -> Result<LimitPruned, StoreError> {
        let end = upto.0 as i64;
        self.run(|conn| {
            let mut tx = conn.client().transaction()?;
            let pruned: i64 = tx
                .query_one("SELECT value FROM meta WHERE key = 'pruned_upto' FOR UPDATE", &[])?
                .try_get(0)?;
            let mut losses = Vec::new();
            if pruned >= end {
                tx.commit()?;
                return Ok(LimitPruned { deleted: 0, losses });
            }
            for (client, given) in acks {
                let stored: Option<i64> = tx
                    .query_opt("SELECT last_ack FROM acks WHERE client_id = $1", &[&client.as_str()])?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                let after = (given.0 as i64).max(stored.unwrap_or(0)).max(pruned);
                if after >= end {
                    continue;
                }
                let lost: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM messages WHERE seq > $1 AND seq <= $2 AND sender <> $3",
                        &[&after, &end, &client.as_str()],
                    )?
                    .try_get(0)?;
                if lost > 0 {
                    tx.execute(
                        "INSERT INTO losses (client_id, lost, lost_upto) VALUES ($1, $2, $3)
                         ON CONFLICT (client_id) DO UPDATE SET lost = losses.lost + excluded.lost,
                         lost_upto = greatest(losses.lost_upto, excluded.lost_upto)",
                        &[&client.as_str(), &lost, &end],
                    )?;
                    losses.push(Loss {
                        client: client.clone(),
                        after: Seq(after as u64),
                        upto,
                        lost: lost as u64,
                    });
                }
                tx.execute(
                    "INSERT INTO acks (client_id, last_ack) VALUES ($1, $2)
                     ON CONFLICT (client_id)
                     DO UPDATE SET last_ack = greatest(acks.last_ack, excluded.last_ack)",
                    &[&client.as_str(), &end],
                )?;
            }
            let deleted = tx.execute("DELETE FROM messages WHERE seq <= $1", &[&end])?;
            tx.execute("UPDATE meta SET value = $1 WHERE key = 'pruned_upto'", &[&end])?;
            tx.commit()?;
            Ok(LimitPruned { deleted, losses })
        })
    }
}
