//! The durable store on PostgreSQL: the log, the message ids, the cursors
//! and the session claims in tables of one database, shared by every
//! Herald node that uses it.
//!
//! Tables (schema version 2, see `schema.rs`): `meta(key, value)` (the
//! schema version and how far the log is pruned), `counter(last)` (one
//! row: the last seq stored), `messages(seq, unix_ms, sender, text)`,
//! `mids(client_id, mid, seq, unix_ms)`, `acks(client_id, last_ack)` and
//! `sessions(client_id, node, epoch)`.
//!
//! A batch is numbered inside its transaction, under the counter row's
//! lock (`batch.rs`), so every node's commits form one dense order. A
//! commit whose outcome is unknown (the connection broke during `COMMIT`)
//! is settled with `txid_status` once the database answers again, never
//! guessed. Other nodes' commits and logins are announced with `NOTIFY`;
//! [`Listener`] turns them into wake-ups for the registry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

use super::{
    Appended, LimitPruned, Limits, LoginClaim, LoginView, MidPolicy, MidRecord, NewMessage,
    Recovered, Store, StoreError,
};
use crate::net::Message;
use crate::types::{ClientId, Seq};
use batch::{write_batch, Outcome};
use conn::{one_line, Backoff, Conn};
use schema::init_schema;

mod batch;
mod conn;
mod inspect;
mod limits;
mod listen;
mod schema;

pub use listen::Listener;
pub use schema::SCHEMA_VERSION;

fn corrupt(what: &str) -> StoreError {
    StoreError::Incompatible(format!("stored {what} is invalid"))
}

fn seq_of(v: i64) -> Seq {
    Seq(v.max(0) as u64)
}

fn client_id(s: &str) -> Result<ClientId, StoreError> {
    ClientId::new(s).map_err(|_| corrupt("client id"))
}

/// Why one round of work on the connection failed: the database (maybe
/// the connection) or what it returned.
enum Failed {
    Db(postgres::Error),
    Store(StoreError),
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Self {
        Failed::Db(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Store(e)
    }
}

/// Claims a client id's session and reads what its `WELCOME` needs, in one
/// statement (one snapshot, so the counter and the messages agree):
/// `$1` id, `$2` node, `$3` the registry's `last_ack`, `$4` its head.
const LOGIN: &str = "
    WITH s AS (
        INSERT INTO sessions (client_id, node, epoch) VALUES ($1::text, $2::text, 1)
        ON CONFLICT (client_id)
        DO UPDATE SET node = excluded.node, epoch = sessions.epoch + 1
        RETURNING epoch
    ), v AS (
        SELECT s.epoch,
               greatest((SELECT last_ack FROM acks WHERE client_id = $1::text), $3::bigint)
                   AS last_ack,
               greatest((SELECT last FROM counter), $4::bigint) AS head
        FROM s
    )
    SELECT v.epoch, v.last_ack, v.head,
           (SELECT count(*) FROM messages
             WHERE seq > v.last_ack AND seq <= v.head AND sender <> $1::text),
           pg_notify('herald_sessions', v.epoch || ' ' || $1::text)
    FROM v";

/// Forgets message ids by age over every node's rows: per client id, those
/// beyond its newest `$1` that were stored before `$2` (unix ms), and any
/// beyond its newest `$3`.
const FORGET_MIDS: &str = "
    DELETE FROM mids m USING (
        SELECT client_id, mid FROM (
            SELECT client_id, mid, unix_ms,
                   row_number() OVER (PARTITION BY client_id ORDER BY seq DESC) AS newer
            FROM mids
        ) ranked
        WHERE (newer > $1 AND unix_ms < $2) OR newer > $3
    ) old
    WHERE m.client_id = old.client_id AND m.mid = old.mid";

/// A message log and cursors in a PostgreSQL database.
pub struct PostgresStore {
    config: postgres::Config,
    /// The connection; `None` after it was lost.
    client: Option<Conn>,
    /// No reconnection attempt before this instant.
    retry_at: Instant,
    /// The wait after the next failed attempt.
    backoff: Backoff,
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
    /// Connects to the database at `url` (`postgres://…`) and creates,
    /// upgrades or checks the schema.
    ///
    /// Fails when the database is unreachable or was written by a newer
    /// Herald.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let config = conn::config(url)?;
        let mut client = conn::connect(&config).map_err(|e| {
            StoreError::Unusable(format!("cannot connect to the database: {}", one_line(&e)))
        })?;
        init_schema(client.client())?;
        Ok(PostgresStore {
            config,
            client: Some(client),
            retry_at: Instant::now(),
            backoff: Backoff::new(),
            last_sender: None,
        })
    }

