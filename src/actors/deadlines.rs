//! The sessions' deadlines (no `LOGIN` in time, silent for too long), kept
//! per thread in one queue and served by one timer: a session arms a
//! deadline with the address of itself and is sent [`Due`] once it has
//! passed. The session then checks what is actually due and arms its next
//! one, so a deadline that no longer matters costs one message and nothing
//! else.
//!
//! One entry is 24 bytes in a queue shared by the thread's sessions, against
//! a timer future and a boxed interval in every session's context.

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

/// The thread's queue of deadlines and whether a timer task serves it.
#[derive(Default)]
struct Queue {
    entries: BinaryHeap<Entry>,
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
            passed
        });
        for session in passed {
            if let Some(addr) = session.upgrade() {
                addr.do_send(Due);
            }
        }
    }
}
