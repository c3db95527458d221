//! The durable store on PostgreSQL: the log, the message ids and the
//! cursors in tables of one database, for one Herald node at a time.
//!
//! Tables: `meta(key, value)` (the schema version and how far the log is
//! pruned), `counter(last)` (one row: the last seq stored, bumped in the
//! same transaction as every batch), `messages(seq, unix_ms, sender, text)`,
//! `mids(client_id, mid, seq, unix_ms)` and `acks(client_id, last_ack)`.
//!
//! One node only: the store holds a session-level advisory lock on its own
//! connection, so a second server on the same database is refused, and a
//! store that lost its connection writes again only after it took the lock
//! back. A batch is one transaction; a commit whose outcome is unknown (the
//! connection broke during `COMMIT`) is settled by reading the counter once
//! the database answers again, never guessed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::{Appended, MidPolicy, MidRecord, NewMessage, Recovered, Store, StoreError};
use crate::net::Message;
use crate::types::{ClientId, Seq};
use schema::{init_schema, take_node_lock};

mod schema;

pub use schema::SCHEMA_VERSION;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Engine(one_line(&e))
    }
}

/// An error as one line: PostgreSQL's details can span several.
fn one_line(e: &postgres::Error) -> String {
    let mut s = match e.as_db_error() {
        Some(db) => format!("database error: {}", db.message()),
        None => e.to_string(),
    };
    s = s.replace(['\n', '\r'], "; ");
    s
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Incompatible(format!("stored {what} is invalid"))
}

