//! Sessions coming and going: a `LOGIN` waits its turn for a secret check
//! (see [`Throttle`]), is admitted or refused, and a `Disconnect` forgets
//! the session.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{Online, Registry};
use crate::actors::messages::{Disconnect, InputEnded, Login, SessionId, ToSession};
use crate::actors::throttle::{Origin, Ready, Throttle, MAX_IN_PROGRESS_PER_ORIGIN};
use crate::auth::{Secrets, Verifier, Verify};
use crate::net::{ByeReason, ErrorCode, FrameError};
use crate::store::{ClaimLogin, CountFromOthers, LoginClaim, StoreError};
use crate::types::{ClientId, Seq};

/// Secrets checking: the hashes, the verifier threads, and the throttle
/// that decides when each login's secret is checked, against guessing.
pub(super) struct Auth {
    pub(super) secrets: Secrets,
    pub(super) verifier: Addr<Verifier>,
    pub(super) throttle: Throttle<Attempt>,
    /// The timer that starts the check whose wait ends first, and when.
    pub(super) wake: Option<(Instant, SpawnHandle)>,
    /// Logins refused for the in-progress cap since the last log line, and
    /// when that line was written (one line per 10 s, not one per refusal:
    /// an attack would flood the log).
    pub(super) over_cap: (u64, Option<Instant>),
}

/// How often refusals for the in-progress cap are logged, at most.
const OVER_CAP_LOG_EVERY: Duration = Duration::from_secs(10);

/// A login whose secret waits to be checked.
pub(super) struct Attempt {
    pub(super) to: Recipient<ToSession>,
    secret: Option<String>,
    /// The peer, for logs.
    peer: String,
}

/// How often forgotten login failures are swept from memory.
pub(super) const FAILURE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Refuses a login because the server is stopping; the client may retry
/// (on another node, or once it is back).
pub(super) fn refuse_during_shutdown(to: &Recipient<ToSession>) {
    to.do_send(ToSession::LoginRefused(
        FrameError::new(ErrorCode::Limit, "server is shutting down"),
        ByeReason::Shutdown,
    ));
}

/// The error for `id`, which is not on the allow-list.
pub(super) fn unknown_client_error(id: &ClientId) -> FrameError {
    FrameError::new(
        ErrorCode::UnknownClient,
        format!("client id {id} is not allowed"),
    )
}

/// The refusal of a login as `id`, which is not on the allow-list.
fn unknown_client(id: &ClientId) -> ToSession {
    ToSession::LoginRefused(unknown_client_error(id), ByeReason::UnknownClient)
}

impl Handler<Login> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Login, ctx: &mut Self::Context) {
        let Login {
            session: sid,
            id,
            to,
            peer,
            secret,
        } = msg;
        let origin = Origin::of(peer.map(|p| p.ip()));
        let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
        if self.shutting_down {
            refuse_during_shutdown(&to);
            return;
        }
        let Some(auth) = self.auth.as_mut() else {
            self.admit(sid, id, to, &peer, ctx);
            return;
        };
        let attempt = Attempt { to, secret, peer };
        match auth.throttle.request(sid, origin, id.clone(), attempt) {
            Ok(()) => {
                self.authenticating.insert(sid, Vec::new());
                self.start_checks(ctx);
            }
            Err(attempt) => {
                let (refused, last) = &mut auth.over_cap;
                *refused += 1;
                if last.is_none_or(|t| t.elapsed() >= OVER_CAP_LOG_EVERY) {
                    log::warn!(
                        "refused login as {id} from {}: {MAX_IN_PROGRESS_PER_ORIGIN} logins already in progress from its address ({refused} such refusal(s) since the last line)",
                        attempt.peer
                    );
                    *refused = 0;
                    *last = Some(Instant::now());
                }
                attempt.to.do_send(ToSession::LoginRefused(
                    FrameError::new(
                        ErrorCode::Limit,
                        "too many logins in progress from your address",
                    ),
                    ByeReason::Limit,
                ));
            }
        }
    }
}

impl Handler<InputEnded> for Registry {
    type Result = ();

    fn handle(&mut self, msg: InputEnded, _: &mut Self::Context) {
        let Some(attempt) = self
            .auth
            .as_mut()
            .and_then(|a| a.throttle.cancel(msg.session))
        else {
            // Not waiting: checked already, being checked, or no secrets.
            return;
        };
        self.authenticating.remove(&msg.session);
        log::info!(
            "{}: input ended while its LOGIN waited for a secret check; refused unchecked",
            attempt.peer
        );
        attempt.to.do_send(ToSession::LoginRefused(
            FrameError::new(
                ErrorCode::Limit,
                "input ended before the secret could be checked",
            ),
            ByeReason::Limit,
        ));
    }
}

