//! The PostgreSQL store's schema: created on an empty database, upgraded
//! from an older version, or checked, at start, in one transaction that
//! nodes starting at once take turns on.

use postgres::{Client, IsolationLevel, Transaction};

use crate::store::StoreError;

/// The schema this version writes and reads.
pub const SCHEMA_VERSION: i64 = 3;

/// The transaction-level advisory lock every node takes around creating,
/// upgrading or checking the schema, so that nodes starting at once on an
/// empty database do not both create it (`"hrldsch"` in ASCII).
const SCHEMA_LOCK: i64 = 0x68_726c_6473_6368;

/// The session-level advisory lock a version-1 server holds while it runs
/// (`"herald"` in ASCII): an upgrade under a running one is refused.
const V1_NODE_LOCK: i64 = 0x6865_7261_6c64;

/// Version 1: the log, the message ids, the cursors.
const SCHEMA_V1: &str = "
    CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL);
    CREATE TABLE counter (
        id boolean PRIMARY KEY DEFAULT true CHECK (id),
        last bigint NOT NULL
    );
    CREATE TABLE messages (
        seq bigint PRIMARY KEY,
        unix_ms bigint NOT NULL,
        sender text NOT NULL,
        text bytea NOT NULL
    );
    CREATE TABLE mids (
        client_id text NOT NULL,
        mid text NOT NULL,
        seq bigint NOT NULL,
        unix_ms bigint NOT NULL,
        PRIMARY KEY (client_id, mid)
    );
    CREATE INDEX mids_by_age ON mids (client_id, seq);
    CREATE TABLE acks (client_id text PRIMARY KEY, last_ack bigint NOT NULL);
    INSERT INTO counter (last) VALUES (0);
    INSERT INTO meta (key, value) VALUES ('pruned_upto', 0);
    INSERT INTO meta (key, value) VALUES ('schema_version', 1);
";

/// Version 1 to 2: which node holds each client id's session, under which
/// claim number (several nodes on one database).
const V1_TO_V2: &str = "
    CREATE TABLE sessions (
        client_id text PRIMARY KEY,
        node text NOT NULL,
        epoch bigint NOT NULL
    );
    UPDATE meta SET value = 2 WHERE key = 'schema_version';
";

/// Version 2 to 3: what each client id lost to a retention limit. Nodes of
/// version 2 still running go on (they never read it).
const V2_TO_V3: &str = "
    CREATE TABLE losses (
        client_id text PRIMARY KEY,
        lost bigint NOT NULL,
        lost_upto bigint NOT NULL
    );
    UPDATE meta SET value = 3 WHERE key = 'schema_version';
";

/// Creates the schema on an empty database, upgrades an older one, or
/// checks its version; refuses a database of a newer Herald, one whose
/// `meta` table is not Herald's, and an upgrade while a version-1 server
/// runs on it.
pub(super) fn init_schema(client: &mut Client) -> Result<(), StoreError> {
    // Read committed: a node that waited for the lock must see the schema
    // the node before it committed.
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?
        .try_get(0)?;
    let version = if has_meta {
        tx.query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?
            .map(|r| r.try_get::<_, i64>(0))
            .transpose()?
    } else {
        log::info!("creating the Herald schema (version {SCHEMA_VERSION})");
        tx.batch_execute(SCHEMA_V1)?;
        Some(1)
    };
    match version {
        Some(SCHEMA_VERSION) => {}
        Some(1) => {
            if has_meta {
                refuse_a_running_v1_server(&mut tx)?;
                log::info!("upgrading the Herald schema from version 1 to {SCHEMA_VERSION}");
            }
            tx.batch_execute(V1_TO_V2)?;
            tx.batch_execute(V2_TO_V3)?;
        }
        Some(2) => {
            log::info!("upgrading the Herald schema from version 2 to {SCHEMA_VERSION}");
            tx.batch_execute(V2_TO_V3)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(StoreError::Incompatible(format!(
                "the database has schema version {v}, written by a newer Herald; this server reads version {SCHEMA_VERSION}; refusing to use it"
            )))
        }
        _ => {
            return Err(StoreError::Incompatible(
                "the database holds a table `meta` that is not Herald's; refusing to use it".into(),
            ))
        }
    }
    tx.commit()?;
    Ok(())
}

/// A version-1 server numbers messages on its own: the database must not
/// become shared while one runs on it.
fn refuse_a_running_v1_server(tx: &mut Transaction<'_>) -> Result<(), StoreError> {
    let free: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&V1_NODE_LOCK])?
        .try_get(0)?;
    if free {
        Ok(())
    } else {
        Err(StoreError::Unusable(
            "a Herald server of an older version uses this database; stop it before starting this one".into(),
        ))
    }
}
