//! Reading the log back on SQLite: ranges of messages (for the commit
//! stream), a reader's backlog as frames (for catch-up), and the counts a
//! login needs.

use rusqlite::{params, OptionalExtension};

use super::{corrupt, SqliteStore};
use crate::net::{Backlog, BacklogWriter, Message};
use crate::store::StoreError;
use crate::types::{ClientId, Seq};

/// The stored messages with `?1 < seq <= ?2`, at most `?3`, in seq order.
const SELECT_RANGE: &str = "SELECT seq, unix_ms, sender, text FROM messages
     WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3";

/// The id of a row's `sender`: `last` when it is the same as the row
/// before's, else checked once and kept in `last` (runs of rows from one
/// sender neither check nor allocate an id per row).
fn known_sender<'a>(
    last: &'a mut Option<ClientId>,
    sender: &[u8],
) -> Result<&'a ClientId, StoreError> {
    if last.as_ref().map(|id| id.as_str().as_bytes()) != Some(sender) {
        let id = std::str::from_utf8(sender)
            .ok()
            .and_then(|s| ClientId::new(s).ok())
            .ok_or_else(|| corrupt("sender"))?;
        *last = Some(id);
    }
    last.as_ref().ok_or_else(|| corrupt("sender"))
}

impl SqliteStore {
    /// See [`Store::read_after`]: one row and one frame per message.
    pub(super) fn read_messages(
        &mut self,
        after: Seq,
        upto: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let mut stmt = self.conn.prepare_cached(SELECT_RANGE)?;
        let mut rows = stmt.query(params![after.0 as i64, upto.0 as i64, max as i64])?;
        let mut out = Vec::with_capacity(max.min(4096));
        // All frames of the chunk in as few allocations as possible.
        let mut frames = bytes::BytesMut::with_capacity(max_bytes.min(256 * 1024));
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            let unix_ms: i64 = row.get(1)?;
            let sender = row.get_ref(2)?.as_bytes().map_err(|_| corrupt("sender"))?;
            let from = known_sender(&mut self.last_sender, sender)?.clone();
            let text = row.get_ref(3)?.as_str().map_err(|_| corrupt("text"))?;
            let m = Message::new_in(
                &mut frames,
                Seq(seq as u64),
                unix_ms as u64,
                from,
                text.as_bytes(),
            );
            bytes += m.frame().len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(m);
        }
        Ok(out)
    }

    /// See [`Store::read_backlog`]: rows written straight into frames.
    pub(super) fn read_frames(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
        max: usize,
        max_bytes: usize,
    ) -> Result<Backlog, StoreError> {
        let mut stmt = self.conn.prepare_cached(SELECT_RANGE)?;
        let mut rows = stmt.query(params![after.0 as i64, upto.0 as i64, max as i64])?;
        // Rows are written straight into one buffer of frames: no message
        // object, id or frame per row.
        let buf = std::mem::take(&mut self.frames);
        let mut out = BacklogWriter::reusing(buf, max_bytes.min(256 * 1024));
        let (mut last, mut full) = (None, false);
        while let Some(row) = rows.next()? {
            let seq = Seq(row.get::<_, i64>(0)? as u64);
            let sender = row.get_ref(2)?.as_bytes().map_err(|_| corrupt("sender"))?;
            if sender == reader.as_str().as_bytes() {
                out.skip();
                last = Some(seq);
                continue;
            }
            let sender = known_sender(&mut self.last_sender, sender)?.as_str();
            let unix_ms = row.get::<_, i64>(1)? as u64;
            let text = row.get_ref(3)?.as_bytes().map_err(|_| corrupt("text"))?;
            if !text.is_ascii() && std::str::from_utf8(text).is_err() {
                return Err(corrupt("text"));
            }
            if !out.push_within(seq, unix_ms, sender, text, max_bytes) {
                // Over the byte bound: this row is read again next time.
                full = true;
                break;
            }
            last = Some(seq);
        }
        // Stopped by neither bound: everything up to `upto` was seen (the
        // reader's own messages after `last` included).
        if !full && out.read() < max {
            last = Some(upto);
        }
        let (backlog, buf) = out.finish_into(last.unwrap_or(upto));
        self.frames = buf;
        Ok(backlog)
    }

    /// See [`Store::first_not_from`].
    pub(super) fn first_from_others(
        &mut self,
        after: Seq,
        upto: Seq,
        sender: &ClientId,
    ) -> Result<Option<Seq>, StoreError> {
        // A range scan of the primary key that stops at the first hit; it
        // reads only the rows of `sender` in between.
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq FROM messages WHERE seq > ?1 AND seq <= ?2 AND sender != ?3
             ORDER BY seq LIMIT 1",
        )?;
        let first: Option<i64> = stmt
            .query_row(
                params![after.0 as i64, upto.0 as i64, sender.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(first.map(|s| Seq(s.max(0) as u64)))
    }

    /// See [`Store::count_from_others`].
    pub(super) fn count_others(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
    ) -> Result<u64, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*) FROM messages WHERE seq > ?1 AND seq <= ?2 AND sender != ?3",
        )?;
        let n: i64 = stmt.query_row(
            params![after.0 as i64, upto.0 as i64, reader.as_str()],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }
}
