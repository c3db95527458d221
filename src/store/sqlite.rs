//! The durable store: SQLite in WAL mode, in a data directory of its own.
//!
//! Layout of the directory: `herald.db` (plus SQLite's `-wal` and `-shm`
//! files while running) and `herald.lock`, which a running server holds
//! locked so a second server cannot open the same store.
//!
//! Tables: `messages(seq, unix_ms, sender, text)`, `acks(client_id,
//! last_ack)`, `mids(client_id, mid, seq, unix_ms)`, `losses(client_id,
//! lost, lost_upto)` and `meta(key, value)`; `PRAGMA user_version` holds the
//! schema version. Everything can be read with the `sqlite3` shell.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

mod inspect;
mod limits;
mod read;

use super::{
    number_from, Appended, LimitPruned, Limits, Loss, MidPolicy, MidRecord, NewMessage, Recovered,
    Store, StoreError,
};
use crate::net::{Backlog, Message};
use crate::types::{ClientId, Seq};

/// The schema this version writes and reads.
pub const SCHEMA_VERSION: i64 = 3;

/// Schema version 3 added what each id lost to a retention limit.
const LOSSES_TABLE: &str = "CREATE TABLE losses (
        client_id TEXT PRIMARY KEY,
        lost INTEGER NOT NULL,
        lost_upto INTEGER NOT NULL
    );";

/// Schema version 2 added the message ids clients send with `SEND`.
const MIDS_TABLE: &str = "CREATE TABLE mids (
        client_id TEXT NOT NULL,
        mid TEXT NOT NULL,
        seq INTEGER NOT NULL,
        unix_ms INTEGER NOT NULL,
        PRIMARY KEY (client_id, mid)
    ) WITHOUT ROWID;
    CREATE INDEX mids_by_age ON mids (client_id, seq);";

/// How long opening waits for another process's lock on the directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// When a commit reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync at every commit (`synchronous=FULL`): a confirmed message
    /// survives a crash of the process and of the machine.
    Always,
    /// Written to the OS at every commit, fsynced only when SQLite
    /// checkpoints (`synchronous=OFF`): survives a crash of the process, not
    /// of the machine.
    None,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// A message log and cursors in `<dir>/herald.db`.
