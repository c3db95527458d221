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

use crate::net::{Backlog, Message};
use crate::types::{ClientId, Seq};

pub mod inspect;
pub mod limits;
pub mod memory;
pub mod postgres;
pub mod sqlite;

pub use limits::{LimitCut, LimitPrune, LimitPruned, Limits, Loss};
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
    /// Other nodes write to this store too (a cluster): the registry then
    /// follows the log for their commits and claims logins in the store.
    pub shared: bool,
}

/// A message to store, before the store gives it its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Who sent it.
    pub from: ClientId,
    /// When the broker received it.
    pub unix_ms: u64,
    /// The text (valid UTF-8, checked when it was received).
    pub text: bytes::Bytes,
    /// The client's message id, if it sent one.
    pub mid: Option<String>,
}

/// What became of one [`NewMessage`] of an append, in the batch's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored under the seq the message carries.
    Stored(Message),
    /// Its message id was stored before (by any node): not stored again;
    /// this is the first copy's seq.
    Duplicate(Seq),
}

/// Numbers `batch` from `head` on, for stores with a single writer: the
/// messages with their frames, and the message ids to remember.
pub fn number_from(head: Seq, batch: &[NewMessage]) -> (Vec<Message>, Vec<MidRecord>) {
    let mut seq = head;
    let mut mids = Vec::new();
    let messages = batch
        .iter()
        .map(|n| {
            seq = seq.next();
            if let Some(mid) = &n.mid {
                mids.push(MidRecord {
                    client: n.from.clone(),
                    mid: mid.clone(),
                    seq,
                    unix_ms: n.unix_ms,
                });
            }
            Message::new(seq, n.unix_ms, n.from.clone(), &n.text)
        })
        .collect();
    (messages, mids)
}

/// Which message ids may be forgotten: per client id, those beyond its
/// newest `keep` that are older than `max_age_ms`, and any beyond `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MidPolicy {
    /// The newest this many per client id are always kept…
    pub keep: usize,
    /// …and every one younger than this.
    pub max_age_ms: u64,
    /// The time the age is measured at.
    pub now_ms: u64,
    /// Never more than this many per client id, however young (the
    /// registry's own bound, [`crate::actors::dedupe::MAX_MIDS_PER_ID`]).
    pub cap: usize,
}

/// A login, as the store is asked to record it (see [`Store::login`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginClaim {
    /// The client id logging in.
    pub client: ClientId,
    /// This node's id (written into the store's sessions row).
    pub node: String,
    /// The `last_ack` the registry knows for it.
    pub known_ack: Seq,
    /// The registry's head.
    pub known_head: Seq,
}

/// What the store says about a login (see [`Store::login`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginView {
    /// The claim's number: a later login of the same id, on any node, gets
    /// a higher one and replaces this one. Always 0 in a single-node store.
    pub epoch: u64,
    /// The id's `last_ack`: the higher of the store's and the registry's.
    pub last_ack: Seq,
    /// The highest committed seq the backlog was counted up to (at least
    /// the registry's head).
    pub head: Seq,
    /// Messages from others in `(last_ack, head]`: the `WELCOME` count.
    pub backlog: u64,
}

