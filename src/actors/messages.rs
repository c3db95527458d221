//! The actix messages sessions and the registry exchange.
//!
//! Sessions talk to the registry through `Addr<Registry>`; the registry talks
//! to a session only through the `Recipient<ToSession>` the session handed
//! over at login, so a test can stand any actor in for a session.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use actix::{Message as ActixMessage, Recipient};
use bytes::Bytes;

use crate::net::{Backlog, Message};
use crate::net::{ByeReason, FrameError, Tags};
use crate::types::{ClientId, Seq};

/// Identifies one connection for its whole life (ids are never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl SessionId {
    /// A fresh, process-wide unique id.
    pub fn next() -> SessionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SessionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What the registry tells a session. All of it travels through one mailbox,
/// so the session sees it in the order the registry sent it.
#[derive(ActixMessage, Debug)]
#[rtype(result = "()")]
pub enum ToSession {
    /// The login succeeded; `pending` backlog messages follow.
    Welcome {
        /// The id now logged in.
        id: ClientId,
        /// Backlog size.
        pending: u64,
        /// Frame bytes the registry may have pushed and not had back as
        /// [`Credit`]: the session returns credit before the registry runs
        /// low, and not for every write.
        window: usize,
    },
    /// Messages to write, in seq order. Their frame bytes count against the
    /// session's credit until it returns them with [`Credit`].
    Deliver(Vec<Message>),
    /// Backlog read back from the store, to write as it is; counts against
    /// the credit like [`ToSession::Deliver`]. Boxed: every message to a
    /// session is as big as the biggest kind, and a broadcast queues one
    /// per online session.
    Backlog(Box<Backlog>),
    /// Each seq answers the session's oldest unanswered `SEND`, in order.
    Sent(Vec<Seq>),
    /// The oldest unanswered `SEND` was refused.
    SendRefused(FrameError),
    /// The login was refused: write the error, say `BYE`, close.
    LoginRefused(FrameError, ByeReason),
    /// Say `BYE` and close.
    Bye(ByeReason),
    /// A logged-in session must end (its id was removed from the
    /// allow-list): write the error, say `BYE`, close.
    Ended(FrameError, ByeReason),
}

/// A session asks to log in as `id`.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Login {
    /// The asking session.
    pub session: SessionId,
    /// The requested id.
    pub id: ClientId,
    /// The secret sent with `LOGIN`, if any.
    pub secret: Option<String>,
    /// Where the registry sends this session's deliveries and answers.
    pub to: Recipient<ToSession>,
    /// The peer, for logs.
    pub peer: Option<SocketAddr>,
}

/// A logged-in session's `SEND`.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Publish {
    /// The sending session.
    pub session: SessionId,
    /// The text.
    pub text: Bytes,
    /// The frame's tags.
    pub tags: Tags,
}

/// Every `SEND` a session decoded from one read, in order. One message per
/// read rather than per frame, so that a client's burst reaches the registry
/// whole and goes into one commit (one fsync) instead of its first line going
/// alone and the rest waiting a whole commit for the next.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct PublishBatch(pub Vec<Publish>);

/// A cumulative acknowledgement, already checked by the session against what
/// it was sent.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Ack {
    /// The acknowledging client id.
    pub id: ClientId,
    /// Everything up to this seq is handled.
    pub seq: Seq,
}

/// Save this id's `last_ack` now (answered once it is stored, or failed):
/// a client that quits is told `BYE quit` only after its acknowledgements
/// are stored, so logging in again at once, on any node, does not bring
/// back what it acknowledged.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct SaveAck {
    /// The client id whose `last_ack` to save.
    pub id: ClientId,
}

/// The session wrote `bytes` of delivered frames to its socket; the registry
/// may push that much more.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Credit {
    /// The session.
    pub session: SessionId,
    /// Frame bytes written.
    pub bytes: usize,
}

/// The client ended its input (it may still read). A `LOGIN` of it that
/// still waits for its secret check is refused at once instead of checked:
/// a guesser that gives up must not cost a check.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct InputEnded {
    /// The session.
    pub session: SessionId,
}

/// The session is gone.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// The session.
    pub session: SessionId,
}

/// Stop: confirm what is pending, save the cursors, flush the store, say
/// `BYE shutdown` to everyone and wait (bounded) for the sessions to close.
#[derive(ActixMessage)]
#[rtype(result = "()")]
pub struct Shutdown;
