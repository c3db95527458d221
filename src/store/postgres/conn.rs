//! Connections to PostgreSQL: how they are configured and opened, how long
//! to wait before the next attempt, and which errors mean "the database is
//! away" rather than "the database said no".

use std::collections::HashMap;
use std::time::Duration;

use postgres::types::{BorrowToSql, ToSql};
use postgres::{Client, GenericClient, NoTls, Row, RowIter, Statement};

use crate::store::StoreError;

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server lets one of our sessions sit inside a transaction
/// without a statement before it ends that session. Our transactions never
/// wait on anything but the network, so this only fires when the
/// connection died in the middle of one: the server then lets go of the
/// counter row (which every node's appends queue on) within this time,
/// instead of when its TCP stack gives up on the peer (hours by default).
const IDLE_IN_TRANSACTION_MS: u32 = 10_000;

/// Parses `url` (`postgres://…`) into the settings every connection uses.
pub(super) fn config(url: &str) -> Result<postgres::Config, StoreError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Unusable(format!("bad --database-url: {e}")))?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .application_name("herald");
    Ok(config)
}

/// Opens a connection and sets it up for the store.
pub(super) fn connect(config: &postgres::Config) -> Result<Conn, postgres::Error> {
    let mut client = config.connect(NoTls)?;
    // No statement or lock timeout of the database's defaults: a batch that
    // waits for the counter row must wait, not fail (a refused batch is an
    // `ERR` its clients would drop their lines for).
    client.batch_execute(&format!(
        "SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS};
         SET statement_timeout = 0; SET lock_timeout = 0"
    ))?;
    Ok(Conn {
        client,
        statements: HashMap::new(),
    })
}

/// The statements prepared on one connection, by their text.
pub(super) type Statements = HashMap<&'static str, Statement>;

/// `sql` as a statement prepared on `client`'s connection: prepared the
/// first time only (a query by text costs one more round trip each time,
/// and the append's round trips hold the counter row every node waits on).
pub(super) fn prepared(
    client: &mut impl GenericClient,
    statements: &mut Statements,
    sql: &'static str,
) -> Result<Statement, postgres::Error> {
    if let Some(s) = statements.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql)?;
    statements.insert(sql, s.clone());
    Ok(s)
}

/// The store's connection and the statements prepared on it.
pub(super) struct Conn {
    client: Client,
    statements: Statements,
}

impl Conn {
    /// Whether the connection is known to be gone.
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The client and the prepared statements apart, for a transaction.
    pub(super) fn split(&mut self) -> (&mut Client, &mut Statements) {
        (&mut self.client, &mut self.statements)
    }

    /// The client itself, for statements run too rarely to keep prepared.
    pub(super) fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, postgres::Error> {
        let s = prepared(&mut self.client, &mut self.statements, sql)?;
        self.client.query(&s, params)
    }

    pub(super) fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, postgres::Error> {
        let s = prepared(&mut self.client, &mut self.statements, sql)?;
        self.client.query_one(&s, params)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, postgres::Error> {
        let s = prepared(&mut self.client, &mut self.statements, sql)?;
        self.client.query_opt(&s, params)
    }

    pub(super) fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, postgres::Error> {
        let s = prepared(&mut self.client, &mut self.statements, sql)?;
        self.client.execute(&s, params)
    }

    pub(super) fn query_raw<P, I>(
        &mut self,
        sql: &'static str,
        params: I,
    ) -> Result<RowIter<'_>, postgres::Error>
    where
        P: BorrowToSql,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let s = prepared(&mut self.client, &mut self.statements, sql)?;
        self.client.query_raw(&s, params)
    }
}

/// The wait before the next connection attempt: 100 ms, doubling up to 2 s,
/// back to 100 ms after a success.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            next: FIRST_BACKOFF,
        }
    }

    /// The wait after a failed attempt (and doubles the next one).
    pub(super) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    /// An attempt succeeded: the next failure waits the shortest time again.
    pub(super) fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

/// An error as one line: PostgreSQL's details can span several.
pub(super) fn one_line(e: &postgres::Error) -> String {
    let s = match e.as_db_error() {
        Some(db) => format!("database error: {}", db.message()),
        None => e.to_string(),
    };
    s.replace(['\n', '\r'], "; ")
}

/// Whether `e` says the database cannot serve us right now (the connection
/// broke, the server is shutting down or starting, no connection slot, a
/// read-only standby) rather than refusing this request: the same request
/// may succeed once it is back.
pub(super) fn is_unavailable(e: &postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        // No answer from the server (a closed connection, an I/O error),
        // unlike a value that did not convert.
        return e.is_closed()
            || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    };
    let code = db.code().code();
    code.starts_with("08") // connection exception
        || code.starts_with("57P") // shutting down, crashed, starting up
        || code == "53300" // too many connections
        || code == "25006" // read-only transaction (a standby)
}

/// Whether `e` failed this one statement for a passing reason (cancelled
/// or timed out, a lock not available, a deadlock or serialisation
/// failure): the connection is fine, and the same request may succeed
/// when tried again, so it must not be refused for good.
pub(super) fn is_transient(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        matches!(
            db.code().code(),
            "57014" // query cancelled (statement timeout, an administrator)
                | "55P03" // lock not available (lock timeout)
                | "40001" // serialisation failure
                | "40P01" // deadlock detected
        )
    })
}

/// Whether an error answering `COMMIT` proves the transaction was not
/// committed: only a plain `ERROR` does. A `FATAL` ends the session
/// without saying whether the commit was written before, and no answer at
/// all (a session ended while waiting for a synchronous standby, after
/// the commit was written locally, just closes) says nothing: both are
/// asked about.
pub(super) fn refused_commit(e: &postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(postgres::error::Severity::Error))
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if is_unavailable(&e) || is_transient(&e) {
            StoreError::Unavailable(one_line(&e))
        } else {
            StoreError::Engine(one_line(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_two_seconds_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..7).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.failed(), FIRST_BACKOFF);
    }

    #[test]
    fn a_bad_url_is_unusable() {
        assert!(matches!(
            config("postgres://a@b:notaport/db"),
            Err(StoreError::Unusable(_))
        ));
    }
}
