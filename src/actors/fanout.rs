//! One hand-off per session thread: the registry reaches a logged-in
//! session either directly (its `Recipient`) or, once the session asked for
//! it with [`Route`], through its thread's [`Fanout`]. A fan-out pass of the
//! registry then sends each thread one [`Relay`] holding every session's
//! share, instead of one cross-thread message (and wake-up) per session;
//! the thread's fan-out hands each session its share locally.
//!
//! Order: once routed, everything the registry sends a session goes
//! through the fan-out's mailbox (one sender, first in first out), and
//! whatever it sent directly before was queued in the session's mailbox
//! before the switch; so a session sees its messages in the order the
//! registry sent them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::messages::{SessionId, ToSession};
use super::session::Session;

/// The sessions of this thread that are routed, by id. The address keeps
/// the session's mailbox open, as the registry's `Recipient` did.
type Local = HashMap<SessionId, Addr<Session>>;

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(HashMap::new());
    static FANOUT: RefCell<Option<Arc<Addr<Fanout>>>> = const { RefCell::new(None) };
}

/// Hands the sessions of its thread what the registry sends them in bulk.
pub struct Fanout;

impl Actor for Fanout {
    type Context = Context<Self>;
}

/// One session's message in a [`Relay`].
pub type Share = (SessionId, ToSession);

/// Several sessions' messages, each in the order the registry sent it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relay(pub Vec<Share>);

impl Handler<Relay> for Fanout {
    type Result = ();

    fn handle(&mut self, msg: Relay, _: &mut Self::Context) {
        LOCAL.with(|local| {
            let local = local.borrow();
            for (sid, m) in msg.0 {
                // A session that has gone has said so to the registry too.
                if let Some(addr) = local.get(&sid) {
                    addr.do_send(m);
                }
            }
        });
    }
}

/// A session asks to be reached through its thread's fan-out from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Route {
    /// The session.
    pub session: SessionId,
    /// Its thread's fan-out.
    pub via: Arc<Addr<Fanout>>,
}

/// Registers a session with its thread's fan-out (started on first use)
/// and returns that fan-out, for a [`Route`].
pub(super) fn join(session: SessionId, addr: Addr<Session>) -> Arc<Addr<Fanout>> {
    LOCAL.with(|local| local.borrow_mut().insert(session, addr));
    FANOUT.with(|f| {
        let mut f = f.borrow_mut();
        match f.as_ref() {
            // One left by an event loop that ended on this thread is dead.
            Some(via) if via.connected() => via.clone(),
            _ => f.insert(Arc::new(Fanout.start())).clone(),
        }
    })
}

/// Forgets a session that ended.
pub(super) fn leave(session: SessionId) {
    let _ = LOCAL.try_with(|local| {
        if let Ok(mut local) = local.try_borrow_mut() {
            local.remove(&session);
            if local.is_empty() {
                local.shrink_to_fit();
            }
        }
    });
}

/// How the registry reaches one session.
pub enum Link {
    /// Its own mailbox.
    Direct(Recipient<ToSession>),
    /// Through its thread's fan-out.
    Routed {
        /// The fan-out.
        via: Arc<Addr<Fanout>>,
        /// The session.
        session: SessionId,
    },
}

impl Link {
    /// Sends the session `msg`, after everything sent to it before.
    pub fn do_send(&self, msg: ToSession) {
        match self {
            Link::Direct(to) => to.do_send(msg),
            Link::Routed { via, session } => via.do_send(Relay(vec![(*session, msg)])),
        }
    }
}

/// Messages of one registry pass, grouped per fan-out: [`Batch::send`]
/// queues, [`Batch::flush`] sends each fan-out one [`Relay`]. Nothing else
/// may be sent to a routed session between the two.
#[derive(Default)]
pub struct Batch {
    relays: Vec<(Arc<Addr<Fanout>>, Vec<Share>)>,
}

impl Batch {
    /// Queues `msg` for the session behind `link` (sent at once if direct).
    pub fn send(&mut self, link: &Link, msg: ToSession) {
        match link {
            Link::Direct(to) => to.do_send(msg),
            Link::Routed { via, session } => {
                match self.relays.iter_mut().find(|(v, _)| Arc::ptr_eq(v, via)) {
                    Some((_, msgs)) => msgs.push((*session, msg)),
                    None => self.relays.push((via.clone(), vec![(*session, msg)])),
                }
            }
        }
    }

    /// Sends every fan-out its share.
    pub fn flush(self) {
        for (via, msgs) in self.relays {
            via.do_send(Relay(msgs));
        }
    }
}