/// A message log and cursors in a PostgreSQL database.
pub struct PostgresStore {
    config: postgres::Config,
    /// The connection, holding the node lock; `None` after it was lost.
    client: Option<Client>,
    /// No reconnection attempt before this instant.
    retry_at: Instant,
    /// The wait after the next failed attempt.
    backoff: Duration,
    /// The sender of the last row read (reused for runs of one sender).
    last_sender: Option<ClientId>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…`), takes the node
    /// lock and creates or upgrades the schema.
    ///
    /// Fails when the database is unreachable, another node holds it, or it
    /// was written by a newer Herald.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unusable(format!("bad --database-url: {e}")))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("herald");
        let mut client = connect(&config).map_err(|e| {
            StoreError::Unusable(format!("cannot connect to the database: {}", one_line(&e)))
        })?;
        take_node_lock(&mut client)?;
        init_schema(&mut client)?;
        Ok(PostgresStore {
            config,
            client: Some(client),
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
            last_sender: None,
        })
    }

    /// The live connection, reconnecting (and retaking the node lock) when
    /// it was lost and the backoff allows another attempt.
    fn conn(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            if Instant::now() < self.retry_at {
                return Err(StoreError::Unavailable(
                    "the database is unreachable; retrying".into(),
                ));
            }
            match connect(&self.config)
                .map_err(StoreError::from)
                .and_then(|mut c| take_node_lock(&mut c).map(|()| c))
            {
                Ok(c) => {
                    log::info!("reconnected to the database");
                    self.client = Some(c);
                    self.backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    log::warn!("cannot reconnect to the database: {e}");
                    return Err(StoreError::Unavailable(e.to_string()));
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the database is unreachable".into()))
    }

    /// Passes `r` on, dropping the connection when the error broke it.
    fn check<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, StoreError> {
        r.map_err(|e| {
            let broken =
                e.as_db_error().is_none() || self.client.as_ref().is_none_or(|c| c.is_closed());
            if broken && self.client.take().is_some() {
                log::warn!("lost the database connection: {}", one_line(&e));
            }
            if broken {
                StoreError::Unavailable(one_line(&e))
            } else {
                StoreError::from(e)
            }
        })
    }

    /// After a `COMMIT` whose answer was lost: waits (reconnecting with
    /// backoff, for as long as it takes) until the database answers, then
    /// tells whether transaction `xid` was committed (`txid_status`, made
    /// for exactly this; the counter cannot tell, since other nodes move it).
    fn settle_commit(&mut self, xid: i64) -> bool {
        let mut warned = Instant::now();
        log::warn!("the database connection broke during a commit; waiting for the database to learn its outcome");
        loop {
            let wait = self.retry_at.saturating_duration_since(Instant::now());
            std::thread::sleep(wait);
            let answer = self.conn().and_then(|c| {
                let row = c.query_one("SELECT txid_status($1)", &[&xid])?;
                Ok(row.try_get::<_, Option<String>>(0)?)
            });
            match answer.as_ref().map(|s| s.as_deref()) {
                Ok(Some("committed")) => return true,
                Ok(Some("aborted")) => return false,
                // Still "in progress" (the server has not yet noticed the
                // broken connection), or no answer yet: wait.
                Ok(_) | Err(_) => {
                    if answer.is_err() {
                        self.client = None;
                    }
                    if self.retry_at <= Instant::now() {
                        self.retry_at = Instant::now() + self.backoff;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                    if warned.elapsed() > Duration::from_secs(10) {
                        log::warn!("still waiting for the database to settle a commit");
                        warned = Instant::now();
                    }
                }
            }
        }
    }
}

fn connect(config: &postgres::Config) -> Result<Client, postgres::Error> {
    config.connect(NoTls)
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

/// What became of a batch's transaction.
enum Outcome {
    Committed(Vec<Appended>),
    /// Certainly not committed.
    NotCommitted(postgres::Error),
    /// The connection broke during `COMMIT`: maybe committed. Carries the
    /// transaction's id, to ask its fate, and what it would have stored.
    Unknown(postgres::Error, i64, Vec<Appended>),
}

/// Writes one batch in one transaction: the counter row locked (every
/// node's batches queue on it, so seqs are dense and commit in seq order),
/// the batch's message ids looked up under that lock (a mid stored before,
/// through any node, is answered with its first seq), the counter bumped
/// by the number of new messages, the rows inserted and a bare `NOTIFY`
/// sent to wake the other nodes, all in one statement.
fn write_batch(conn: &mut Client, batch: &[NewMessage]) -> Outcome {
    // Everything before COMMIT: an error means nothing was committed (the
    // server rolls back a transaction whose connection is gone).
    match prepare_batch(conn, batch) {
        Err(e) => Outcome::NotCommitted(e),
        Ok((tx, xid, result)) => match tx.commit() {
            Ok(()) => Outcome::Committed(result),
            // The server answered: it did not commit.
            Err(e) if e.as_db_error().is_some() => Outcome::NotCommitted(e),
            Err(e) => Outcome::Unknown(e, xid, result),
        },
    }
}

/// The mids of `batch` already stored, by any node: `(client, mid) → seq`.
fn stored_mids(
    tx: &mut postgres::Transaction<'_>,
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
    for row in tx.query(
        "SELECT m.client_id, m.mid, m.seq FROM mids m
         JOIN unnest($1::text[], $2::text[]) AS b(client_id, mid)
           ON m.client_id = b.client_id AND m.mid = b.mid",
        &[&clients, &ids],
    )? {
        found.insert((row.try_get(0)?, row.try_get(1)?), seq_of(row.try_get(2)?));
    }
    Ok(found)
}

/// The batch's transaction up to (not including) its `COMMIT`, with the
/// transaction's id and what each message became.
fn prepare_batch<'c>(
    conn: &'c mut Client,
    batch: &[NewMessage],
) -> Result<(postgres::Transaction<'c>, i64, Vec<Appended>), postgres::Error> {
    let mut tx = conn.transaction()?;
    let row = tx.query_one("SELECT last, txid_current() FROM counter FOR UPDATE", &[])?;
    let head = seq_of(row.try_get(0)?);
    let xid: i64 = row.try_get(1)?;
    let mut known = stored_mids(&mut tx, batch)?;
    let mut rows = BatchRows::default();
    let mut result = Vec::with_capacity(batch.len());
    let mut seq = head;
    for n in batch {
        if let Some(mid) = &n.mid {
            let key = (n.from.as_str().to_owned(), mid.clone());
            if let Some(first) = known.get(&key) {
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
        tx.execute("UPDATE counter SET last = $1", &[&(seq.0 as i64)])?;
        tx.query_one(
            "WITH m AS (
                 INSERT INTO mids (client_id, mid, seq, unix_ms)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                 ON CONFLICT (client_id, mid)
                 DO UPDATE SET seq = excluded.seq, unix_ms = excluded.unix_ms
             ), i AS (
                 INSERT INTO messages (seq, unix_ms, sender, text)
                 SELECT * FROM unnest($5::bigint[], $6::bigint[], $7::text[], $8::bytea[])
             )
             SELECT pg_notify('herald_log', $9::text)",
            &[
                &rows.mid_clients,
                &rows.mid_ids,
                &rows.mid_seqs,
                &rows.mid_ms,
                &rows.seqs,
                &rows.times,
                &rows.senders,
                &rows.texts,
                &seq.0.to_string(),
            ],
        )?;
    }
    Ok((tx, xid, result))
}

fn seq_of(v: i64) -> Seq {
    Seq(v.max(0) as u64)
}

impl Store for PostgresStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        let conn = self.conn()?;
        let head: i64 = conn
            .query_one("SELECT last FROM counter", &[])?
            .try_get(0)?;
        let mut acks = HashMap::new();
        for row in conn.query("SELECT client_id, last_ack FROM acks", &[])? {
            let id = ClientId::new(row.try_get::<_, &str>(0)?).map_err(|_| corrupt("client id"))?;
            acks.insert(id, seq_of(row.try_get(1)?));
        }
        let mut mids = Vec::new();
        for row in conn.query(
            "SELECT client_id, mid, seq, unix_ms FROM mids ORDER BY seq",
            &[],
        )? {
            mids.push(MidRecord {
                client: ClientId::new(row.try_get::<_, &str>(0)?)
                    .map_err(|_| corrupt("client id"))?,
                mid: row.try_get(1)?,
                seq: seq_of(row.try_get(2)?),
                unix_ms: row.try_get::<_, i64>(3)?.max(0) as u64,
            });
        }
        Ok(Recovered {
            head: seq_of(head),
            acks,
            mids,
            shared: true,
        })
    }

    fn append(&mut self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let outcome = write_batch(self.conn()?, batch);
        match outcome {
            Outcome::Committed(result) => Ok(result),
            Outcome::NotCommitted(e) => self.check(Err(e)),
            Outcome::Unknown(e, xid, result) => {
                // The answer to COMMIT was lost: it may or may not have
                // been applied. Ask the database once it answers again.
                let reason = one_line(&e);
                self.client = None;
                if self.settle_commit(xid) {
                    log::info!("the interrupted commit was applied");
                    Ok(result)
                } else {
                    log::warn!("the interrupted commit was not applied");
                    Err(StoreError::Unavailable(reason))
                }
            }
        }
    }

    fn read_after(
        &mut self,
        after: Seq,
        upto: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut last_sender = self.last_sender.take();
        let conn = self.conn()?;
        let result = (|| -> Result<Vec<Message>, StoreError> {
            let params: [&(dyn postgres::types::ToSql + Sync); 3] =
                [&(after.0 as i64), &(upto.0 as i64), &(max as i64)];
            let mut rows = conn.query_raw(
                "SELECT seq, unix_ms, sender, text FROM messages
                 WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
                params,
            )?;
            let mut out = Vec::with_capacity(max.min(4096));
            let mut frames = bytes::BytesMut::with_capacity(max_bytes.min(256 * 1024));
            let mut bytes = 0;
            while let Some(row) = rows.next()? {
                let sender: &str = row.try_get(2)?;
                let from = match &last_sender {
                    Some(id) if id.as_str() == sender => id.clone(),
                    _ => {
                        let id = ClientId::new(sender).map_err(|_| corrupt("sender"))?;
                        last_sender = Some(id.clone());
                        id
                    }
                };
                let text: &[u8] = row.try_get(3)?;
                let m = Message::new_in(
                    &mut frames,
                    seq_of(row.try_get(0)?),
                    row.try_get::<_, i64>(1)?.max(0) as u64,
                    from,
                    text,
                );
                bytes += m.frame().len();
                if !out.is_empty() && bytes > max_bytes {
                    break;
                }
                out.push(m);
            }
            Ok(out)
        })();
        self.last_sender = last_sender;
        if result.is_err() && self.client.as_ref().is_some_and(|c| c.is_closed()) {
            log::warn!("lost the database connection");
            self.client = None;
        }
        result
    }

    fn first_not_from(
        &mut self,
        after: Seq,
        upto: Seq,
        sender: &ClientId,
    ) -> Result<Option<Seq>, StoreError> {
        let r = self.conn()?.query_opt(
            "SELECT seq FROM messages WHERE seq > $1 AND seq <= $2 AND sender <> $3
             ORDER BY seq LIMIT 1",
            &[&(after.0 as i64), &(upto.0 as i64), &sender.as_str()],
        );
        Ok(self
            .check(r)?
            .map(|row| row.try_get(0))
            .transpose()?
            .map(seq_of))
    }

    fn count_from_others(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
    ) -> Result<u64, StoreError> {
        let r = self.conn()?.query_one(
            "SELECT count(*) FROM messages WHERE seq > $1 AND seq <= $2 AND sender <> $3",
            &[&(after.0 as i64), &(upto.0 as i64), &reader.as_str()],
        );
        let n: i64 = self.check(r)?.try_get(0)?;
        Ok(n.max(0) as u64)
    }

    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        if acks.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = acks.iter().map(|(id, _)| id.as_str()).collect();
        let seqs: Vec<i64> = acks.iter().map(|(_, s)| s.0 as i64).collect();
        // One statement: max() per id keeps a cursor from going back, also
        // when one id appears twice.
        let r = self.conn()?.execute(
            "INSERT INTO acks (client_id, last_ack)
             SELECT id, max(seq) FROM unnest($1::text[], $2::bigint[]) AS a(id, seq) GROUP BY id
             ON CONFLICT (client_id)
             DO UPDATE SET last_ack = greatest(acks.last_ack, excluded.last_ack)",
            &[&ids, &seqs],
        );
        self.check(r)?;
        Ok(())
    }

    fn prune(&mut self, upto: Seq) -> Result<u64, StoreError> {
        let upto = upto.0 as i64;
        let conn = self.conn()?;
        let r = (|| -> Result<u64, postgres::Error> {
            let mut tx = conn.transaction()?;
            let deleted = tx.execute("DELETE FROM messages WHERE seq <= $1", &[&upto])?;
            tx.execute(
                "UPDATE meta SET value = $1 WHERE key = 'pruned_upto' AND value < $1",
                &[&upto],
            )?;
            tx.commit()?;
            Ok(deleted)
        })();
        self.check(r)
    }

    fn forget_mids(
        &mut self,
        cutoffs: &[(ClientId, Seq)],
        _policy: &MidPolicy,
    ) -> Result<(), StoreError> {
        if cutoffs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = cutoffs.iter().map(|(id, _)| id.as_str()).collect();
        let seqs: Vec<i64> = cutoffs.iter().map(|(_, s)| s.0 as i64).collect();
        let r = self.conn()?.execute(
            "DELETE FROM mids USING unnest($1::text[], $2::bigint[]) AS c(id, cutoff)
             WHERE mids.client_id = c.id AND mids.seq < c.cutoff",
            &[&ids, &seqs],
        );
        self.check(r)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // Every commit is as durable as the server's synchronous_commit
        // makes it; there is nothing buffered here.
        Ok(())
    }
}
