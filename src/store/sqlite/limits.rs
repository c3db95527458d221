//! The retention limits on SQLite (`--retain-max-age`,
//! `--retain-max-bytes`): how far to cut, and the prune that records what
//! each id lost, in one transaction.

use rusqlite::{params, OptionalExtension, Transaction};

use super::SqliteStore;
use crate::store::{LimitPruned, Limits, Loss, StoreError};
use crate::types::{ClientId, Seq};

impl SqliteStore {
    /// See [`Store::limit_cut`]: one range scan from the oldest message.
    pub(super) fn cut_for(&mut self, limits: &Limits) -> Result<Seq, StoreError> {
        let head = self.head()?;
        if limits.max_bytes.is_some() && self.text_bytes.is_none() {
            // Measured once per run of the server; appends and prunes keep it.
            let total: i64 = self.conn.query_row(
                "SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM messages",
                [],
                |r| r.get(0),
            )?;
            self.text_bytes = Some(total.max(0) as u64);
        }
        let mut over = match (limits.max_bytes, self.text_bytes) {
            (Some(max), Some(total)) => total.saturating_sub(max),
            _ => 0,
        };
        // From the oldest message on, one range scan of at most `batch`
        // rows: the prefix that is too old or over the size.
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, unix_ms, length(CAST(text AS BLOB)) FROM messages
             WHERE seq < ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![
            head.0 as i64,
            limits.upto.0.min(i64::MAX as u64) as i64,
            limits.batch.max(1) as i64
        ])?;
        let mut cut = Seq::ZERO;
        while let Some(row) = rows.next()? {
            let seq = Seq(row.get::<_, i64>(0)?.max(0) as u64);
            let unix_ms = row.get::<_, i64>(1)?.max(0) as u64;
            let len = row.get::<_, i64>(2)?.max(0) as u64;
            if over == 0 && !limits.too_old(unix_ms) {
                break;
            }
            over = over.saturating_sub(len);
            cut = seq;
        }
        Ok(cut)
    }

    /// See [`crate::store::Store::limit_prune`]: the losses, the moved
    /// acks and the delete commit together; a range pruned already is
    /// left alone, and each id is charged from the higher of its given and
    /// its stored ack, so a retried prune counts nothing twice.
    pub(super) fn prune_for_limits(
        &mut self,
        upto: Seq,
        acks: &[(ClientId, Seq)],
    ) -> Result<LimitPruned, StoreError> {
        let pruned = self.pruned_upto()?;
        let mut losses = Vec::new();
        if pruned >= upto {
            return Ok(LimitPruned { deleted: 0, losses });
        }
        let end = upto.0 as i64;
        let tx = self.conn.transaction()?;
        {
            let mut stored = tx.prepare_cached("SELECT last_ack FROM acks WHERE client_id = ?1")?;
            let mut count = tx.prepare_cached(
                "SELECT count(*) FROM messages WHERE seq > ?1 AND seq <= ?2 AND sender != ?3",
            )?;
            for (client, given) in acks {
                let saved: Option<i64> = stored
                    .query_row(params![client.as_str()], |r| r.get(0))
                    .optional()?;
                let after = Seq(saved.unwrap_or(0).max(0) as u64)
                    .max(*given)
                    .max(pruned);
                if after >= upto {
                    continue;
                }
                let lost: i64 =
                    count.query_row(params![after.0 as i64, end, client.as_str()], |r| r.get(0))?;
                losses.push(Loss {
                    client: client.clone(),
                    after,
                    upto,
                    lost: lost.max(0) as u64,
                });
            }
        }
        charge(&tx, &losses)?;
        let gone: Option<i64> = match self.text_bytes {
            Some(_) => Some(tx.query_row(
                "SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM messages WHERE seq <= ?1",
                params![end],
                |r| r.get(0),
            )?),
            None => None,
        };
        let deleted = tx.execute("DELETE FROM messages WHERE seq <= ?1", params![end])?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'pruned_upto' AND CAST(value AS INTEGER) < ?2",
            params![upto.0.to_string(), end],
        )?;
        tx.commit()?;
        if let (Some(b), Some(gone)) = (self.text_bytes.as_mut(), gone) {
            *b = b.saturating_sub(gone.max(0) as u64);
        }
        losses.retain(|l| l.lost > 0);
        Ok(LimitPruned {
            deleted: deleted as u64,
            losses,
        })
    }
}

/// Adds each loss to its id's row of `losses` (those of more than none)
/// and moves every id's `last_ack` up to its loss's end.
pub(super) fn charge(tx: &Transaction<'_>, losses: &[Loss]) -> Result<(), StoreError> {
    let mut charge = tx.prepare_cached(
        "INSERT INTO losses (client_id, lost, lost_upto) VALUES (?1, ?2, ?3)
                 ON CONFLICT (client_id) DO UPDATE
                 SET lost = lost + excluded.lost, lost_upto = max(lost_upto, excluded.lost_upto)",
    )?;
    let mut ack = tx.prepare_cached(
        "INSERT INTO acks (client_id, last_ack) VALUES (?1, ?2)
                 ON CONFLICT (client_id) DO UPDATE SET last_ack = max(last_ack, excluded.last_ack)",
    )?;
    for l in losses {
        if l.lost > 0 {
            charge.execute(params![l.client.as_str(), l.lost as i64, l.upto.0 as i64])?;
        }
        ack.execute(params![l.client.as_str(), l.upto.0 as i64])?;
    }
    Ok(())
}
