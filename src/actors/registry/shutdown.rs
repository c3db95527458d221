//! Stopping: no new logins or `SEND`s, the pending queue is committed, every
//! session is told `BYE shutdown` and given `shutdown_grace` to close, then
//! the acknowledgements are saved and the store flushed.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::login::refuse_during_shutdown;
use super::Registry;
use crate::actors::messages::{Shutdown, ToSession};
use crate::net::ByeReason;
use crate::store::Flush;

impl Handler<Shutdown> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        // Logins still waiting for their secret check are told now; those
        // being checked are refused by `admit` when the check ends.
        if let Some(auth) = self.auth.as_mut() {
            for (sid, attempt) in auth.throttle.drain_waiting() {
                self.authenticating.remove(&sid);
                refuse_during_shutdown(&attempt.to);
            }
        }
        let (idle_tx, idle_rx) = oneshot::channel();
        self.idle_waiters.push(idle_tx);
        self.commit(ctx);
        let grace = self.config.shutdown_grace;
        Box::pin(
            async move {
                let _ = idle_rx.await;
            }
            .into_actor(self)
            .then(move |_, act, _| {
                let empty_rx = act.bye_all();
                async move {
                    let _ = tokio::time::timeout(grace, empty_rx).await;
                }
                .into_actor(act)
            })
            .then(|_, act, ctx| {
                // Sessions acknowledge until they close, so save after that.
                act.save_acks(ctx);
                let flush = act.store.send(Flush);
                async move {
                    match flush.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::error!("flushing the store at shutdown failed: {e}"),
                        Err(e) => log::error!("store unreachable at shutdown: {e}"),
                    }
                }
                .into_actor(act)
            }),
        )
    }
}

impl Registry {
    /// Tells every session `BYE shutdown`; the receiver is woken when the
    /// last one is gone (at once if there are none).
    fn bye_all(&mut self) -> oneshot::Receiver<()> {
        let (empty_tx, empty_rx) = oneshot::channel();
        if self.sessions.is_empty() {
            let _ = empty_tx.send(());
        } else {
            self.empty_waiters.push(empty_tx);
        }
        for s in self.sessions.values() {
            s.to.do_send(ToSession::Bye(ByeReason::Shutdown));
        }
        empty_rx
    }

    /// Wakes whoever waits for the registry to be idle: no append in flight
    /// and nothing pending.
    pub(super) fn wake_idle(&mut self) {
        for w in self.idle_waiters.drain(..) {
            let _ = w.send(());
        }
    }

    /// Wakes whoever waits for the last session to be gone, if it is.
    pub(super) fn wake_if_empty(&mut self) {
        if self.sessions.is_empty() {
            for w in self.empty_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}
