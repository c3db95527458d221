//! The registry: the one actor that knows every client id, who is online,
//! what each has acknowledged, and the message log.
//!
//! Messages flow one way: a session's `SEND` becomes a [`Publish`]; the
//! registry numbers a batch of them, appends the batch to the store in one
//! go (group commit), and only when the store says it is stored does it
//! answer `SENT` and push the messages to online sessions.
//!
//! Every online session has a cursor (the last seq it was considered for)
//! and a credit (how many frame bytes it may still have in flight). Live
//! fan-out, backlog replay after login and catch-up of a slow reader are one
//! mechanism, [`Registry::pump`]: while a session has credit and its cursor
//! is behind the head, send it the next messages, from the in-memory tail
//! when they are still there, from the store otherwise. A reader that stops
//! reading runs out of credit and simply stops being pushed to; the log is
//! its buffer.
//!
//! One file per step of that flow, each an `impl Registry` block with the
//! handlers of its messages: `login.rs` (secret checks, admission,
//! disconnects), `commit.rs` (the pending queue, group commit, `SENT`
//! answers, resent message ids), `delivery.rs` (pumping sessions from the
//! tail or the store, credit), `acks.rs` (saving `last_ack`s, pruning) and
//! `shutdown.rs` (the stop, and the waits for idle and for no sessions),
//! and `follow.rs` (the commit stream every node follows, and takeover
//! across nodes).
//! This file holds the state they share.

mod acks;
mod allow;
mod commit;
mod delivery;
mod follow;
mod limits;
mod login;
mod shutdown;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

pub use self::allow::{AllowChanged, Reconfigure};
use self::commit::PendingSend;
use self::login::{Auth, FAILURE_SWEEP_INTERVAL};
use super::dedupe::MidWindow;
use super::messages::{Publish, SessionId, ToSession};
use super::retention::Pruning;
pub use super::retention::Retain;
use super::tail::Tail;
use super::throttle::Throttle;
use crate::auth::{Secrets, Verifier, VERIFIER_THREADS};
use crate::net::Message;
use crate::store::{Recovered, StoreActor};
use crate::types::{unix_ms_now, ClientId, Seq};

/// Tunables of the registry; the defaults suit a small machine.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// A session's delivery credit: frame bytes it may be pushed beyond
    /// what it has handed back as written. A store read may run one more
    /// window ahead, so at most twice this plus one frame is unwritten.
    pub session_window_bytes: usize,
    /// Most messages kept in the in-memory tail.
    pub tail_messages: usize,
    /// Most frame bytes kept in the in-memory tail.
    pub tail_bytes: usize,
    /// Most messages in one store append…
    pub max_batch: usize,
    /// …and most text bytes (but at least one message).
    pub max_batch_bytes: usize,
    /// Most messages read from the store at a time for one session (the
    /// bytes read are bounded by the session's credit plus one window).
    pub read_chunk: usize,
    /// Most messages in one push to a session.
    pub max_deliver: usize,
    /// How often changed `last_ack`s are saved.
    pub ack_flush_interval: Duration,
    /// This node's name in a cluster's store (its sessions' claims).
    pub node: String,
    /// How long a shutdown waits for sessions to close.
    pub shutdown_grace: Duration,
    /// Which acknowledged messages to keep.
    pub retain: Retain,
    /// Messages older than this are pruned, received by every id or not.
    pub retain_max_age: Option<Duration>,
    /// The oldest messages are pruned while their text is more bytes than
    /// this, received by every id or not.
    pub retain_max_bytes: Option<u64>,
    /// Message ids remembered per client id, at least…
    pub dedupe_keep: usize,
    /// …and every one from this long ago.
    pub dedupe_window: Duration,
    /// The server's metrics.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            session_window_bytes: 256 * 1024,
            tail_messages: 100_000,
            tail_bytes: 16 * 1024 * 1024,
            max_batch: 4096,
            max_batch_bytes: 8 * 1024 * 1024,
            read_chunk: 4096,
            max_deliver: 1024,
            ack_flush_interval: Duration::from_millis(200),
            node: node_name(),
            shutdown_grace: Duration::from_secs(3),
            retain: Retain::All,
            retain_max_age: None,
            retain_max_bytes: None,
            dedupe_keep: 10_000,
            dedupe_window: Duration::from_secs(24 * 3600),
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        }
    }
}

/// A name for this process that no other node of a cluster has: its
/// process id and the time it started, in hex.
fn node_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:x}-{:x}", std::process::id(), nanos)
}

/// What the registry keeps about one allowed client id.
#[derive(Debug, Default)]
struct User {
    last_ack: Seq,
    /// The highest `last_ack` known to be in the store: pruning goes by it,
    /// so a login elsewhere (which reads the store's) never finds pruned
    /// messages it was not told are acknowledged.
    saved_ack: Seq,
    online: Option<SessionId>,
}

/// An online (logged-in) session as the registry sees it.
struct Online {
    id: ClientId,
    to: Recipient<ToSession>,
    /// Highest seq this session was pushed or skipped past.
    cursor: Seq,
    /// Frame bytes it may still be pushed (may dip below zero by one push).
    credit: i64,
    /// `WELCOME` sent: pushing may start.
    welcomed: bool,
    /// A store read for it is under way.
    reading: bool,
    /// Its login's claim in a cluster's store (0 on a single node): a
    /// claim with a higher epoch, on another node, replaces it.
    epoch: u64,
    /// Until it has been pushed up to the head it was welcomed at: that
    /// head, and its count in the replaying sessions gauge.
    replay: Option<(Seq, crate::metrics::GaugeGuard)>,
}

