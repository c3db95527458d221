//! Delivery: pushing each online session the messages after its cursor
//! while it has credit, from the in-memory tail when they are still there,
//! from the store otherwise (see the registry's module docs).

use actix::prelude::*;

use super::{Online, Registry};
use crate::actors::messages::{Credit, SessionId, ToSession};
use crate::actors::tail::Tail;
use crate::net::ByeReason;
use crate::store::{BacklogPiece, StoreError, StreamBacklog};
use crate::types::Seq;

/// How long a session's read waits before trying an unavailable store
/// again.
const READ_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Pushes `s` the messages after its cursor that the tail holds, while it
/// has credit, in pushes of at most `max_deliver`. Returns whether it is
/// still behind and the next messages are only in the store.
fn push_from_tail(tail: &Tail, head: Seq, max_deliver: usize, s: &mut Online) -> bool {
    while s.welcomed && !s.reading && s.cursor < head {
        if !tail.covers_after(s.cursor, head) {
            return true;
        }
        if s.credit <= 0 {
            return false;
        }
        let mut batch = Vec::with_capacity(((head.0 - s.cursor.0) as usize).min(max_deliver));
        let mut bytes = 0i64;
        let mut last = s.cursor;
        for m in tail.after(s.cursor) {
            if batch.len() >= max_deliver || bytes >= s.credit {
                break;
            }
            last = m.seq();
            if m.from() != &s.id {
                bytes += m.frame().len() as i64;
                batch.push(m.clone());
            }
        }
        s.cursor = last;
        note_replayed(s);
        if !batch.is_empty() {
            s.credit -= bytes;
            s.to.do_send(ToSession::Deliver(batch));
        }
    }
    false
}

/// Ends a session's replay once it was pushed up to the head it was
/// welcomed at.
fn note_replayed(s: &mut Online) {
    if s.replay.as_ref().is_some_and(|(upto, _)| s.cursor >= *upto) {
        s.replay = None;
    }
}

impl Handler<Credit> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Credit, ctx: &mut Self::Context) {
        if let Some(s) = self.sessions.get_mut(&msg.session) {
            s.credit += msg.bytes as i64;
            self.pump(msg.session, ctx);
        }
    }
}

impl Registry {
    /// Pumps every session after new messages were stored. Sessions served
    /// from the tail are handled in one pass; only those that fell behind
    /// it go through [`Registry::pump`] to start a store read.
    pub(super) fn pump_all(&mut self, ctx: &mut Context<Self>) {
        let mut behind = Vec::new();
        for (sid, s) in self.sessions.iter_mut() {
            if push_from_tail(&self.tail, self.head, self.config.max_deliver, s) {
                behind.push(*sid);
            }
        }
        for sid in behind {
            self.pump(sid, ctx);
        }
    }

    /// Pushes a session as far as its credit allows; see the module docs.
    pub(super) fn pump(&mut self, sid: SessionId, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !push_from_tail(&self.tail, self.head, self.config.max_deliver, s) {
            return;
        }
        // Behind the tail: read the next chunk from the store, while the
        // session has credit left. A read asks for the credit plus one window
        // of frame bytes, so it runs up to a window ahead of the socket, and
        // a session never has more than two windows plus one frame pushed
        // and not yet written. The store sends it in pieces of half a
        // window as it reads them, so the socket writes the first piece
        // while the disk reads the next (one round trip to the store thread
        // per read, not per piece: on two cores a wake-up costs as much as
        // reading a few hundred rows).
        if s.credit <= 0 {
            return;
        }
        s.reading = true;
        let window = self.config.session_window_bytes;
        let read = StreamBacklog {
            key: sid.0,
            after: s.cursor,
            upto: self.tail.first_seq().map_or(self.head, |f| Seq(f.0 - 1)),
            reader: s.id.clone(),
            max: self.config.read_chunk,
            max_bytes: s.credit as usize + window,
            piece_bytes: (window / 2).max(1),
            to: ctx.address().recipient(),
        };
        self.store
            .send(read)
            .into_actor(self)
            .map(move |res, act, _| {
                if let Err(e) = res {
                    act.read_failed(sid, e);
                }
            })
            .spawn(ctx);
    }

    /// The store is gone (the server is stopping): the session ends.
    fn read_failed(&mut self, sid: SessionId, e: MailboxError) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.reading = false;
            log::error!("store unreachable while reading for {}: {e}", s.id);
            s.to.do_send(ToSession::Bye(ByeReason::Shutdown));
        }
    }

    /// Sends an admitted session `WELCOME` with its backlog count and starts
    /// pushing to it.
    pub(super) fn welcome(&mut self, sid: SessionId, pending: u64, ctx: &mut Context<Self>) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.welcomed = true;
        if s.cursor < self.head {
            s.replay = Some((self.head, self.config.metrics.replaying()));
        }
        s.to.do_send(ToSession::Welcome {
            id: s.id.clone(),
            pending,
            window: self.config.session_window_bytes,
        });
        self.pump(sid, ctx);
    }
}

impl Handler<BacklogPiece> for Registry {
    type Result = ();

    /// A piece of a session's backlog came from the store: pushes it, and
    /// pumps on after the last piece; closes the session if the log is
    /// unreadable.
    fn handle(&mut self, piece: BacklogPiece, ctx: &mut Self::Context) {
        let sid = SessionId(piece.key);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if piece.done {
            s.reading = false;
        }
        match piece.backlog {
            Ok(backlog) => {
                s.credit -= backlog.frames().len() as i64;
                s.cursor = backlog.last();
                note_replayed(s);
                if !backlog.is_empty() {
                    s.to.do_send(ToSession::Backlog(Box::new(backlog)));
                }
                if piece.done {
                    self.pump(sid, ctx);
                }
            }
            Err(StoreError::Unavailable(e)) => {
                // The database is away: the session stays, and is pumped
                // again once it may be back (the failure is logged by the
                // commit stream's reads, once).
                log::debug!("reading the log for {} must wait: {e}", s.id);
                ctx.run_later(READ_RETRY, move |act, ctx| act.pump(sid, ctx));
            }
            Err(e) => {
                log::error!(
                    "reading the log for {} failed: {e}; closing its session",
                    s.id
                );
                s.to.do_send(ToSession::Bye(ByeReason::Limit));
            }
        }
    }
}
