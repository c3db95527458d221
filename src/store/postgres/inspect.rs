//! `server inspect` on a PostgreSQL database: Herald's tables read in one
//! read-only transaction (`SET TRANSACTION … READ ONLY`, repeatable read,
//! so every figure comes from one snapshot), beside running nodes.
//!
//! A read-only transaction takes no lock a node's commit waits for: it
//! reads `counter` without locking its row, and a node's append only
//! updates that row.

use postgres::{Client, NoTls, Transaction};

use super::{conn, Failed, PostgresStore, SCHEMA_VERSION};
use crate::store::inspect::{id_order, unsigned, Pairs, Report, SessionRow, Tallies};
use crate::store::StoreError;
use crate::types::Seq;

/// Herald's tables, whose sizes are reported.
const TABLES: [&str; 6] = ["messages", "mids", "acks", "sessions", "counter", "meta"];

/// The sizes of Herald's tables (with their indexes and TOAST data); a
/// table the schema does not have (yet) counts 0.
const SIZES: &str = "SELECT t, coalesce(pg_total_relation_size(to_regclass(t)), 0)
                     FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) ORDER BY i";

impl PostgresStore {
    /// Reads what the Herald database at `url` holds, without writing to
    /// it.
    ///
    /// Fails with one line when the database is unreachable, holds no
    /// Herald schema, or holds a newer one.
    pub fn inspect(url: &str) -> Result<Report, StoreError> {
        let mut config = conn::config(url)?;
        config.application_name("herald-inspect");
        let location = location(&config);
        let mut client = config.connect(NoTls).map_err(|e| {
            StoreError::Unusable(format!(
                "cannot connect to the database: {}",
                conn::one_line(&e)
            ))
        })?;
        read(&mut client, location).map_err(|e| match e {
            Failed::Db(e) => StoreError::Engine(conn::one_line(&e)),
            Failed::Store(e) => e,
        })
    }
}

/// `host:port/database` of `config`'s first host (no user, no password).
fn location(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("{host}:{port}/{db}")
}

/// The schema version, or a refusal when the database holds no Herald
/// schema this version reads.
fn schema_version(tx: &mut Transaction<'_>) -> Result<i64, Failed> {
    let refuse = |why: String| Failed::Store(StoreError::Incompatible(why));
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?
        .try_get(0)?;
    if !has_meta {
        return Err(refuse(
            "the database holds no Herald schema (no table `meta`)".into(),
        ));
    }
    let version = tx
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .ok()
        .flatten()
        .and_then(|r| r.try_get::<_, i64>(0).ok());
    match version {
        Some(v) if v > SCHEMA_VERSION => Err(refuse(format!(
            "the database has schema version {v}, written by a newer Herald; this one reads up to {SCHEMA_VERSION}"
        ))),
        Some(v) if v >= 1 => Ok(v),
        _ => Err(refuse(
            "the database holds a table `meta` that is not Herald's".into(),
        )),
    }
}

/// Reads every figure in one read-only snapshot.
fn read(client: &mut Client, location: String) -> Result<Report, Failed> {
    let mut tx = client.transaction()?;
    tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
    let version = schema_version(&mut tx)?;
    let head: i64 = tx.query_one("SELECT last FROM counter", &[])?.try_get(0)?;
    let row = tx.query_one("SELECT count(*), min(seq) FROM messages", &[])?;
    let (messages, oldest): (i64, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
    let pruned: Option<i64> = tx
        .query_opt("SELECT value FROM meta WHERE key = 'pruned_upto'", &[])?
        .map(|r| r.try_get(0))
        .transpose()?;
    let tallies = Tallies::new(
        pairs(&mut tx, "SELECT client_id, last_ack FROM acks")?,
        pairs(
            &mut tx,
            "SELECT sender, count(*) FROM messages GROUP BY sender",
        )?,
        pairs(
            &mut tx,
            "SELECT client_id, count(*) FROM mids GROUP BY client_id",
        )?,
    );
    let tallies = tallies.with_losses(match version {
        // Versions before 3 recorded no losses.
        ..=2 => Vec::new(),
        _ => {
            let mut rows = Vec::new();
            for r in tx.query("SELECT client_id, lost, lost_upto FROM losses", &[])? {
                rows.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
            rows
        }
    });
    let mids = tallies.mids_total();
    let sessions = sessions(&mut tx, version)?;
    let count = tx.prepare("SELECT count(*) FROM messages WHERE seq > $1 AND sender <> $2")?;
    let ids = tallies.rows(&sessions, |id, after| -> Result<u64, Failed> {
        let n: i64 = tx
            .query_one(&count, &[&(after.0 as i64), &id])?
            .try_get(0)?;
        Ok(unsigned(n))
    })?;
    let size = sizes(&mut tx)?;
    tx.commit()?;
    Ok(Report {
        kind: "postgresql",
        location,
        schema_version: version,
        head: Seq(unsigned(head)),
        messages: unsigned(messages),
        oldest: oldest.map(|s| Seq(unsigned(s))),
        pruned_upto: Seq(unsigned(pruned.unwrap_or(0))),
        mids,
        size,
        ids,
        sessions,
    })
}

/// The `(text, bigint)` rows of `sql`.
fn pairs(tx: &mut Transaction<'_>, sql: &str) -> Result<Pairs, Failed> {
    let rows = tx.query(sql, &[])?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, postgres::Error>>()?)
}

/// The `sessions` rows, sorted by id (version 1 had no such table).
fn sessions(tx: &mut Transaction<'_>, version: i64) -> Result<Vec<SessionRow>, Failed> {
    if version < 2 {
        return Ok(Vec::new());
    }
    let mut sessions = Vec::new();
    for r in tx.query("SELECT client_id, epoch, node FROM sessions", &[])? {
        sessions.push(SessionRow {
            id: r.try_get(0)?,
            epoch: unsigned(r.try_get(1)?),
            node: r.try_get(2)?,
        });
    }
    sessions.sort_by(|a, b| id_order(&a.id, &b.id));
    Ok(sessions)
}

/// The size of each of Herald's tables.
fn sizes(tx: &mut Transaction<'_>) -> Result<Vec<(String, u64)>, Failed> {
    let names: Vec<&str> = TABLES.to_vec();
    let mut size = Vec::with_capacity(TABLES.len());
    for r in tx.query(SIZES, &[&names])? {
        size.push((r.try_get::<_, String>(0)?, unsigned(r.try_get(1)?)));
    }
    Ok(size)
}