/// The message log and acknowledgement cursors.
///
/// Every method may block; callers reach a store only through
/// [`StoreActor`].
pub trait Store: Send + 'static {
    /// Reads what a previous run left behind.
    fn recover(&mut self) -> Result<Recovered, StoreError>;

    /// Numbers and stores `batch` and the message ids that came with it as
    /// one atomic unit, and says per message what became of it, in order.
    /// Seqs are dense and given in commit order. After `Ok` all of it
    /// survives what the store promises to survive; after `Err` none of it
    /// is stored.
    fn append(&mut self, batch: &[NewMessage]) -> Result<Vec<Appended>, StoreError>;

    /// Forgets old message ids. A single-node store forgets, for each
    /// `(client, cutoff)`, those stored under a seq below `cutoff` (what the
    /// registry no longer remembers); a store shared by nodes applies
    /// `policy` over every node's ids instead, since one node's cutoffs know
    /// nothing of the others'.
    fn forget_mids(
        &mut self,
        cutoffs: &[(ClientId, Seq)],
        policy: &MidPolicy,
    ) -> Result<(), StoreError>;

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

    /// `reader`'s backlog with `after < seq <= upto`: the frames of the
    /// messages others sent, in seq order, within the bounds of
    /// [`Store::read_after`]. Its `last` is how far the read got: `upto`
    /// when it found nothing more, else the seq of the last message read;
    /// its `read` counts the messages it went through, the reader's own
    /// included (the bound `max` is on those). The default reads messages
    /// and copies their frames; a store that can write frames straight
    /// from its rows does so.
    fn read_backlog(
        &mut self,
        after: Seq,
        upto: Seq,
        reader: &ClientId,
        max: usize,
        max_bytes: usize,
    ) -> Result<Backlog, StoreError> {
        let messages = self.read_after(after, upto, max, max_bytes)?;
        Ok(Backlog::of_messages(&messages, reader, upto))
    }

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

    /// Records a login: claims the id's session for this node and counts
    /// its backlog. A single-node store (this default) only counts: the
    /// registry's own `last_ack` and head are the truth.
    fn login(&mut self, claim: &LoginClaim) -> Result<LoginView, StoreError> {
        let backlog = self.count_from_others(claim.known_ack, claim.known_head, &claim.client)?;
        Ok(LoginView {
            epoch: 0,
            last_ack: claim.known_ack,
            head: claim.known_head,
            backlog,
        })
    }

    /// The current session epoch of each of `clients` that has one: a
    /// node holding one of them under a lower epoch was replaced by a
    /// login elsewhere. A single-node store (this default) has none.
    fn session_epochs(
        &mut self,
        _clients: &[ClientId],
    ) -> Result<Vec<(ClientId, u64)>, StoreError> {
        Ok(Vec::new())
    }

    /// Records each client id's new `last_ack`.
    fn save_acks(&mut self, acks: &[(ClientId, Seq)]) -> Result<(), StoreError>;

    /// Deletes every message with seq <= `upto` (all handled by every
    /// allowed id: acknowledged, or sent by it); the numbering goes on after the head regardless.
    /// Returns how many were deleted.
    fn prune(&mut self, upto: Seq) -> Result<u64, StoreError>;

    /// The highest seq that `limits` (`--retain-max-age`,
    /// `--retain-max-bytes`) want pruned, never the newest message and at
    /// most `limits.batch` messages past what is pruned already;
    /// `Seq::ZERO` when nothing is over a limit. A store that cannot
    /// measure (this default) never asks for anything.
    fn limit_cut(&mut self, _limits: &Limits) -> Result<Seq, StoreError> {
        Ok(Seq::ZERO)
    }

    /// Records what each id loses to a limit prune and moves its
    /// `last_ack` up to the loss's `upto`, as one unit: the id is then
    /// never offered the pruned messages, and `WELCOME` counts only what
    /// is kept. This default only moves the acks (nothing to show later).
    fn record_losses(&mut self, losses: &[Loss]) -> Result<(), StoreError> {
        let acks: Vec<(ClientId, Seq)> =
            losses.iter().map(|l| (l.client.clone(), l.upto)).collect();
        self.save_acks(&acks)
    }

    /// Prunes up to `upto` for a retention limit, charging each id of
    /// `acks` below it with what it loses (see [`limits::limit_prune`],
    /// this default). A store shared by nodes does it in one transaction,
    /// so two nodes pruning the same range charge nobody twice.
    fn limit_prune(
        &mut self,
        upto: Seq,
        acks: &[(ClientId, Seq)],
    ) -> Result<LimitPruned, StoreError> {
        limits::limit_prune(self, upto, acks)
    }

    /// Makes everything written so far durable, before a clean stop.
    fn flush(&mut self) -> Result<(), StoreError>;

    /// A cheap check that a commit could succeed now (for `/readyz`): a
    /// round trip to the database, a small write to the disk. A store kept
    /// in memory (this default) always can.
    fn probe(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A wake-up through the database from another node (or this node's own
/// commit, echoed): look again. Wake-ups carry no data and may be lost; the
/// registry's periodic catch-up covers a lost one.
#[derive(ActixMessage, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum Wake {
    /// Messages were committed: read the log after the head.
    Log,
    /// A login claimed a session: check whether one held here was taken.
    Sessions,
    /// The wake-up connection was (re)established: wake-ups may have been
    /// missed, so look at both.
    Reconnected,
}

/// Runs a [`Store`] on a dedicated thread and answers the registry's
/// requests one at a time.
pub struct StoreActor {
    store: Option<Box<dyn Store>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl StoreActor {
    /// Wraps `store`; start it with `SyncArbiter::start(1, …)`, whose
    /// factory may be called again after a restart and then has no store
    /// left to give (`None`): every request then fails instead of silently
    /// using an empty store.
    pub fn new(store: Option<Box<dyn Store>>) -> StoreActor {
        StoreActor {
            store,
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        }
    }

    /// Counts commits (their time, size and messages) in `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> StoreActor {
        self.metrics = metrics;
        self
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

/// Number and store a batch; see [`Store::append`].
#[derive(ActixMessage)]
#[rtype(result = "Result<Vec<Appended>, StoreError>")]
pub struct Append(pub Vec<NewMessage>);

/// Forget old message ids; see [`Store::forget_mids`].
#[derive(ActixMessage)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ForgetMids {
    /// Per client id, the seq below which the registry forgot its ids.
    pub cutoffs: Vec<(ClientId, Seq)>,
    /// What may be forgotten, for a store shared by nodes.
    pub policy: MidPolicy,
}

impl Handler<ForgetMids> for StoreActor {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: ForgetMids, _: &mut Self::Context) -> Self::Result {
        self.store()?.forget_mids(&msg.cutoffs, &msg.policy)
    }
}

/// Record a login; see [`Store::login`].
#[derive(ActixMessage)]
#[rtype(result = "Result<LoginView, StoreError>")]
pub struct ClaimLogin(pub LoginClaim);

impl Handler<ClaimLogin> for StoreActor {
    type Result = Result<LoginView, StoreError>;
    fn handle(&mut self, msg: ClaimLogin, _: &mut Self::Context) -> Self::Result {
        self.store()?.login(&msg.0)
    }
}

/// Read session epochs; see [`Store::session_epochs`].
#[derive(ActixMessage)]
#[rtype(result = "Result<Vec<(ClientId, u64)>, StoreError>")]
pub struct SessionEpochs(pub Vec<ClientId>);

impl Handler<SessionEpochs> for StoreActor {
    type Result = Result<Vec<(ClientId, u64)>, StoreError>;
    fn handle(&mut self, msg: SessionEpochs, _: &mut Self::Context) -> Self::Result {
        self.store()?.session_epochs(&msg.0)
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

/// Read a reader's backlog up to a byte budget, in pieces each sent to `to`
/// as soon as it is read (see [`Store::read_backlog`]): the session writes
/// the first piece while the store reads the next, with no round trip
/// between them. The last piece, or an error, comes with `done`.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct StreamBacklog {
    /// The asker's tag for this reader, echoed in every piece.
    pub key: u64,
    /// Exclusive lower bound.
    pub after: Seq,
    /// Inclusive upper bound.
    pub upto: Seq,
    /// Whose backlog: their own messages are left out.
    pub reader: ClientId,
    /// At most this many stored messages read in all (the reader's own
    /// included)…
    pub max: usize,
    /// …and this many frame bytes in all (but at least one message)…
    pub max_bytes: usize,
    /// …in pieces of at most this many frame bytes (or one message).
    pub piece_bytes: usize,
    /// Where the pieces go.
    pub to: actix::Recipient<BacklogPiece>,
}

/// One piece of a [`StreamBacklog`].
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct BacklogPiece {
    /// The request's `key`.
    pub key: u64,
    /// The frames read, or why the read failed (which ends the stream).
    pub backlog: Result<Backlog, StoreError>,
    /// No more pieces follow for this request.
    pub done: bool,
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
    type Result = Result<Vec<Appended>, StoreError>;
    fn handle(&mut self, msg: Append, _: &mut Self::Context) -> Self::Result {
        let started = std::time::Instant::now();
        let result = self.store()?.append(&msg.0);
        let metrics = &self.metrics;
        // Only commits that happened: a failed batch is tried again and
        // would be counted twice.
        if let Ok(appended) = &result {
            metrics.commit_done(msg.0.len(), started.elapsed().as_secs_f64());
            let stored = appended
                .iter()
                .filter(|a| matches!(a, Appended::Stored(_)))
                .count();
            metrics.messages_stored.inc_by(stored as u64);
        }
        result
    }
}

/// Check that a commit could succeed now; see [`Store::probe`].
#[derive(ActixMessage)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Probe;

impl Handler<Probe> for StoreActor {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: Probe, _: &mut Self::Context) -> Self::Result {
        self.store()?.probe()
    }
}

impl Handler<ReadAfter> for StoreActor {
    type Result = Result<Vec<Message>, StoreError>;
    fn handle(&mut self, msg: ReadAfter, _: &mut Self::Context) -> Self::Result {
        self.store()?
            .read_after(msg.after, msg.upto, msg.max, msg.max_bytes)
    }
}

impl Handler<StreamBacklog> for StoreActor {
    type Result = ();
    fn handle(&mut self, msg: StreamBacklog, _: &mut Self::Context) -> Self::Result {
        let (mut after, mut left, mut budget) = (msg.after, msg.max, msg.max_bytes);
        loop {
            let piece = budget.min(msg.piece_bytes);
            let read = self
                .store()
                .and_then(|s| s.read_backlog(after, msg.upto, &msg.reader, left, piece));
            let done = match &read {
                Ok(b) => {
                    after = b.last();
                    // The reader's own messages count too: a read of
                    // nothing but those must end like any other, or it
                    // holds the store thread (and every commit) for as
                    // long as the reader has sent.
                    left = left.saturating_sub(b.read());
                    budget = budget.saturating_sub(b.frames().len());
                    after >= msg.upto || left == 0 || budget == 0
                }
                Err(_) => true,
            };
            let piece = BacklogPiece {
                key: msg.key,
                backlog: read,
                done,
            };
            msg.to.do_send(piece);
            // A registry that is gone wants no more pieces.
            if done || !msg.to.connected() {
                return;
            }
        }
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
