//! One append's transaction: the batch is numbered where it commits, so
//! every node's batches share one dense order.

use std::collections::HashMap;

use postgres::{IsolationLevel, Transaction};

use super::conn::{prepared, refused_commit, Conn, Statements};
use super::seq_of;
use crate::net::Message;
use crate::store::{Appended, NewMessage};
use crate::types::Seq;

/// Locks the counter row (every node's appends queue here) and says the
/// transaction's id, to ask its fate should the answer to `COMMIT` be lost.
const LOCK_COUNTER: &str = "SELECT last, txid_current() FROM counter FOR UPDATE";

/// Which of a batch's `(client_id, mid)` pairs are stored, under which seq.
const STORED_MIDS: &str = "
    SELECT m.client_id, m.mid, m.seq FROM mids m
    JOIN unnest($1::text[], $2::text[]) AS b(client_id, mid)
      ON m.client_id = b.client_id AND m.mid = b.mid";

/// Stores a numbered batch: moves the counter to `$9`, inserts the mids
/// (`$1`–`$4`) and the messages (`$5`–`$8`), and notifies `herald_log`.
/// Data-modifying WITH parts always run to completion. Under the counter's
/// lock no other node can have stored one of these mids, so a conflict
/// cannot happen; were it to, the first seq is kept.
const INSERT_BATCH: &str = "
    WITH c AS (
        UPDATE counter SET last = $9::bigint
    ), m AS (
        INSERT INTO mids (client_id, mid, seq, unix_ms)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
        ON CONFLICT (client_id, mid) DO NOTHING
    ), i AS (
        INSERT INTO messages (seq, unix_ms, sender, text)
        SELECT * FROM unnest($5::bigint[], $6::bigint[], $7::text[], $8::bytea[])
    )
    SELECT pg_notify('herald_log', ($9::bigint)::text)";

/// What became of a batch's transaction.
pub(super) enum Outcome {
    Committed(Vec<Appended>),
    /// Certainly not committed.
    NotCommitted(postgres::Error),
    /// The connection broke during `COMMIT` (or the session was ended
    /// there): maybe committed. Carries the transaction's id, to ask its
    /// fate, and what it would have stored.
    Unknown(postgres::Error, i64, Vec<Appended>),
}

/// Writes one batch in one transaction: the counter row locked (every
/// node's batches queue on it, so seqs are dense and commit in seq order),
/// the batch's message ids looked up under that lock (a mid stored before,
/// through any node, is answered with its first seq), then in one
/// statement the counter moved on by the number of new messages, the rows
/// inserted and `herald_log` notified (delivered at commit).
pub(super) fn write_batch(conn: &mut Conn, batch: &[NewMessage]) -> Outcome {
    // Everything before COMMIT: an error means nothing was committed (the
    // server rolls back a transaction whose connection is gone).
    match prepare_batch(conn, batch) {
        Err(e) => Outcome::NotCommitted(e),
        Ok((tx, xid, result)) => match tx.commit() {
            Ok(()) => Outcome::Committed(result),
            Err(e) if refused_commit(&e) => Outcome::NotCommitted(e),
            Err(e) => Outcome::Unknown(e, xid, result),
        },
    }
}

/// One batch's new messages as columns, ready for `unnest`.
#[derive(Default)]
struct BatchRows<'a> {
    seqs: Vec<i64>,
    times: Vec<i64>,
    senders: Vec<&'a str>,
    texts: Vec<&'a [u8]>,
    mid_clients: Vec<&'a str>,
    mid_ids: Vec<&'a str>,
    mid_seqs: Vec<i64>,
    mid_ms: Vec<i64>,
}

/// The mids of `batch` already stored, by any node: `(client, mid) → seq`.
fn stored_mids(
    tx: &mut Transaction<'_>,
    statements: &mut Statements,
    batch: &[NewMessage],
) -> Result<HashMap<(String, String), Seq>, postgres::Error> {
    let (clients, ids): (Vec<&str>, Vec<&str>) = batch
        .iter()
        .filter_map(|n| Some((n.from.as_str(), n.mid.as_deref()?)))
        .unzip();
    let mut found = HashMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let lookup = prepared(tx, statements, STORED_MIDS)?;
    for row in tx.query(&lookup, &[&clients, &ids])? {
        found.insert((row.try_get(0)?, row.try_get(1)?), seq_of(row.try_get(2)?));
    }
    Ok(found)
}

/// The batch's transaction up to (not including) its `COMMIT`, with the
/// transaction's id and what each message became.
fn prepare_batch<'c>(
    conn: &'c mut Conn,
    batch: &[NewMessage],
) -> Result<(Transaction<'c>, i64, Vec<Appended>), postgres::Error> {
    let (client, statements) = conn.split();
    // Read committed, whatever the database's default: each statement
    // after the counter's lock must see the batches committed before it
    // (a stricter level would fail on the locked row instead of waiting).
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?;
    let lock = prepared(&mut tx, statements, LOCK_COUNTER)?;
    let row = tx.query_one(&lock, &[])?;
    let head = seq_of(row.try_get(0)?);
    let xid: i64 = row.try_get(1)?;
    let mut known = stored_mids(&mut tx, statements, batch)?;
    let mut rows = BatchRows::default();
    let mut result = Vec::with_capacity(batch.len());
    let mut seq = head;
    for n in batch {
        if let Some(mid) = &n.mid {
            let key = (n.from.as_str().to_owned(), mid.clone());
            if let Some(first) = known.get(&key) {
                // Stored before, or earlier in this batch.
                result.push(Appended::Duplicate(*first));
                continue;
            }
            seq = seq.next();
            known.insert(key, seq);
            rows.mid_clients.push(n.from.as_str());
            rows.mid_ids.push(mid);
            rows.mid_seqs.push(seq.0 as i64);
            rows.mid_ms.push(n.unix_ms as i64);
        } else {
            seq = seq.next();
        }
        rows.seqs.push(seq.0 as i64);
        rows.times.push(n.unix_ms as i64);
        rows.senders.push(n.from.as_str());
        rows.texts.push(&n.text);
        result.push(Appended::Stored(Message::new(
            seq,
            n.unix_ms,
            n.from.clone(),
            &n.text,
        )));
    }
    if seq > head {
        let insert = prepared(&mut tx, statements, INSERT_BATCH)?;
        tx.query_one(
            &insert,
            &[
                &rows.mid_clients,
                &rows.mid_ids,
                &rows.mid_seqs,
                &rows.mid_ms,
                &rows.seqs,
                &rows.times,
                &rows.senders,
                &rows.texts,
                &(seq.0 as i64),
            ],
        )?;
    }
    Ok((tx, xid, result))
}