/// The registry actor. Start it on an arbiter of its own.
pub struct Registry {
    config: RegistryConfig,
    store: Addr<StoreActor>,
    users: HashMap<ClientId, User>,
    /// Ids once allowed (in the store's cursors or removed by a reload),
    /// kept so that allowing one again continues from its last ack.
    retired: HashMap<ClientId, User>,
    sessions: HashMap<SessionId, Online>,
    /// Highest committed seq with every one below it known: the end of
    /// the commit stream followed so far (see `follow.rs`).
    head: Seq,
    /// Other nodes write to the store too (a cluster).
    shared: bool,
    /// This node's own committed messages behind a gap that a catch-up
    /// read has yet to fill, in seq order.
    ahead: Vec<Message>,
    /// A catch-up read is under way…
    following: bool,
    /// …and another should follow it.
    follow_again: bool,
    /// The last catch-up read failed (logged once, until one works).
    follow_failing: bool,
    /// A check of the sessions' claims is under way…
    checking_sessions: bool,
    /// …and another should follow it.
    check_sessions_again: bool,
    tail: Tail,
    pending: Vec<PendingSend>,
    /// Recent message ids per client id (see [`MidWindow`]).
    mids: HashMap<ClientId, MidWindow>,
    /// Message ids queued or being stored, not yet in `mids`.
    inflight_mids: HashSet<(ClientId, String)>,
    /// An append is in flight.
    committing: bool,
    /// A commit will start once the mailbox is drained.
    commit_scheduled: bool,
    /// Since when appends find the store unavailable (logged once).
    commits_waiting_since: Option<Instant>,
    /// Client ids whose `last_ack` changed since the last save.
    dirty_acks: HashSet<ClientId>,
    shutting_down: bool,
    /// Secrets checking, when the server has a secrets file.
    auth: Option<Auth>,
    /// Sessions whose secret is being checked, with the `SEND`s they
    /// pipelined behind their `LOGIN` (handled once they are admitted).
    authenticating: HashMap<SessionId, Vec<Publish>>,
    /// How far the store is pruned.
    pruning: Pruning,
    /// Woken when no append is in flight and nothing is pending.
    idle_waiters: Vec<oneshot::Sender<()>>,
    /// Woken when the last session is gone.
    empty_waiters: Vec<oneshot::Sender<()>>,
}

impl Registry {
    /// A registry for the allowed ids, continuing from what the store holds.
    pub fn new(
        config: RegistryConfig,
        allowed: impl IntoIterator<Item = ClientId>,
        recovered: Recovered,
        store: Addr<StoreActor>,
    ) -> Registry {
        let user = |last_ack: Seq| User {
            last_ack,
            saved_ack: last_ack,
            online: None,
        };
        let users: HashMap<ClientId, User> = allowed
            .into_iter()
            .map(|id| {
                let last_ack = recovered.acks.get(&id).copied().unwrap_or(Seq::ZERO);
                (id, user(last_ack))
            })
            .collect();
        let retired = recovered
            .acks
            .iter()
            .filter(|(id, _)| !users.contains_key(*id))
            .map(|(id, ack)| (id.clone(), user(*ack)))
            .collect();
        config.metrics.head_seq.set(recovered.head.0 as i64);
        let now = unix_ms_now();
        let mut mids: HashMap<ClientId, MidWindow> = HashMap::new();
        for r in recovered.mids {
            mids.entry(r.client).or_default().insert(
                r.mid,
                r.seq,
                r.unix_ms,
                config.dedupe_keep,
                config.dedupe_window.as_millis() as u64,
                now,
            );
        }
        Registry {
            mids,
            config,
            store,
            users,
            retired,
            sessions: HashMap::new(),
            head: recovered.head,
            shared: recovered.shared,
            ahead: Vec::new(),
            following: false,
            follow_again: false,
            follow_failing: false,
            checking_sessions: false,
            check_sessions_again: false,
            tail: Tail::default(),
            pending: Vec::new(),
            inflight_mids: HashSet::new(),
            committing: false,
            commit_scheduled: false,
            commits_waiting_since: None,
            dirty_acks: HashSet::new(),
            shutting_down: false,
            auth: None,
            authenticating: HashMap::new(),
            pruning: Pruning::default(),
            idle_waiters: Vec::new(),
            empty_waiters: Vec::new(),
        }
    }

    /// Checks every `LOGIN`'s secret against `secrets` (on `verifier`'s
    /// [`VERIFIER_THREADS`] threads, throttled) before admitting it.
    pub fn with_secrets(mut self, secrets: Secrets, verifier: Addr<Verifier>) -> Registry {
        self.auth = Some(Auth {
            secrets,
            verifier,
            throttle: Throttle::new(VERIFIER_THREADS),
            wake: None,
            over_cap: (0, None),
        });
        self
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.config.ack_flush_interval;
        ctx.run_interval(every, |act, ctx| act.save_acks(ctx));
        // Every minute: mids age out, the store forgets those the registry
        // no longer remembers, and pruning is retried (and what holds it
        // back reported).
        ctx.run_interval(Duration::from_secs(60), |act, ctx| {
            act.forget_mids();
            act.prune(ctx);
        });
        self.start_following(ctx);
        ctx.run_interval(FAILURE_SWEEP_INTERVAL, |act, _| {
            if let Some(auth) = act.auth.as_mut() {
                auth.throttle.sweep(Instant::now());
            }
        });
    }
}