impl Handler<Disconnect> for Registry {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, ctx: &mut Self::Context) {
        if self.authenticating.remove(&msg.session).is_some() {
            // Its secret will not be checked, if that has not begun.
            if let Some(auth) = self.auth.as_mut() {
                auth.throttle.cancel(msg.session);
            }
        }
        if let Some(s) = self.sessions.get(&msg.session) {
            log::info!("client {} disconnected", s.id);
            // Its acknowledgements are saved now, not at the next flush: it
            // may log in again at once, on another node.
            if self.dirty_acks.contains(&s.id) {
                self.save_acks(ctx);
            }
        }
        self.remove_session(msg.session);
    }
}

impl Registry {
    /// Hands the verifier threads every check the throttle lets start now,
    /// and sets a timer for the wait that ends first.
    fn start_checks(&mut self, ctx: &mut Context<Self>) {
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut started = Vec::new();
        while let Some(mut ready) = auth.throttle.next(now) {
            let hash = self
                .users
                .contains_key(&ready.id)
                .then(|| auth.secrets.hash(&ready.id).map(str::to_owned))
                .flatten();
            log::debug!(
                "checking the secret of {} from {}",
                ready.id,
                ready.item.peer
            );
            let check = auth.verifier.send(Verify {
                secret: ready.item.secret.take(),
                hash,
            });
            started.push((ready, check));
        }
        Self::set_wake(auth, now, ctx);
        for (ready, check) in started {
            let Ready { session, id, item } = ready;
            check
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let ok = res.unwrap_or_else(|e| {
                        log::error!("secret verifier unreachable: {e}");
                        false
                    });
                    act.on_verified(ok, session, id, item, ctx);
                })
                .spawn(ctx);
        }
    }

    /// Sets the timer that starts the checks whose wait ends first, unless
    /// one that fires no later is already set.
    fn set_wake(auth: &mut Auth, now: Instant, ctx: &mut Context<Self>) {
        let Some(at) = auth.throttle.wake_at(now) else {
            return;
        };
        if auth.wake.as_ref().is_none_or(|(t, _)| at < *t) {
            if let Some((_, old)) = auth.wake.take() {
                ctx.cancel_future(old);
            }
            let timer = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
                if let Some(auth) = act.auth.as_mut() {
                    auth.wake = None;
                }
                act.start_checks(ctx);
            });
            auth.wake = Some((at, timer));
        }
    }

    /// A secret was checked: admit the session, or refuse it once the wait
    /// its failure earned is over (see [`Throttle`]). The outcome counts even
    /// if the connection closed meanwhile.
    fn on_verified(
        &mut self,
        ok: bool,
        sid: SessionId,
        id: ClientId,
        attempt: Attempt,
        ctx: &mut Context<Self>,
    ) {
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        let verdict = auth.throttle.finished(sid, ok, Instant::now());
        // `None`: it disconnected while its secret was being checked.
        let queued = self.authenticating.remove(&sid);
        self.start_checks(ctx);
        let Attempt { to, peer, .. } = attempt;
        if ok {
            match queued {
                Some(queued) => {
                    self.admit(sid, id, to, &peer, ctx);
                    self.publish_all(queued, ctx);
                }
                None => log::info!("right secret for {id} from {peer}, but it had disconnected"),
            }
            return;
        }
        self.config.metrics.auth_failures.inc();
        let n = verdict.failures;
        let gone = if queued.is_some() {
            ""
        } else {
            "; it had disconnected"
        };
        let refusal = if self.users.contains_key(&id) {
            log::warn!(
                "failed login as {id} from {peer}: wrong or missing secret ({n} in a row{gone})"
            );
            ToSession::LoginRefused(
                FrameError::new(ErrorCode::AuthFailed, "wrong or missing secret"),
                ByeReason::AuthFailed,
            )
        } else {
            log::warn!("failed login as unknown client id {id} from {peer} ({n} in a row{gone})");
            unknown_client(&id)
        };
        if queued.is_some() {
            ctx.run_later(verdict.delay, move |_, _| to.do_send(refusal));
        }
    }

    /// Logs a session in as `id` if `id` is allowed: takes it over from an
    /// older session, counts its backlog and welcomes it.
    fn admit(
        &mut self,
        sid: SessionId,
        id: ClientId,
        to: Recipient<ToSession>,
        peer: &str,
        ctx: &mut Context<Self>,
    ) {
        // Every login passes here, also one whose secret was checked while
        // the shutdown began: it would never be told `BYE shutdown`.
        if self.shutting_down {
            refuse_during_shutdown(&to);
            return;
        }
        let Some(user) = self.users.get_mut(&id) else {
            log::info!("refused login of unknown client id {id} from {peer}");
            to.do_send(unknown_client(&id));
            return;
        };
        let last_ack = user.last_ack;
        let previous = user.online.replace(sid);
        if let Some(old) = previous.and_then(|old| self.sessions.remove(&old)) {
            log::info!("client {id} logged in again from {peer}; replacing its older connection");
            old.to.do_send(ToSession::Bye(ByeReason::Replaced));
        }
        log::info!("client {id} logged in from {peer} (last ack {last_ack})");
        self.sessions.insert(
            sid,
            Online {
                id: id.clone(),
                to,
                cursor: last_ack,
                credit: self.config.session_window_bytes as i64,
                welcomed: false,
                reading: false,
                epoch: 0,
                replay: None,
            },
        );
        if self.shared {
            self.claim(sid, id, last_ack, ctx);
            return;
        }
        if self.tail.covers_after(last_ack, self.head) {
            let pending = self
                .tail
                .after(last_ack)
                .filter(|m| m.from() != &id)
                .count() as u64;
            self.welcome(sid, pending, ctx);
            return;
        }
        self.count_backlog(sid, id, last_ack, ctx);
    }

    /// Asks the store how many messages from others follow `last_ack`
    /// (older than the tail), then welcomes the session with that count.
    fn count_backlog(
        &mut self,
        sid: SessionId,
        id: ClientId,
        last_ack: Seq,
        ctx: &mut Context<Self>,
    ) {
        let count = CountFromOthers {
            after: last_ack,
            upto: self.head,
            reader: id,
        };
        self.store
            .send(count)
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(Ok(pending)) => act.welcome(sid, pending, ctx),
                Ok(Err(e)) => act.refuse_unreadable(sid, &e),
                Err(e) => log::error!("store unreachable during login: {e}"),
            })
            .spawn(ctx);
    }

    /// In a cluster: claims the id's session in the store (ending its
    /// session on any other node), learns its `last_ack` and backlog there,
    /// then welcomes it. While the store is unreachable the login is
    /// refused with `BYE shutdown`, so the client retries, maybe elsewhere.
    fn claim(&mut self, sid: SessionId, id: ClientId, known_ack: Seq, ctx: &mut Context<Self>) {
        let claim = LoginClaim {
            client: id,
            node: self.config.node.clone(),
            known_ack,
            known_head: self.head,
        };
        self.store
            .send(ClaimLogin(claim))
            .into_actor(self)
            .map(move |res, act, ctx| {
                let view = match res {
                    Ok(Ok(view)) => view,
                    Ok(Err(e)) => return act.refuse_unreadable(sid, &e),
                    Err(e) => {
                        return act.refuse_unreadable(
                            sid,
                            &StoreError::Engine(format!("store actor unreachable: {e}")),
                        )
                    }
                };
                let Some(s) = act.sessions.get_mut(&sid) else {
                    return;
                };
                s.epoch = view.epoch;
                s.cursor = s.cursor.max(view.last_ack);
                if let Some(u) = act.users.get_mut(&s.id) {
                    u.last_ack = u.last_ack.max(view.last_ack);
                }
                act.welcome(sid, view.backlog, ctx);
                if view.head > act.head {
                    act.follow(ctx);
                }
            })
            .spawn(ctx);
    }

    /// Refuses a login whose backlog could not be read: `BYE shutdown`
    /// when the store is unreachable (retry, maybe on another node), `BYE
    /// limit` otherwise.
    fn refuse_unreadable(&mut self, sid: SessionId, e: &StoreError) {
        log::error!("reading the log for a login failed: {e}");
        let bye = match e {
            StoreError::Unavailable(_) => ByeReason::Shutdown,
            _ => ByeReason::Limit,
        };
        if let Some(s) = self.sessions.get(&sid) {
            s.to.do_send(ToSession::LoginRefused(
                FrameError::new(ErrorCode::Limit, format!("cannot read the log: {e}")),
                bye,
            ));
        }
        self.remove_session(sid);
    }

    /// Forgets a session: its id is offline unless a newer session took it
    /// over.
    pub(super) fn remove_session(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.remove(&sid) {
            if let Some(u) = self.users.get_mut(&s.id) {
                if u.online == Some(sid) {
                    u.online = None;
                }
            }
        }
        self.wake_if_empty();
    }
}
