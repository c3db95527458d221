//! The allow-list and the secrets changing while the broker runs (a
//! reload): removed ids are logged out with `BYE unknown-client`, added ids
//! may log in, and a changed secret applies to the next login.

use actix::prelude::*;

use super::Registry;
use crate::actors::messages::ToSession;
use crate::auth::Secrets;
use crate::net::ByeReason;
use crate::types::ClientId;

/// New allow-list and secrets for the registry. `secrets` only counts when
/// the registry checks secrets already (it was started with them); a
/// registry without them ignores it.
#[derive(Message, Debug)]
#[rtype(result = "AllowChanged")]
pub struct Reconfigure {
    /// Every id allowed from now on.
    pub allowed: Vec<ClientId>,
    /// The secrets every later login is checked against.
    pub secrets: Option<Secrets>,
}

/// What a [`Reconfigure`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AllowChanged {
    /// Ids allowed now that were not before, sorted.
    pub added: Vec<ClientId>,
    /// Ids no longer allowed, sorted.
    pub removed: Vec<ClientId>,
    /// Online sessions ended because their id was removed.
    pub ended: usize,
}

impl Handler<Reconfigure> for Registry {
    type Result = MessageResult<Reconfigure>;

    fn handle(&mut self, msg: Reconfigure, ctx: &mut Self::Context) -> Self::Result {
        let allowed: std::collections::HashSet<ClientId> = msg.allowed.into_iter().collect();
        let mut removed: Vec<ClientId> = self
            .users
            .keys()
            .filter(|id| !allowed.contains(*id))
            .cloned()
            .collect();
        let mut added: Vec<ClientId> = allowed
            .iter()
            .filter(|id| !self.users.contains_key(*id))
            .cloned()
            .collect();
        removed.sort();
        added.sort();
        // Their unsaved acknowledgements are saved while they are still known.
        if removed.iter().any(|id| self.dirty_acks.contains(id)) {
            self.save_acks(ctx);
        }
        let mut ended = 0;
        for id in &removed {
            let Some(mut user) = self.users.remove(id) else {
                continue;
            };
            if let Some(sid) = user.online.take() {
                if let Some(s) = self.sessions.remove(&sid) {
                    log::info!("client {id} is no longer allowed; ending its connection");
                    s.to.do_send(ToSession::Ended(
                        super::login::unknown_client_error(id),
                        ByeReason::UnknownClient,
                    ));
                    ended += 1;
                }
            }
            self.retired.insert(id.clone(), user);
        }
        for id in &added {
            let user = self.retired.remove(id).unwrap_or_default();
            self.users.insert(id.clone(), user);
        }
        match (self.auth.as_mut(), msg.secrets) {
            (Some(auth), Some(secrets)) => auth.secrets = secrets,
            (None, Some(_)) => {
                log::warn!("secrets given to a registry started without them: ignored")
            }
            _ => {}
        }
        self.wake_if_empty();
        MessageResult(AllowChanged {
            added,
            removed,
            ended,
        })
    }
}