    /// The live connection, reconnecting when it was lost and the backoff
    /// allows another attempt.
    fn conn(&mut self) -> Result<&mut Conn, StoreError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.lose("the connection closed");
        }
        if self.client.is_none() {
            if Instant::now() < self.retry_at {
                return Err(StoreError::Unavailable(
                    "the database is unreachable; retrying".into(),
                ));
            }
            match conn::connect(&self.config) {
                Ok(c) => {
                    log::info!("reconnected to the database");
                    self.client = Some(c);
                    self.backoff.reset();
                }
                Err(e) => {
                    self.retry_at = Instant::now() + self.backoff.failed();
                    log::debug!("cannot reconnect to the database: {}", one_line(&e));
                    return Err(StoreError::Unavailable(one_line(&e)));
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the database is unreachable".into()))
    }

    /// Drops the connection (saying so once per loss); the next request
    /// reconnects.
    fn lose(&mut self, why: &str) {
        if self.client.take().is_some() {
            log::warn!("lost the database connection ({why}); reconnecting with backoff");
        }
    }

    /// What a database error means for the caller; drops the connection
    /// when the error broke it.
    fn fail(&mut self, e: postgres::Error) -> StoreError {
        let closed = self.client.as_ref().is_none_or(|c| c.is_closed());
        if conn::is_unavailable(&e) || closed {
            self.lose(&one_line(&e));
            StoreError::Unavailable(one_line(&e))
        } else if conn::is_transient(&e) {
            StoreError::Unavailable(one_line(&e))
        } else {
            StoreError::Engine(one_line(&e))
        }
    }

    /// Whether the log holds `m` at its seq, as written.
    fn holds(&mut self, m: &Message) -> Result<bool, StoreError> {
        let seq = m.seq().0 as i64;
        self.run(|c| {
            let row = c.client().query_opt(
                "SELECT sender, unix_ms, text FROM messages WHERE seq = $1",
                &[&seq],
            )?;
            let Some(row) = row else {
                return Ok(false);
            };
            let sender: &str = row.try_get(0)?;
            let unix_ms: i64 = row.try_get(1)?;
            let text: &[u8] = row.try_get(2)?;
            Ok(sender == m.from().as_str() && unix_ms == m.unix_ms() as i64 && text == m.text())
        })
    }

    /// Runs `f` on the live connection.
    fn run<T>(&mut self, f: impl FnOnce(&mut Conn) -> Result<T, Failed>) -> Result<T, StoreError> {
        let r = f(self.conn()?);
        r.map_err(|e| match e {
            Failed::Db(e) => self.fail(e),
            Failed::Store(e) => e,
        })
    }

    /// After a `COMMIT` whose answer was lost: waits (reconnecting with
    /// backoff, for as long as it takes) until the database answers, then
    /// tells whether the batch whose first message is `first`, written by
    /// transaction `xid`, was committed. The counter cannot tell, since
    /// other nodes move it. `txid_status` can, but not alone: after a crash
    /// the id of a transaction that never reached the disk is handed out
    /// again, and may belong to a committed one. So a batch counts as
    /// committed only when its transaction id says so and its first row is
    /// there, as written (rows of one transaction commit together). A
    /// transaction the server still sees in progress (its session not yet
    /// ended) is asked about again: the server ends such a session within
    /// `idle_in_transaction_session_timeout`.
    fn settle_commit(&mut self, xid: i64, first: &Message) -> bool {
        log::warn!("the database connection broke during a commit; waiting for the database to learn its outcome");
        let mut warned = Instant::now();
        let mut pause = Backoff::new();
        loop {
            let answer = self.run(|c| {
                // An id not handed out yet in the server's present life was
                // lost with a crash before it reached the disk (a committed
                // one would have been); `txid_status` would refuse it.
                let next: i64 = c
                    .query_one("SELECT txid_snapshot_xmax(txid_current_snapshot())", &[])?
                    .try_get(0)?;
                if xid >= next {
                    return Ok(Some("aborted".to_owned()));
                }
                let row = c.query_one("SELECT txid_status($1)", &[&xid])?;
                Ok(row.try_get::<_, Option<String>>(0)?)
            });
            match answer.as_ref().map(|s| s.as_deref()) {
                Ok(Some("aborted")) => return false,
                // Committed, or forgotten (too old to say): the rows tell.
                Ok(Some("committed")) | Ok(None) => match self.holds(first) {
                    Ok(held) => return held,
                    Err(_) => std::thread::sleep(pause.failed()),
                },
                Ok(_) | Err(_) => {
                    if warned.elapsed() > Duration::from_secs(10) {
                        log::warn!("still waiting for the database to settle a commit");
                        warned = Instant::now();
                    }
                    std::thread::sleep(pause.failed());
                }
            }
        }
    }
}

impl Store for PostgresStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        self.run(|conn| {
            let head: i64 = conn
                .query_one("SELECT last FROM counter", &[])?
                .try_get(0)?;
            let mut acks = HashMap::new();
            for row in conn.query("SELECT client_id, last_ack FROM acks", &[])? {
                acks.insert(client_id(row.try_get(0)?)?, seq_of(row.try_get(1)?));
            }
            let mut mids = Vec::new();
            for row in conn.query(
                "SELECT client_id, mid, seq, unix_ms FROM mids ORDER BY seq",
                &[],
            )? {
                mids.push(MidRecord {
                    client: client_id(row.try_get(0)?)?,
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
        })
    }

    fn append(&mut self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        match write_batch(self.conn()?, batch) {
            Outcome::Committed(result) => Ok(result),
            Outcome::NotCommitted(e) => Err(self.fail(e)),
            Outcome::Raced => Err(StoreError::Unavailable(
                "a message id was being stored by another node at the same moment; retrying".into(),
            )),
            Outcome::Unknown(e, xid, result) => {
                // The answer to COMMIT was lost: it may or may not have
                // been applied. Ask the database once it answers again.
                let reason = one_line(&e);
                self.lose(&reason);
                let first = result.iter().find_map(|a| match a {
                    Appended::Stored(m) => Some(m.clone()),
                    Appended::Duplicate(_) => None,
                });
                // A transaction that stored nothing has nothing to lose.
                let applied = first.is_none_or(|m| self.settle_commit(xid, &m));
                if applied {
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
        let result = self.run(|conn| {
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
        });
        self.last_sender = last_sender;
        result
    }

    fn first_not_from(
        &mut self,
        after: Seq,
        upto: Seq,
        sender: &ClientId,
    ) -> Result<Option<Seq>, StoreError> {
        self.run(|conn| {
            let row = conn.query_opt(
                "SELECT seq FROM messages WHERE seq > $1 AND seq <= $2 AND sender <> $3
                 ORDER BY seq LIMIT 1",
                &[&(after.0 as i64), &(upto.0 as i64), &sender.as_str()],
            )?;
            Ok(row.map(|r| r.try_get(0)).transpose()?.map(seq_of))
        })
    }

    fn count_from_others(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
    ) -> Result<u64, StoreError> {
        self.run(|conn| {
            let n: i64 = conn
                .query_one(
                    "SELECT count(*) FROM messages WHERE seq > $1 AND seq <= $2 AND sender <> $3",
                    &[&(after.0 as i64), &(upto.0 as i64), &reader.as_str()],
                )?
                .try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }

    fn login(&mut self, claim: &LoginClaim) -> Result<LoginView, StoreError> {
        self.run(|conn| {
            let row = conn.query_one(
                LOGIN,
                &[
                    &claim.client.as_str(),
                    &claim.node,
                    &(claim.known_ack.0 as i64),
                    &(claim.known_head.0 as i64),
                ],
            )?;
            Ok(LoginView {
                epoch: row.try_get::<_, i64>(0)?.max(0) as u64,
                last_ack: seq_of(row.try_get(1)?),
                head: seq_of(row.try_get(2)?),
                backlog: row.try_get::<_, i64>(3)?.max(0) as u64,
            })
        })
    }

    fn session_epochs(&mut self, clients: &[ClientId]) -> Result<Vec<(ClientId, u64)>, StoreError> {
        if clients.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = clients.iter().map(ClientId::as_str).collect();
        self.run(|conn| {
            let mut out = Vec::with_capacity(ids.len());
            for row in conn.query(
                "SELECT client_id, epoch FROM sessions WHERE client_id = ANY($1::text[])",
                &[&ids],
            )? {
                let epoch: i64 = row.try_get(1)?;
                out.push((client_id(row.try_get(0)?)?, epoch.max(0) as u64));
            }
            Ok(out)
        })
    }

    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        if acks.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = acks.iter().map(|(id, _)| id.as_str()).collect();
        let seqs: Vec<i64> = acks.iter().map(|(_, s)| s.0 as i64).collect();
        // One statement: max() per id keeps a cursor from going back, also
        // when one id appears twice (or another node saved a later one).
        self.run(|conn| {
            conn.execute(
                "INSERT INTO acks (client_id, last_ack)
                 SELECT id, max(seq) FROM unnest($1::text[], $2::bigint[]) AS a(id, seq) GROUP BY id
                 ON CONFLICT (client_id)
                 DO UPDATE SET last_ack = greatest(acks.last_ack, excluded.last_ack)",
                &[&ids, &seqs],
            )?;
            Ok(())
        })
    }

    fn prune(&mut self, upto: Seq) -> Result<u64, StoreError> {
        let upto = upto.0 as i64;
        self.run(|conn| {
            let mut tx = conn.client().transaction()?;
            let deleted = tx.execute("DELETE FROM messages WHERE seq <= $1", &[&upto])?;
            tx.execute(
                "UPDATE meta SET value = $1 WHERE key = 'pruned_upto' AND value < $1",
                &[&upto],
            )?;
            tx.commit()?;
            Ok(deleted)
        })
    }

    fn limit_cut(&mut self, limits: &Limits) -> Result<Seq, StoreError> {
        self.cut_for(limits)
    }

    fn limit_prune(
        &mut self,
        upto: Seq,
        acks: &[(ClientId, Seq)],
    ) -> Result<LimitPruned, StoreError> {
        self.prune_for_limits(upto, acks)
    }

    /// Applies `policy` over every node's message ids; `cutoffs` (one
    /// node's view) are not used.
    fn forget_mids(
        &mut self,
        _cutoffs: &[(ClientId, Seq)],
        policy: &MidPolicy,
    ) -> Result<(), StoreError> {
        let keep = i64::try_from(policy.keep).unwrap_or(i64::MAX);
        let cap = i64::try_from(policy.cap.max(policy.keep)).unwrap_or(i64::MAX);
        let before =
            i64::try_from(policy.now_ms.saturating_sub(policy.max_age_ms)).unwrap_or(i64::MAX);
        self.run(|conn| {
            conn.execute(FORGET_MIDS, &[&keep, &before, &cap])?;
            Ok(())
        })
    }

    /// One round trip on the store's connection (reconnecting first when
    /// it was lost and the backoff allows).
    fn probe(&mut self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.client().simple_query("SELECT 1")?;
            Ok(())
        })
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        // Every commit is as durable as the server's synchronous_commit
        // makes it; there is nothing buffered here.
        Ok(())
    }
}