pub struct SqliteStore {
    conn: Connection,
    /// The sender of the last row read: runs of rows from one sender reuse
    /// it instead of allocating an id per row.
    last_sender: Option<ClientId>,
    /// The buffer backlogs are read into, reused from read to read (at most
    /// one read's bytes: `max_bytes`, or 256 KiB up front).
    frames: bytes::BytesMut,
    /// The highest seq stored, once known (this store is the one writer).
    head: Option<Seq>,
    /// Bytes of stored message text, once measured (for
    /// `--retain-max-bytes`); kept up to date by appends and prunes.
    text_bytes: Option<u64>,
    path: PathBuf,
    /// Held (locked) for as long as the store is open.
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn unusable(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Unusable(format!("{what}: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Fails, never starts empty over something else, when `dir` is not a
    /// usable directory, another server holds it, or the database in it is
    /// not a Herald store of this schema version.
    pub fn open(dir: &Path, sync: SyncPolicy) -> Result<SqliteStore, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::Unusable(format!(
                "data directory {} exists and is not a directory",
                dir.display()
            )));
        }
        // Owner only: the directory (when created here), the database and
        // the lock file; SQLite gives its -wal and -shm files the
        // database's mode.
        let mut dir_builder = std::fs::DirBuilder::new();
        dir_builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir_builder, 0o700);
        dir_builder.create(dir).map_err(unusable(format!(
            "cannot create data directory {}",
            dir.display()
        )))?;
        let private = || {
            let mut options = OpenOptions::new();
            options.create(true).truncate(false).write(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
        };
        let lock_path = dir.join("herald.lock");
        let lock = private().open(&lock_path).map_err(unusable(format!(
            "data directory {} is not writable",
            dir.display()
        )))?;
        // A server that has just exited may hold the lock for a few more
        // milliseconds while the kernel tears it down: a restart right
        // after it waits for that instead of failing.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError::Unusable(format!(
                        "data directory {} is in use by another server",
                        dir.display()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(unusable(format!("cannot lock {}", lock_path.display()))(e))
                }
            }
        }

        let path = dir.join("herald.db");
        let existed = path.exists();
        if !existed {
            // An empty file is an empty database to SQLite.
            private()
                .open(&path)
                .map_err(unusable(format!("cannot create {}", path.display())))?;
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Engine(format!("cannot open {}: {e}", path.display())))?;
        let mut store = SqliteStore {
            conn,
            last_sender: None,
            frames: bytes::BytesMut::new(),
            head: None,
            text_bytes: None,
            path,
            _lock: lock,
        };
        store.init(existed, sync)?;
        Ok(store)
    }

    fn init(&mut self, existed: bool, sync: SyncPolicy) -> Result<(), StoreError> {
        let shown = self.path.display().to_string();
        let not_herald =
            |why: &str| StoreError::Incompatible(format!("{shown} {why}; refusing to use it"));
        // Reading the version is the first access: a file that is not a
        // database fails here.
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| not_herald(&format!("cannot be read as a database ({e})")))?;
        let tables: i64 = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| not_herald(&format!("cannot be read as a database ({e})")))?;
        if version == 0 && tables > 0 {
            return Err(not_herald("is a database of some other program"));
        }
        if !(0..=SCHEMA_VERSION).contains(&version) {
            return Err(StoreError::Incompatible(format!(
                "{shown} has schema version {version}, this server reads version {SCHEMA_VERSION}; refusing to use it"
            )));
        }
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Engine(format!(
                "cannot switch {shown} to WAL mode (got {mode})"
            )));
        }
        // Reads of the log go through a memory map instead of a read()
        // call and a copy per page; a bigger page cache keeps the recent log.
        self.conn
            .execute_batch("PRAGMA mmap_size = 1073741824; PRAGMA cache_size = -32768;")?;
        let synchronous = match sync {
            SyncPolicy::Always => "FULL",
            SyncPolicy::None => "OFF",
        };
        self.conn
            .execute_batch(&format!("PRAGMA synchronous = {synchronous};"))?;
        if version == 0 {
            if existed {
                log::info!("initialising empty database {shown}");
            }
            self.conn.execute_batch(&format!(
                "BEGIN;
                 CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE messages (
                     seq INTEGER PRIMARY KEY,
                     unix_ms INTEGER NOT NULL,
                     sender TEXT NOT NULL,
                     text TEXT NOT NULL
                 );
                 CREATE TABLE acks (client_id TEXT PRIMARY KEY, last_ack INTEGER NOT NULL);
                 {MIDS_TABLE}
                 {LOSSES_TABLE}
                 INSERT INTO meta (key, value) VALUES ('pruned_upto', '0');
                 PRAGMA user_version = {SCHEMA_VERSION};
                 COMMIT;"
            ))?;
        }
        if version == 1 || version == 2 {
            // Version 2 added message ids, version 3 retention losses.
            let mids = if version == 1 { MIDS_TABLE } else { "" };
            log::info!("{shown}: upgrading the schema from version {version} to {SCHEMA_VERSION}");
            self.conn.execute_batch(&format!(
                "BEGIN; {mids} {LOSSES_TABLE} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?;
        }
        Ok(())
    }

    /// The highest seq stored (or pruned): numbering goes on after it.
    fn head(&mut self) -> Result<Seq, StoreError> {
        if let Some(h) = self.head {
            return Ok(h);
        }
        let max: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM messages", [], |r| r.get(0))?;
        let h = Seq(max.unwrap_or(0).max(0) as u64).max(self.pruned_upto()?);
        self.head = Some(h);
        Ok(h)
    }

    /// Stores messages that already have their seqs, with their mids, in
    /// one transaction.
    fn write(&mut self, batch: &[Message], mids: &[MidRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            // A mid stored again after it was forgotten points at the new copy.
            let mut remember = tx.prepare_cached(
                "INSERT OR REPLACE INTO mids (client_id, mid, seq, unix_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for m in mids {
                remember.execute(params![
                    m.client.as_str(),
                    m.mid,
                    m.seq.0 as i64,
                    m.unix_ms as i64
                ])?;
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (seq, unix_ms, sender, text) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for m in batch {
                // The text was checked to be UTF-8 when it was received.
                let text = std::str::from_utf8(m.text()).map_err(|_| corrupt("text"))?;
                insert.execute(params![
                    m.seq().0 as i64,
                    m.unix_ms() as i64,
                    m.from().as_str(),
                    text
                ])?;
            }
        }
        tx.commit()?;
        if let Some(last) = batch.last() {
            self.head = Some(last.seq());
        }
        if let Some(b) = self.text_bytes.as_mut() {
            *b += batch.iter().map(|m| m.text().len() as u64).sum::<u64>();
        }
        Ok(())
    }

    /// Forgets, per client id, the mids stored under a seq below its cutoff.
    fn forget_mids_below(&mut self, cutoffs: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        // One range delete per client id on the index (client_id, seq).
        let tx = self.conn.transaction()?;
        {
            let mut forget =
                tx.prepare_cached("DELETE FROM mids WHERE client_id = ?1 AND seq < ?2")?;
            for (client, cutoff) in cutoffs {
                forget.execute(params![client.as_str(), cutoff.0 as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn pruned_upto(&self) -> Result<Seq, StoreError> {
        let v: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'pruned_upto'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        v.unwrap_or_default()
            .parse::<u64>()
            .map(Seq)
            .map_err(|_| StoreError::Incompatible("meta.pruned_upto is not a number".into()))
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Incompatible(format!("stored {what} is invalid"))
}

impl Store for SqliteStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        self.head = None;
        let head = self.head()?;
        let mut acks = std::collections::HashMap::new();
        let mut stmt = self.conn.prepare("SELECT client_id, last_ack FROM acks")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (id, ack) = row?;
            let id = ClientId::new(&id).map_err(|_| corrupt("client id"))?;
            acks.insert(id, Seq(ack.max(0) as u64));
        }
        let mut mids = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT client_id, mid, seq, unix_ms FROM mids ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        for row in rows {
            let (client, mid, seq, unix_ms) = row?;
            mids.push(MidRecord {
                client: ClientId::new(&client).map_err(|_| corrupt("client id"))?,
                mid,
                seq: Seq(seq.max(0) as u64),
                unix_ms: unix_ms.max(0) as u64,
            });
        }
        Ok(Recovered {
            head,
            acks,
            mids,
            shared: false,
        })
    }

    fn append(&mut self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError> {
        // The one writer: numbering goes on from the highest seq stored.
        let (messages, mids) = number_from(self.head()?, batch);
        self.write(&messages, &mids)?;
        Ok(messages.into_iter().map(Appended::Stored).collect())
    }

    fn forget_mids(
        &mut self,
        cutoffs: &[(ClientId, Seq)],
        _policy: &MidPolicy,
    ) -> Result<(), StoreError> {
        // The one node's registry knows exactly what it forgot.
        self.forget_mids_below(cutoffs)
    }

    fn read_after(
        &mut self,
        after: Seq,
        upto: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read_messages(after, upto, max, max_bytes)
    }

    fn read_backlog(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
        max: usize,
        max_bytes: usize,
    ) -> Result<Backlog, StoreError> {
        self.read_frames(after, upto, reader, max, max_bytes)
    }

    fn first_not_from(
        &mut self,
        after: Seq,
        upto: Seq,
        sender: &ClientId,
    ) -> Result<Option<Seq>, StoreError> {
        self.first_from_others(after, upto, sender)
    }

    fn count_from_others(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
    ) -> Result<u64, StoreError> {
        self.count_others(after, upto, reader)
    }
    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO acks (client_id, last_ack) VALUES (?1, ?2)
                 ON CONFLICT (client_id) DO UPDATE SET last_ack = max(last_ack, excluded.last_ack)",
            )?;
            for (id, seq) in acks {
                upsert.execute(params![id.as_str(), seq.0 as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn prune(&mut self, upto: Seq) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let gone: Option<u64> = match self.text_bytes {
            Some(_) => Some(tx.query_row(
                "SELECT coalesce(sum(length(CAST(text AS BLOB))), 0) FROM messages WHERE seq <= ?1",
                params![upto.0 as i64],
                |r| r.get::<_, i64>(0),
            )?.max(0) as u64),
            None => None,
        };
        let deleted = tx.execute(
            "DELETE FROM messages WHERE seq <= ?1",
            params![upto.0 as i64],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'pruned_upto' AND CAST(value AS INTEGER) < ?2",
            params![upto.0.to_string(), upto.0 as i64],
        )?;
        tx.commit()?;
        if let (Some(b), Some(gone)) = (self.text_bytes.as_mut(), gone) {
            *b = b.saturating_sub(gone);
        }
        Ok(deleted as u64)
    }

    fn limit_cut(&mut self, limits: &Limits) -> Result<Seq, StoreError> {
        self.cut_for(limits)
    }

    fn record_losses(&mut self, losses: &[Loss]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        limits::charge(&tx, losses)?;
        tx.commit()?;
        Ok(())
    }

    fn limit_prune(
        &mut self,
        upto: Seq,
        acks: &[(ClientId, Seq)],
    ) -> Result<LimitPruned, StoreError> {
        self.prune_for_limits(upto, acks)
    }

    /// Rewrites one `meta` row (`probed_ms`, the time) in a transaction of
    /// its own: it fails as a commit would (full disk, lost permissions, a
    /// lock held elsewhere), and costs one page of the log.
    fn probe(&mut self) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('probed_ms', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![crate::types::unix_ms_now().to_string()],
        )?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, from: &str, text: &str) -> Message {
        Message::new(
            Seq(seq),
            1000 + seq,
            ClientId::new(from).unwrap(),
            text.as_bytes(),
        )
    }

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap();
            assert_eq!(s.recover().unwrap(), Recovered::default());
            s.write(
                &[msg(1, "a", "one"), msg(2, "b", "two"), msg(3, "a", "three")],
                &[],
            )
            .unwrap();
            s.save_acks(&[(ClientId::new("b").unwrap(), Seq(1))])
                .unwrap();
        }
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap();
        let r = s.recover().unwrap();
        assert_eq!(r.head, Seq(3));
        assert_eq!(r.acks.get(&ClientId::new("b").unwrap()), Some(&Seq(1)));
        assert_eq!(
            s.read_after(Seq(1), Seq(3), 10, usize::MAX).unwrap(),
            vec![msg(2, "b", "two"), msg(3, "a", "three")]
        );
        assert_eq!(
            s.count_from_others(Seq(0), Seq(3), &ClientId::new("a").unwrap())
                .unwrap(),
            1
        );
    }

    #[test]
    fn the_probe_writes_and_fails_while_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap();
        s.probe().unwrap();
        let probed = |s: &SqliteStore| -> String {
            s.conn
                .query_row("SELECT value FROM meta WHERE key = 'probed_ms'", [], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        let first = probed(&s);
        assert!(first.parse::<u64>().unwrap() > 0);
        // Another writer holds the database: the probe fails (after
        // SQLite's busy wait) as a commit would.
        let other = Connection::open(dir.path().join("herald.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(s.probe().is_err());
        other.execute_batch("ROLLBACK").unwrap();
        s.probe().unwrap();
        assert!(probed(&s).parse::<u64>().unwrap() >= first.parse::<u64>().unwrap());
    }

    #[test]
    fn pruning_keeps_the_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        s.write(&[msg(1, "a", "x"), msg(2, "a", "y")], &[]).unwrap();
        assert_eq!(s.prune(Seq(2)).unwrap(), 2);
        drop(s);
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        assert_eq!(s.recover().unwrap().head, Seq(2));
    }

    #[test]
    fn limits_cut_the_oldest_but_never_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        // unix_ms 1001..=1005, 10 bytes each.
        let msgs: Vec<Message> = (1..=5).map(|i| msg(i, "a", "0123456789")).collect();
        s.write(&msgs, &[]).unwrap();
        let limits = |age: Option<u64>, bytes: Option<u64>| Limits {
            max_age_ms: age,
            max_bytes: bytes,
            now_ms: 1010,
            batch: 100,
            upto: Seq(u64::MAX),
        };
        assert_eq!(s.limit_cut(&limits(None, None)).unwrap(), Seq::ZERO);
        // Older than 1007 ms: 1001..=1002.
        assert_eq!(s.limit_cut(&limits(Some(7), None)).unwrap(), Seq(2));
        // 50 bytes stored, 25 allowed: three go.
        assert_eq!(s.limit_cut(&limits(None, Some(25))).unwrap(), Seq(3));
        // Both: the further of the two.
        assert_eq!(s.limit_cut(&limits(Some(7), Some(45))).unwrap(), Seq(2));
        // Everything is over a limit: the newest stays.
        assert_eq!(s.limit_cut(&limits(Some(1), Some(0))).unwrap(), Seq(4));
        // At most `batch` rows at a time.
        let mut small = limits(Some(1), None);
        small.batch = 2;
        assert_eq!(s.limit_cut(&small).unwrap(), Seq(2));
        // Never past what online sessions wait for.
        let mut capped = limits(Some(1), None);
        capped.upto = Seq(3);
        assert_eq!(s.limit_cut(&capped).unwrap(), Seq(3));
        // Pruning and appending keep the measured size.
        s.prune(Seq(3)).unwrap();
        assert_eq!(s.limit_cut(&limits(None, Some(15))).unwrap(), Seq(4));
        s.write(&[msg(6, "a", "0123456789")], &[]).unwrap();
        assert_eq!(s.limit_cut(&limits(None, Some(15))).unwrap(), Seq(5));
    }

    #[test]
    fn losses_add_up_per_id_and_move_its_ack() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        let a = ClientId::new("a").unwrap();
        let loss = |upto: u64, lost: u64| Loss {
            client: a.clone(),
            after: Seq(0),
            upto: Seq(upto),
            lost,
        };
        s.record_losses(&[loss(4, 3)]).unwrap();
        s.record_losses(&[loss(9, 2)]).unwrap();
        let row: (i64, i64) = s
            .conn
            .query_row(
                "SELECT lost, lost_upto FROM losses WHERE client_id = 'a'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(row, (5, 9));
        assert_eq!(s.recover().unwrap().acks.get(&a), Some(&Seq(9)));
    }

    #[test]
    fn a_limit_prune_tried_again_charges_nobody_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        s.write(&[msg(1, "a", "x"), msg(2, "b", "y"), msg(3, "a", "z")], &[])
            .unwrap();
        let (a, b) = (ClientId::new("a").unwrap(), ClientId::new("b").unwrap());
        // b's stored ack (1) is above the one given.
        s.save_acks(&[(b.clone(), Seq(1))]).unwrap();
        let acks = [(a.clone(), Seq(0)), (b.clone(), Seq(0))];
        let done = s.limit_prune(Seq(2), &acks).unwrap();
        assert_eq!(done.deleted, 2);
        let lost: Vec<(String, Seq, u64)> = done
            .losses
            .iter()
            .map(|l| (l.client.to_string(), l.after, l.lost))
            .collect();
        // a lost b's 2; b lost nothing (1 was acknowledged, 2 is its own).
        assert_eq!(lost, [("a".to_owned(), Seq(0), 1)]);
        let again = s.limit_prune(Seq(2), &acks).unwrap();
        assert_eq!((again.deleted, again.losses.len()), (0, 0));
        let n: i64 = s
            .conn
            .query_row("SELECT sum(lost) FROM losses", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        let r = s.recover().unwrap();
        assert_eq!(
            (r.acks.get(&a), r.acks.get(&b)),
            (Some(&Seq(2)), Some(&Seq(2)))
        );
    }

    #[test]
    fn a_version_2_store_gets_the_losses_table() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("herald.db")).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE messages (seq INTEGER PRIMARY KEY, unix_ms INTEGER NOT NULL,
                 sender TEXT NOT NULL, text TEXT NOT NULL);
             CREATE TABLE acks (client_id TEXT PRIMARY KEY, last_ack INTEGER NOT NULL);
             {MIDS_TABLE}
             INSERT INTO meta (key, value) VALUES ('pruned_upto', '0');
             INSERT INTO messages VALUES (1, 5, 'a', 'kept');
             PRAGMA user_version = 2;"
        ))
        .unwrap();
        drop(conn);
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap();
        assert_eq!(s.recover().unwrap().head, Seq(1));
        s.record_losses(&[Loss {
            client: ClientId::new("b").unwrap(),
            after: Seq(0),
            upto: Seq(1),
            lost: 1,
        }])
        .unwrap();
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn refuses_what_is_not_its_own() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be.
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(SqliteStore::open(&file, SyncPolicy::Always).is_err());
        // A file that is not a database.
        let d = dir.path().join("garbage");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("herald.db"), vec![7u8; 4096]).unwrap();
        let e = SqliteStore::open(&d, SyncPolicy::Always).unwrap_err();
        assert!(matches!(e, StoreError::Incompatible(_)), "{e}");
        // Another program's database.
        let d = dir.path().join("foreign");
        std::fs::create_dir(&d).unwrap();
        Connection::open(d.join("herald.db"))
            .unwrap()
            .execute_batch("CREATE TABLE t (x);")
            .unwrap();
        let e = SqliteStore::open(&d, SyncPolicy::Always).unwrap_err();
        assert!(e.to_string().contains("some other program"), "{e}");
        // A newer schema.
        let d = dir.path().join("newer");
        std::fs::create_dir(&d).unwrap();
        Connection::open(d.join("herald.db"))
            .unwrap()
            .execute_batch("PRAGMA user_version = 99;")
            .unwrap();
        let e = SqliteStore::open(&d, SyncPolicy::Always).unwrap_err();
        assert!(e.to_string().contains("schema version 99"), "{e}");
    }

    #[test]
    fn a_version_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("herald.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE messages (seq INTEGER PRIMARY KEY, unix_ms INTEGER NOT NULL,
                 sender TEXT NOT NULL, text TEXT NOT NULL);
             CREATE TABLE acks (client_id TEXT PRIMARY KEY, last_ack INTEGER NOT NULL);
             INSERT INTO meta (key, value) VALUES ('pruned_upto', '0');
             INSERT INTO messages VALUES (1, 5, 'a', 'kept');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap();
        assert_eq!(s.recover().unwrap().head, Seq(1));
        let rec = MidRecord {
            client: ClientId::new("a").unwrap(),
            mid: "m".into(),
            seq: Seq(2),
            unix_ms: 6,
        };
        s.write(&[msg(2, "a", "new")], std::slice::from_ref(&rec))
            .unwrap();
        drop(s);
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap();
        assert_eq!(s.recover().unwrap().mids, vec![rec]);
        let v: i64 = s
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn mids_below_each_cutoff_are_forgotten_with_a_range_delete_on_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        let (a, b) = (ClientId::new("a").unwrap(), ClientId::new("b").unwrap());
        let recs: Vec<MidRecord> = (1..=10)
            .map(|i| MidRecord {
                client: if i % 2 == 0 { a.clone() } else { b.clone() },
                mid: format!("m{i}"),
                seq: Seq(i),
                unix_ms: i * 10,
            })
            .collect();
        let msgs: Vec<Message> = (1..=10).map(|i| msg(i, "a", "t")).collect();
        s.write(&msgs, &recs).unwrap();
        // a keeps seq >= 6 (m6, m8, m10); b keeps seq >= 3 (m3, m5, m7, m9).
        s.forget_mids_below(&[(a.clone(), Seq(6)), (b.clone(), Seq(3))])
            .unwrap();
        let left: Vec<String> = s
            .recover()
            .unwrap()
            .mids
            .into_iter()
            .map(|r| r.mid)
            .collect();
        assert_eq!(left, ["m3", "m5", "m6", "m7", "m8", "m9", "m10"]);
        // The delete is a search of the (client_id, seq) index, not a scan.
        let plan: Vec<String> = s
            .conn
            .prepare("EXPLAIN QUERY PLAN DELETE FROM mids WHERE client_id = ?1 AND seq < ?2")
            .unwrap()
            .query_map(params!["a", 6], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter()
                .any(|p| p.contains("SEARCH") && p.contains("mids_by_age")),
            "{plan:?}"
        );
    }

    #[test]
    fn reads_stop_at_a_byte_bound_but_never_before_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        let big = "x".repeat(10_000);
        let msgs: Vec<Message> = (1..=5).map(|i| msg(i, "a", &big)).collect();
        s.write(&msgs, &[]).unwrap();
        let frame = msgs[0].frame().len();
        let seqs = |v: Vec<Message>| v.iter().map(|m| m.seq().0).collect::<Vec<_>>();
        assert_eq!(seqs(s.read_after(Seq(0), Seq(5), 100, 1).unwrap()), [1]);
        assert_eq!(
            seqs(s.read_after(Seq(1), Seq(5), 100, 2 * frame + 1).unwrap()),
            [2, 3]
        );
        assert_eq!(
            seqs(s.read_after(Seq(0), Seq(5), 100, usize::MAX).unwrap()),
            [1, 2, 3, 4, 5]
        );
        s.write(&[msg(6, "b", "other")], &[]).unwrap();
        let a = ClientId::new("a").unwrap();
        assert_eq!(s.first_not_from(Seq(0), Seq(6), &a).unwrap(), Some(Seq(6)));
        assert_eq!(s.first_not_from(Seq(0), Seq(5), &a).unwrap(), None);
    }

    #[test]
    fn a_backlog_drained_in_bounded_reads_is_every_message_of_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteStore::open(dir.path(), SyncPolicy::None).unwrap();
        // Runs of senders, the reader's own among them (at the end too),
        // and texts of varied length, one of them over every byte bound.
        let msgs: Vec<Message> = (1..=60)
            .map(|i| {
                let from = ["a", "b", "r", "r", "c"][(i as usize / 3) % 5];
                let len = if i == 20 {
                    5_000
                } else {
                    (i as usize * 7) % 90
                };
                msg(i, from, &"t".repeat(len))
            })
            .chain((61..=64).map(|i| msg(i, "r", "own")))
            .collect();
        s.write(&msgs, &[]).unwrap();
        let r = ClientId::new("r").unwrap();
        let others: Vec<Message> = msgs.iter().filter(|m| m.from() != &r).cloned().collect();
        for (max, max_bytes) in [(1, usize::MAX), (7, 300), (4096, 1), (4096, usize::MAX)] {
            let (mut cursor, mut got, mut reads) = (Seq(0), Vec::new(), 0);
            while cursor < Seq(64) {
                reads += 1;
                assert!(reads <= 200, "no progress at {cursor:?}");
                let b = s.read_backlog(cursor, Seq(64), &r, max, max_bytes).unwrap();
                assert!(b.last() > cursor, "the cursor must move");
                assert!(b.len() <= max);
                // Every row read, own ones included, is counted (and
                // bounded), the one refused at the byte bound is not.
                assert_eq!(b.read() as u64, b.last().0 - cursor.0);
                assert!(b.read() <= max);
                assert!(b.len() <= 1 || b.frames().len() <= max_bytes);
                let ms = b.messages().unwrap();
                assert_eq!(ms.len(), b.len());
                assert_eq!(b.newest(), ms.last().map_or(Seq::ZERO, Message::seq));
                assert!(ms.iter().all(|m| m.seq() > cursor && m.seq() <= b.last()));
                got.extend(ms);
                cursor = b.last();
            }
            assert_eq!(got, others, "max {max}, max_bytes {max_bytes}");
        }
        // Nothing but the reader's own: read past, no frames; they count
        // against `max` like any row read.
        let b = s.read_backlog(Seq(60), Seq(64), &r, 2, usize::MAX).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.last(), Seq(62));
        assert_eq!(b.read(), 2);
        let b = s
            .read_backlog(Seq(62), Seq(64), &r, 4096, usize::MAX)
            .unwrap();
        assert!(b.is_empty());
        assert_eq!(b.last(), Seq(64));
    }

    #[test]
    fn one_server_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap();
        let e = SqliteStore::open(dir.path(), SyncPolicy::Always).unwrap_err();
        assert!(e.to_string().contains("in use by another server"), "{e}");
    }
}
