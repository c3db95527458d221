//! `server inspect` on a data directory: the store read in one read-only
//! snapshot, beside a server that may be running on it.
//!
//! The database is opened read-only and never created. A WAL-mode reader
//! takes no lock a writer waits for, so the running server's commits go on
//! while the snapshot is read. When no server holds `herald.lock` and the
//! `-wal` file is absent or empty, everything is in `herald.db` itself: it
//! is then opened `immutable`, so that reading a stopped store leaves no
//! `-wal` or `-shm` file behind.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{SqliteStore, SCHEMA_VERSION};
use crate::store::inspect::{unsigned, Pairs, Report, Tallies};
use crate::store::StoreError;
use crate::types::Seq;

/// The files of a store whose sizes are reported.
const FILES: [&str; 3] = ["herald.db", "herald.db-wal", "herald.db-shm"];

/// How long a read waits for a lock SQLite holds only for moments (while a
/// writer's WAL is recovered after a crash, for instance).
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl SqliteStore {
    /// Reads what the store in `dir` holds, without writing to it.
    ///
    /// Fails with one line when `dir` is missing, is not a directory, holds
    /// no `herald.db`, or holds a database that is not a Herald store this
    /// version reads.
    pub fn inspect(dir: &Path) -> Result<Report, StoreError> {
        let shown = dir.display();
        if !dir.is_dir() {
            let why = if dir.exists() {
                "is not a directory"
            } else {
                "does not exist"
            };
            return Err(StoreError::Unusable(format!(
                "data directory {shown} {why}"
            )));
        }
        let path = dir.join(FILES[0]);
        if !path.is_file() {
            return Err(StoreError::Unusable(format!(
                "{shown} is not a Herald data directory (it holds no {})",
                FILES[0]
            )));
        }
        let wal = std::fs::metadata(dir.join(FILES[1])).map_or(0, |m| m.len());
        let immutable = wal == 0 && !server_running(dir);
        let conn = open_read_only(&path, immutable)?;
        conn.busy_timeout(BUSY_WAIT)?;
        let refuse = |why: String| {
            StoreError::Incompatible(format!("{} {why}; refusing to read it", path.display()))
        };
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| refuse(format!("cannot be read as a database ({e})")))?;
        if version > SCHEMA_VERSION {
            return Err(refuse(format!(
                "has schema version {version}, written by a newer Herald (this one reads up to {SCHEMA_VERSION})"
            )));
        }
        if version < 1 {
            return Err(refuse("is not a Herald database".into()));
        }
        // One read transaction: every figure comes from the same snapshot.
        conn.execute_batch("BEGIN")?;
        let report = read(&conn, version, dir)?;
        conn.execute_batch("COMMIT")?;
        Ok(report)
    }
}

