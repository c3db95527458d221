//! One append's transaction: the batch is numbered where it commits, so
//! every node's batches share one dense order.

use std::collections::HashMap;

use postgres::{IsolationLevel, Transaction};

use super::conn::{prepared, refused_commit, Conn, Statements};
use super::seq_of;
use crate::net::Message;
use crate::store::{Appended, NewMessage};
use crate::types::Seq;

/// Locks the counter row before the mids are looked up: the slow path,
/// taken only when a mid was stored by another node between the optimistic
/// lookup and the insert.
const LOCK_COUNTER: &str = "SELECT last FROM counter FOR UPDATE";

/// Which of a batch's `(client_id, mid)` pairs are stored, under which seq.
const STORED_MIDS: &str = "
    SELECT m.client_id, m.mid, m.seq FROM mids m
    JOIN unnest($1::text[], $2::text[]) AS b(client_id, mid)
      ON m.client_id = b.client_id AND m.mid = b.mid";

/// Stores a batch in one statement, numbering it where it commits: the
/// counter moved on by `$9` (its row lock, which every node's appends
/// queue on, is taken here and held to `COMMIT`; in read committed the
/// update sees the latest committed value), the mids (`$1`–`$4`) and the
/// messages (`$5`–`$8`) inserted at `base + offset`, and `herald_log`
/// notified (delivered at commit). Returns the base, the transaction's id
/// (to ask its fate should the answer to `COMMIT` be lost) and how many
/// mids were new: fewer than given means another node stored one since
/// the lookup, and the transaction is rolled back and done again.
const INSERT_BATCH: &str = "
    WITH c AS (
        UPDATE counter SET last = last + $9::bigint
        RETURNING last - $9::bigint AS base, txid_current() AS xid
    ), m AS (
        INSERT INTO mids (client_id, mid, seq, unix_ms)
        SELECT b.client_id, b.mid, c.base + b.off, b.unix_ms
        FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
             AS b(client_id, mid, off, unix_ms), c
        ON CONFLICT (client_id, mid) DO NOTHING
        RETURNING 1
    ), i AS (
        INSERT INTO messages (seq, unix_ms, sender, text)
        SELECT c.base + b.off, b.unix_ms, b.sender, b.text
        FROM unnest($5::bigint[], $6::bigint[], $7::text[], $8::bytea[])
             AS b(off, unix_ms, sender, text), c
    )
    SELECT c.base, c.xid, (SELECT count(*) FROM m),
           pg_notify('herald_log', (c.base + $9::bigint)::text)
    FROM c";

/// What became of a batch's transaction.
pub(super) enum Outcome {
    Committed(Vec<Appended>),
    /// Certainly not committed.
    NotCommitted(postgres::Error),
    /// A mid was stored by another node at the same moment, twice in a
    /// row; nothing was stored, and a retry will find it.
    Raced,
    /// The connection broke during `COMMIT` (or the session was ended
    /// there): maybe committed. Carries the transaction's id, to ask its
    /// fate, and what it would have stored.
    Unknown(postgres::Error, i64, Vec<Appended>),
}

/// Writes one batch in one transaction. The batch's message ids are
/// looked up first, without a lock; the insert statement then takes the
/// counter row's lock (every node's batches queue on it, so seqs are dense
/// and commit in seq order) and numbers the new messages, so the lock is
/// held for one statement and the `COMMIT`. Should a mid turn out stored
/// meanwhile (a resend through another node, racing), the transaction is
/// done again with the lookup under the lock.
pub(super) fn write_batch(conn: &mut Conn, batch: &[NewMessage]) -> Outcome {
    match attempt(conn, batch, false) {
        Outcome::Raced => attempt(conn, batch, true),
        outcome => outcome,
    }
}

/// One try at a batch's transaction; see [`write_batch`].
fn attempt(conn: &mut Conn, batch: &[NewMessage], lock_first: bool) -> Outcome {
    // Everything before COMMIT: an error means nothing was committed (the
    // server rolls back a transaction whose connection is gone).
    match prepare_batch(conn, batch, lock_first) {
        Err(e) => Outcome::NotCommitted(e),
        Ok(Prepared::Raced) => Outcome::Raced,
        Ok(Prepared::Done(result)) => Outcome::Committed(result),
        Ok(Prepared::Ready(tx, xid, result)) => match tx.commit() {
            Ok(()) => Outcome::Committed(result),
            Err(e) if refused_commit(&e) => Outcome::NotCommitted(e),
            Err(e) => Outcome::Unknown(e, xid, result),
        },
    }
}

/// A batch's transaction up to its `COMMIT`.
enum Prepared<'c> {
    /// Ready to commit, with the transaction's id and what each message
    /// became.
    Ready(Transaction<'c>, i64, Vec<Appended>),
    /// Nothing to store: every message was a resend of a stored mid.
    Done(Vec<Appended>),
    /// A mid was stored by another node since the lookup; rolled back.
    Raced,
}

