//! Disks: the seam behind which the registry keeps its message log and each
//! client id's `last_ack`.
//!
//! A [`Store`] is plain blocking code. It runs on its own thread behind a
//! [`StoreActor`] (a `SyncArbiter` actor), so no disk I/O ever runs on the
//! registry's event loop. The registry batches: one [`Append`] carries every
//! message accepted while the previous append was in flight (group commit),
//! and a message is confirmed to its sender only after its append returned.

use std::collections::HashMap;

use actix::{Actor, Handler, Message as ActixMessage, SyncContext};

use crate::net::Message;
use crate::types::{ClientId, Seq};

pub mod memory;
pub mod postgres;
pub mod sqlite;

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::{SqliteStore, SyncPolicy};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused an I/O operation (full disk, permissions…).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The storage engine reported an error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The data directory cannot be used (not a directory, not writable, in
    /// use by another server).
    #[error("{0}")]
    Unusable(String),
    /// The data found is not something this version can use.
    #[error("incompatible data: {0}")]
    Incompatible(String),
    /// The store cannot be reached right now (a database connection is
    /// down): nothing was done, and the same request may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A message id a client sent with a stored message (`@mid=…`), kept so a
/// resend is recognised, also after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MidRecord {
    /// Who sent it.
    pub client: ClientId,
    /// The client's message id.
    pub mid: String,
    /// The seq the message was stored as.
    pub seq: Seq,
    /// When.
    pub unix_ms: u64,
}

/// What a store holds when the broker starts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The highest stored seq (`Seq::ZERO` when empty); numbering goes on
    /// after it.
    pub head: Seq,
    /// The last acknowledged seq of every client id that ever acknowledged.
    pub acks: HashMap<ClientId, Seq>,
    /// The message ids still remembered.
    pub mids: Vec<MidRecord>,
}

/// The message log and acknowledgement cursors.
///
/// Every method may block; callers reach a store only through
/// [`StoreActor`].
pub trait Store: Send + 'static {
    /// Reads what a previous run left behind.
    fn recover(&mut self) -> Result<Recovered, StoreError>;

    /// Stores `batch` (consecutive seqs, in order) and the message ids that
    /// came with some of them as one atomic unit: after `Ok` all of it
    /// survives what the store promises to survive, after `Err` none of it
    /// is stored.
    fn append(&mut self, batch: &[Message], mids: &[MidRecord]) -> Result<(), StoreError>;

    /// Forgets, for each `(client, cutoff)`, the message ids that client
    /// stored under a seq below `cutoff` (the registry no longer remembers
    /// them).
    fn forget_mids(&mut self, cutoffs: &[(ClientId, Seq)]) -> Result<(), StoreError>;

    /// Stored messages with `after < seq <= upto`, in seq order: at most
    /// `max` of them and at most `max_bytes` of frames, but always at least
    /// one (if there is one), however big.
    fn read_after(
        &mut self,
        after: Seq,
        upto: Seq,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError>;

    /// The seq of the first stored message with `after < seq <= upto` that
    /// `sender` did not send, if any.
    fn first_not_from(
        &mut self,
        after: Seq,
        upto: Seq,
        sender: &ClientId,
    ) -> Result<Option<Seq>, StoreError>;

    /// How many stored messages with `after < seq <= upto` were sent by
    /// someone other than `reader`: the backlog announced in `WELCOME`.
    fn count_from_others(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
    ) -> Result<u64, StoreError>;

    /// Records each client id's new `last_ack`.
    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError>;

    /// Deletes every message with seq <= `upto` (all handled by every
    /// allowed id: acknowledged, or sent by it); the numbering goes on after the head regardless.
    /// Returns how many were deleted.
    fn prune(&mut self, upto: Seq) -> Result<u64, StoreError>;

    /// Makes everything written so far durable, before a clean stop.
    fn flush(&mut self) -> Result<(), StoreError>;
}

/// Runs a [`Store`] on a dedicated thread and answers the registry's
/// requests one at a time.
pub struct StoreActor {
    store: Option<Box<dyn Store>>,
}

impl StoreActor {
    /// Wraps `store`; start it with `SyncArbiter::start(1, …)`, whose
    /// factory may be called again after a restart and then has no store
    /// left to give (`None`): every request then fails instead of silently
    /// using an empty store.
    pub fn new(store: Option<Box<dyn Store>>) -> StoreActor {
        StoreActor { store }
    }

    fn store(&mut self) -> Result<&mut dyn Store, StoreError> {
        match self.store.as_deref_mut() {
            Some(s) => Ok(s),
            None => Err(StoreError::Engine(
                "the store is no longer available".into(),
            )),
        }
    }
}

impl Actor for StoreActor {
    type Context = SyncContext<Self>;
}