/// Whether a server holds the store's `herald.lock`: probed with a shared
/// lock, let go at once (a server starting at that moment retries).
fn server_running(dir: &Path) -> bool {
    let Ok(lock) = std::fs::File::open(dir.join("herald.lock")) else {
        return false;
    };
    match lock.try_lock_shared() {
        Ok(()) => {
            let _ = lock.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Opens `path` read-only through a `file:` URI (never creating it).
fn open_read_only(path: &Path, immutable: bool) -> Result<Connection, StoreError> {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().into_owned().into_bytes();
    let mut uri = format!("file:{}?mode=ro", uri_escape(&bytes));
    if immutable {
        uri.push_str("&immutable=1");
    }
    Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Engine(format!("cannot open {} read-only: {e}", path.display())))
}

/// A path's bytes with every one but unreserved ones and `/`
/// percent-encoded, as a URI path.
fn uri_escape(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads the figures inside the open read transaction.
fn read(conn: &Connection, version: i64, dir: &Path) -> Result<Report, StoreError> {
    let (max, messages, min): (Option<i64>, i64, Option<i64>) = conn.query_row(
        "SELECT max(seq), count(*), min(seq) FROM messages",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let pruned: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'pruned_upto'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let pruned_upto = Seq(pruned.and_then(|v| v.parse().ok()).unwrap_or(0));
    let pairs = |sql: &str| -> Result<Pairs, StoreError> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let tallies = Tallies::new(
        pairs("SELECT client_id, last_ack FROM acks")?,
        pairs("SELECT sender, count(*) FROM messages GROUP BY sender")?,
        // Version 1 had no message ids.
        match version {
            1 => Vec::new(),
            _ => pairs("SELECT client_id, count(*) FROM mids GROUP BY client_id")?,
        },
    )
    .with_losses(match version {
        // Versions before 3 recorded no losses.
        1 | 2 => Vec::new(),
        _ => {
            let mut stmt = conn.prepare("SELECT client_id, lost, lost_upto FROM losses")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        }
    });
    let mids = tallies.mids_total();
    let mut count =
        conn.prepare("SELECT count(*) FROM messages WHERE seq > ?1 AND sender != ?2")?;
    let ids = tallies.rows(&[], |id, after| {
        count
            .query_row(params![after.0 as i64, id], |r| r.get::<_, i64>(0))
            .map(unsigned)
    })?;
    let size = FILES
        .iter()
        .map(|f| {
            let bytes = std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
            ((*f).to_owned(), bytes)
        })
        .collect();
    Ok(Report {
        kind: "sqlite",
        location: dir.display().to_string(),
        schema_version: version,
        head: Seq(unsigned(max.unwrap_or(0))).max(pruned_upto),
        messages: unsigned(messages),
        oldest: min.map(|s| Seq(unsigned(s))),
        pruned_upto,
        mids,
        size,
        ids,
        sessions: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Message;
    use crate::store::{MidRecord, Store, SyncPolicy};
    use crate::types::ClientId;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).unwrap()
    }

    fn msg(seq: u64, from: &str) -> Message {
        Message::new(Seq(seq), seq, id(from), b"t")
    }

    #[test]
    fn an_empty_store_reports_nothing_stored() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), SyncPolicy::None).unwrap());
        let r = SqliteStore::inspect(dir.path()).unwrap();
        assert_eq!((r.head, r.messages, r.oldest, r.mids), (Seq(0), 0, None, 0));
        assert!(r.ids.is_empty() && r.sessions.is_empty());
        assert_eq!(r.schema_version, SCHEMA_VERSION);
    }

    #[test]
    fn a_store_open_in_this_process_is_read_and_pruning_shows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        let mid = MidRecord {
            client: id("a"),
            mid: "m".into(),
            seq: Seq(4),
            unix_ms: 4,
        };
        s.write(
            &[msg(1, "a"), msg(2, "b"), msg(3, "b"), msg(4, "a")],
            &[mid],
        )
        .unwrap();
        s.save_acks(&[(id("a"), Seq(2))]).unwrap();
        s.prune(Seq(2)).unwrap();
        // The writer still has it open: the read goes through its WAL.
        let r = SqliteStore::inspect(dir.path()).unwrap();
        assert_eq!((r.head, r.messages, r.oldest), (Seq(4), 2, Some(Seq(3))));
        assert_eq!((r.pruned_upto, r.mids), (Seq(2), 1));
        let rows: Vec<_> = r
            .ids
            .iter()
            .map(|i| (i.id.as_str(), i.last_ack, i.backlog, i.sent, i.mids))
            .collect();
        assert_eq!(rows, [("a", Some(Seq(2)), 1, 1, 1), ("b", None, 1, 1, 0)]);
        // Everything pruned: the head stays.
        s.prune(Seq(4)).unwrap();
        let r = SqliteStore::inspect(dir.path()).unwrap();
        assert_eq!((r.head, r.messages, r.oldest), (Seq(4), 0, None));
    }

    #[test]
    fn a_stopped_store_with_an_empty_wal_left_over_gets_no_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        s.write(&[msg(1, "a")], &[]).unwrap();
        assert!(server_running(dir.path()));
        drop(s);
        assert!(!server_running(dir.path()));
        // A stop cut short after the checkpoint: an empty WAL, no -shm.
        std::fs::write(dir.path().join("herald.db-wal"), b"").unwrap();
        let _ = std::fs::remove_file(dir.path().join("herald.db-shm"));
        assert_eq!(SqliteStore::inspect(dir.path()).unwrap().head, Seq(1));
        assert!(!dir.path().join("herald.db-shm").exists());
    }

    #[test]
    fn a_version_1_store_is_read_without_upgrading_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        s.write(&[msg(1, "a")], &[]).unwrap();
        // Version 1 is version 3 without the mids and losses.
        s.conn
            .execute_batch("DROP TABLE mids; DROP TABLE losses; PRAGMA user_version = 1;")
            .unwrap();
        drop(s);
        let r = SqliteStore::inspect(dir.path()).unwrap();
        assert_eq!((r.schema_version, r.head, r.mids), (1, Seq(1), 0));
        let v: i64 = Connection::open(dir.path().join("herald.db"))
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }

    #[test]
    fn a_version_2_store_is_read_without_losses_and_a_version_3_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        s.write(&[msg(1, "a"), msg(2, "a")], &[]).unwrap();
        let loss = crate::store::Loss {
            client: id("b"),
            after: Seq(0),
            upto: Seq(1),
            lost: 1,
        };
        s.record_losses(&[loss]).unwrap();
        let r = SqliteStore::inspect(dir.path()).unwrap();
        let b = r.ids.iter().find(|i| i.id == "b").unwrap();
        assert_eq!(
            (b.lost, b.lost_upto, b.last_ack),
            (1, Some(Seq(1)), Some(Seq(1)))
        );
        // Version 2 is version 3 without the losses.
        s.conn
            .execute_batch("DROP TABLE losses; PRAGMA user_version = 2;")
            .unwrap();
        drop(s);
        let r = SqliteStore::inspect(dir.path()).unwrap();
        assert_eq!(r.schema_version, 2);
        let b = r.ids.iter().find(|i| i.id == "b").unwrap();
        assert_eq!((b.lost, b.lost_upto), (0, None));
    }

    #[test]
    fn odd_characters_in_the_path_are_escaped_in_the_uri() {
        assert_eq!(uri_escape(b"/a b/c?d#e%f\xff"), "/a%20b/c%3Fd%23e%25f%FF");
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a b?#%");
        drop(SqliteStore::open(&odd, SyncPolicy::None).unwrap());
        assert_eq!(SqliteStore::inspect(&odd).unwrap().head, Seq(0));
    }
}
