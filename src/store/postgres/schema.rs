//! The PostgreSQL store's schema (created or checked at start in one
//! transaction) and the advisory lock that keeps one node per database.

use postgres::Client;

use crate::store::StoreError;

/// The schema this version writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// The advisory lock key that marks the database as used by a Herald node
/// (`"herald"` in ASCII).
const NODE_LOCK: i64 = 0x6865_7261_6c64;

/// The schema, created in one transaction on an empty database.
const SCHEMA: &str = "
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
";

/// Takes the session-level lock that makes this connection's server the
/// database's one node.
pub(super) fn take_node_lock(client: &mut Client) -> Result<(), StoreError> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&NODE_LOCK])?
        .try_get(0)?;
    if got {
        Ok(())
    } else {
        Err(StoreError::Unusable(
            "another Herald server uses this database; running several nodes on one database is not supported yet".into(),
        ))
    }
}

/// Creates the schema on an empty database, or checks its version.
pub(super) fn init_schema(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    let has_meta: bool = tx
        .query_one("SELECT to_regclass('meta') IS NOT NULL", &[])?
        .try_get(0)?;
    if has_meta {
        let version: Option<i64> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])?
            .map(|r| r.try_get(0))
            .transpose()?;
        match version {
            Some(SCHEMA_VERSION) => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Incompatible(format!(
                    "the database has schema version {v}, written by a newer Herald; this server reads version {SCHEMA_VERSION}; refusing to use it"
                )))
            }
            _ => {
                return Err(StoreError::Incompatible(
                    "the database holds a table `meta` that is not Herald's; refusing to use it"
                        .into(),
                ))
            }
        }
    } else {
        log::info!("creating the Herald schema (version {SCHEMA_VERSION})");
        tx.batch_execute(SCHEMA)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1)",
            &[&SCHEMA_VERSION],
        )?;
    }
    tx.commit()?;
    Ok(())
}