/// Append a batch; answers with the batch once it is stored.
#[derive(ActixMessage)]
#[rtype(result = "Result<Vec<Message>, StoreError>")]
pub struct Append {
    /// The messages, consecutive seqs in order.
    pub messages: Vec<Message>,
    /// The message ids some of them came with.
    pub mids: Vec<MidRecord>,
}

/// Forget old message ids: per client id, those stored under a seq below
/// its cutoff; see [`Store::forget_mids`].
#[derive(ActixMessage)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ForgetMids(pub Vec<(ClientId, Seq)>);

impl Handler<ForgetMids> for StoreActor {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: ForgetMids, _: &mut Self::Context) -> Self::Result {
        self.store()?.forget_mids(&msg.0)
    }
}

/// Read a chunk of the log; see [`Store::read_after`].
#[derive(ActixMessage)]
#[rtype(result = "Result<Vec<Message>, StoreError>")]
pub struct ReadAfter {
    /// Exclusive lower bound.
    pub after: Seq,
    /// Inclusive upper bound.
    pub upto: Seq,
    /// At most this many messages…
    pub max: usize,
    /// …and this many frame bytes (but at least one message).
    pub max_bytes: usize,
}

/// Count a backlog; see [`Store::count_from_others`].
#[derive(ActixMessage)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct CountFromOthers {
    /// Exclusive lower bound.
    pub after: Seq,
    /// Inclusive upper bound.
    pub upto: Seq,
    /// The client whose own messages do not count.
    pub reader: ClientId,
}

/// Save acknowledgement cursors; see [`Store::save_acks`].
#[derive(ActixMessage)]
#[rtype(result = "Result<(), StoreError>")]
pub struct SaveAcks(pub Vec<(ClientId, Seq)>);

/// Drop handled messages: every one with seq <= `upto`, except that when
/// `owner` is given, pruning stops before the first message after `after`
/// that `owner` did not send (one it has not acknowledged yet).
#[derive(ActixMessage)]
#[rtype(result = "Result<Pruned, StoreError>")]
pub struct Prune {
    /// Everything up to here is handled by every id but `owner`.
    pub upto: Seq,
    /// `owner`'s last ack (or what is pruned already, if higher).
    pub after: Seq,
    /// The one id that has not acknowledged everything up to `upto`.
    pub owner: Option<ClientId>,
    /// Pruned already up to here: nothing to delete at or below it.
    pub pruned: Seq,
    /// Report who sent the first message kept.
    pub want_next_sender: bool,
}

/// What a [`Prune`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// Every message up to here is gone.
    pub upto: Seq,
    /// How many were deleted.
    pub deleted: u64,
    /// Who sent the first message kept, when asked and there is one.
    pub next_sender: Option<ClientId>,
}

impl Handler<Prune> for StoreActor {
    type Result = Result<Pruned, StoreError>;
    fn handle(&mut self, msg: Prune, _: &mut Self::Context) -> Self::Result {
        let store = self.store()?;
        let mut upto = msg.upto;
        if let Some(owner) = &msg.owner {
            if let Some(first) = store.first_not_from(msg.after, msg.upto, owner)? {
                upto = Seq(first.0 - 1);
            }
        }
        let deleted = if upto > msg.pruned {
            store.prune(upto)?
        } else {
            0
        };
        let upto = upto.max(msg.pruned);
        let next_sender = if msg.want_next_sender {
            let next = store.read_after(upto, upto.next(), 1, 1)?;
            next.first().map(|m| m.from().clone())
        } else {
            None
        };
        Ok(Pruned {
            upto,
            deleted,
            next_sender,
        })
    }
}

/// Make everything durable; see [`Store::flush`].
#[derive(ActixMessage)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Flush;

impl Handler<Append> for StoreActor {
    type Result = Result<Vec<Message>, StoreError>;
    fn handle(&mut self, msg: Append, _: &mut Self::Context) -> Self::Result {
        self.store()?.append(&msg.messages, &msg.mids)?;
        Ok(msg.messages)
    }
}

impl Handler<ReadAfter> for StoreActor {
    type Result = Result<Vec<Message>, StoreError>;
    fn handle(&mut self, msg: ReadAfter, _: &mut Self::Context) -> Self::Result {
        self.store()?
            .read_after(msg.after, msg.upto, msg.max, msg.max_bytes)
    }
}

impl Handler<CountFromOthers> for StoreActor {
    type Result = Result<u64, StoreError>;
    fn handle(&mut self, msg: CountFromOthers, _: &mut Self::Context) -> Self::Result {
        self.store()?
            .count_from_others(msg.after, msg.upto, &msg.reader)
    }
}

impl Handler<SaveAcks> for StoreActor {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: SaveAcks, _: &mut Self::Context) -> Self::Result {
        self.store()?.save_acks(&msg.0)
    }
}

impl Handler<Flush> for StoreActor {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: Flush, _: &mut Self::Context) -> Self::Result {
        self.store()?.flush()
    }
}
