//! The sessions' deadlines (no `LOGIN` in time, silent for too long), kept
//! per thread in one queue and served by one timer: a session arms a
//! deadline with the address of itself and is sent [`Due`] once it has
//! passed. The session then checks what is actually due and arms its next
//! one, so a deadline that no longer matters costs one message and nothing
//! else.
//!
//! One entry is 24 bytes in a queue shared by the thread's sessions, against
//! a timer future and a boxed interval in every session's context. A
//! session that ends leaves its entries behind (each keeps its mailbox's
//! allocation through the weak address), so the queue is swept of them
//! whenever it has doubled since the last sweep: it holds at most about
//! twice the entries of the live sessions, whatever the connection churn.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::Instant;

use actix::{Message, WeakAddr};
use tokio::sync::Notify;

use super::session::Session;

/// A deadline armed at this instant has passed: the session checks what is
/// due.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Due;

/// One armed deadline.
struct Entry {
    at: Instant,
    session: WeakAddr<Session>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so the max-heap yields the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

/// Fewest entries at which the queue is swept of ended sessions' entries.
const SWEEP_FROM: usize = 64;

/// The thread's queue of deadlines and whether a timer task serves it.
#[derive(Default)]
struct Queue {
    entries: BinaryHeap<Entry>,
    /// Entries left by the last sweep: the next one is due at twice that.
    swept: usize,
    /// Wakes the timer task when an earlier deadline is armed.
    earlier: Rc<Notify>,
    /// The timer task runs (it ends when the queue is empty, or with the
    /// thread's event loop).
    running: bool,
}

thread_local! {
    static QUEUE: RefCell<Queue> = RefCell::new(Queue::default());
}

/// Sends `session` [`Due`] once `at` has passed. Must run on the session's
/// thread, inside its event loop.
pub(super) fn arm(at: Instant, session: WeakAddr<Session>) {
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        let earliest = q.entries.peek().map(|e| e.at);
        q.entries.push(Entry { at, session });
        if q.entries.len() >= (2 * q.swept).max(SWEEP_FROM) {
            q.entries.retain(|e| e.session.upgrade().is_some());
            let left = q.entries.len();
            q.swept = left;
            q.entries.shrink_to(2 * left.max(SWEEP_FROM));
        }
        if !q.running {
            q.running = true;
            actix_rt::spawn(serve());
        } else if earliest.is_none_or(|e| at < e) {
            q.earlier.notify_one();
        }
    });
}

/// Marks the timer task stopped when it ends, however it ends (its event
/// loop may be dropped with it; the next `arm` then starts another).
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        let _ = QUEUE.try_with(|q| {
            if let Ok(mut q) = q.try_borrow_mut() {
                q.running = false;
            }
        });
    }
}

/// The thread's timer task: sleeps until the earliest deadline (or until an
/// earlier one is armed), sends [`Due`] for every passed one, and ends once
/// none is left.
async fn serve() {
    let _running = Running;
    loop {
        let (next, earlier) = QUEUE.with(|q| {
            let q = q.borrow();
            (q.entries.peek().map(|e| e.at), q.earlier.clone())
        });
        let Some(next) = next else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = earlier.notified() => continue,
        }
        let now = Instant::now();
        let passed: Vec<WeakAddr<Session>> = QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            let mut passed = Vec::new();
            while q.entries.peek().is_some_and(|e| e.at <= now) {
                if let Some(e) = q.entries.pop() {
                    passed.push(e.session);
                }
            }
            if q.entries.is_empty() {
                q.entries.shrink_to_fit();
            }
            q.swept = q.swept.min(q.entries.len());
            passed
        });
        for session in passed {
            if let Some(addr) = session.upgrade() {
                addr.do_send(Due);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use actix::prelude::*;

    use super::QUEUE;
    use crate::actors::registry::{Registry, RegistryConfig};
    use crate::actors::session::{Session, SessionConfig};
    use crate::net::transport::Connection;
    use crate::store::{MemoryStore, Recovered, StoreActor};

    /// Entries in this thread's queue.
    fn armed() -> usize {
        QUEUE.with(|q| q.borrow().entries.len())
    }

    /// Sessions that end long before their login deadline leave no pile of
    /// entries behind: connection churn cannot grow the queue without bound.
    #[actix_rt::test]
    async fn ended_sessions_entries_are_swept() {
        let store = SyncArbiter::start(1, || {
            StoreActor::new(Some(
                Box::new(MemoryStore::new()) as Box<dyn crate::store::Store>
            ))
        });
        let registry = Arc::new(
            Registry::new(RegistryConfig::default(), [], Recovered::default(), store).start(),
        );
        let config = Arc::new(SessionConfig {
            login_timeout: Some(Duration::from_secs(3600)),
            ..SessionConfig::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let before = armed();
        const SESSIONS: usize = 300;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for _ in 0..SESSIONS {
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let session = Session::new(Connection::plain(server), registry.clone(), config.clone())
                .start()
                .downgrade();
            // The client leaves at once; its session ends on the end of input.
            drop(client);
            while session.upgrade().is_some() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a session did not end"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let left = armed().saturating_sub(before);
        assert!(
            left <= 2 * super::SWEEP_FROM,
            "{left} entries left by {SESSIONS} ended sessions"
        );
    }
}