/// One batch's new messages as columns, ready for `unnest`.
#[derive(Default)]
struct BatchRows<'a> {
    /// Each new message's place in the batch (1, 2, …): its seq is the
    /// counter's value before the batch plus this.
    offsets: Vec<i64>,
    times: Vec<i64>,
    senders: Vec<&'a str>,
    texts: Vec<&'a [u8]>,
    mid_clients: Vec<&'a str>,
    mid_ids: Vec<&'a str>,
    mid_offsets: Vec<i64>,
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

/// What a message of the batch becomes once the counter's value is known.
enum Entry {
    /// A resend of a stored mid: its first seq.
    Duplicate(Seq),
    /// A new message, at this offset after the counter's value.
    New(i64),
    /// A resend of a mid first given earlier in this batch, at this offset.
    SameAs(i64),
}

/// The batch's transaction up to (not including) its `COMMIT`; with
/// `lock_first`, the counter row is locked before the mids are looked up.
fn prepare_batch<'c>(
    conn: &'c mut Conn,
    batch: &[NewMessage],
    lock_first: bool,
) -> Result<Prepared<'c>, postgres::Error> {
    let (client, statements) = conn.split();
    // Read committed, whatever the database's default: the insert's update
    // of the locked counter row must see the batches committed before it
    // (a stricter level would fail on the locked row instead of waiting).
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?;
    if lock_first {
        let lock = prepared(&mut tx, statements, LOCK_COUNTER)?;
        tx.query_one(&lock, &[])?;
    }
    let known = stored_mids(&mut tx, statements, batch)?;
    let (rows, entries) = columns(batch, known);
    if rows.offsets.is_empty() {
        return Ok(Prepared::Done(
            entries
                .into_iter()
                .filter_map(|e| match e {
                    Entry::Duplicate(first) => Some(Appended::Duplicate(first)),
                    Entry::New(_) | Entry::SameAs(_) => None,
                })
                .collect(),
        ));
    }
    let n = rows.offsets.len() as i64;
    let insert = prepared(&mut tx, statements, INSERT_BATCH)?;
    let row = tx.query_one(
        &insert,
        &[
            &rows.mid_clients,
            &rows.mid_ids,
            &rows.mid_offsets,
            &rows.mid_ms,
            &rows.offsets,
            &rows.times,
            &rows.senders,
            &rows.texts,
            &n,
        ],
    )?;
    let base: i64 = row.try_get(0)?;
    let xid: i64 = row.try_get(1)?;
    let new_mids: i64 = row.try_get(2)?;
    if new_mids < rows.mid_ids.len() as i64 {
        // Rolled back when `tx` is dropped.
        return Ok(Prepared::Raced);
    }
    let result = entries
        .into_iter()
        .zip(batch)
        .map(|(e, n)| match e {
            Entry::Duplicate(first) => Appended::Duplicate(first),
            Entry::SameAs(off) => Appended::Duplicate(seq_of(base + off)),
            Entry::New(off) => Appended::Stored(Message::new(
                seq_of(base + off),
                n.unix_ms,
                n.from.clone(),
                &n.text,
            )),
        })
        .collect();
    Ok(Prepared::Ready(tx, xid, result))
}

/// The batch as columns for the insert, and what each message becomes: a
/// mid stored before (`known`), or earlier in this batch, is a duplicate.
fn columns(
    batch: &[NewMessage],
    known: HashMap<(String, String), Seq>,
) -> (BatchRows<'_>, Vec<Entry>) {
    let mut rows = BatchRows::default();
    let mut entries = Vec::with_capacity(batch.len());
    // Mids first given earlier in this batch, with their offsets.
    let mut in_batch: HashMap<(&str, &str), i64> = HashMap::new();
    let mut off = 0i64;
    for n in batch {
        if let Some(mid) = n.mid.as_deref() {
            let key = (n.from.as_str(), mid);
            if let Some(first) = known.get(&(key.0.to_owned(), key.1.to_owned())) {
                entries.push(Entry::Duplicate(*first));
                continue;
            }
            if let Some(first) = in_batch.get(&key) {
                entries.push(Entry::SameAs(*first));
                continue;
            }
            off += 1;
            in_batch.insert(key, off);
            rows.mid_clients.push(n.from.as_str());
            rows.mid_ids.push(mid);
            rows.mid_offsets.push(off);
            rows.mid_ms.push(n.unix_ms as i64);
        } else {
            off += 1;
        }
        rows.offsets.push(off);
        rows.times.push(n.unix_ms as i64);
        rows.senders.push(n.from.as_str());
        rows.texts.push(&n.text);
        entries.push(Entry::New(off));
    }
    (rows, entries)
}
