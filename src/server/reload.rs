//! SIGHUP (what `systemctl reload` sends): the settings are read again and
//! the allow-list, the secrets and the TLS certificate are swapped in while
//! every connection stays up. Everything is read and checked before
//! anything changes, so a bad file keeps the running settings whole.
//! Settings that only a restart can change are compared with the running
//! ones and named in the log.

use std::sync::Arc;

use actix::Addr;

use super::{ServerConfig, StorageConfig};
use crate::actors::registry::{AllowChanged, Reconfigure};
use crate::actors::Registry;
use crate::net::tls::ServerCert;

/// Reads the settings again (the config file, the secrets file, the TLS
/// files), as at start; the command line and the environment are those the
/// process started with. An error is one line saying what is wrong.
#[derive(Clone)]
pub struct Reloader(Arc<dyn Fn() -> Result<ServerConfig, String> + Send + Sync>);

impl Reloader {
    /// A reloader that calls `read` on each SIGHUP, off the event loop.
    pub fn new(read: impl Fn() -> Result<ServerConfig, String> + Send + Sync + 'static) -> Self {
        Reloader(Arc::new(read))
    }
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

/// The flags whose new value in `new` differs from the running one in
/// `running` but only takes effect after a restart. Values are not shown:
/// a database URL may hold a password.
pub fn restart_only_changes(running: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(running.bind != new.bind, "bind");
    check(running.port != new.port, "port");
    match (&running.storage, &new.storage) {
        (StorageConfig::Memory, StorageConfig::Memory) => {}
        (
            StorageConfig::Durable { dir: a, sync: s },
            StorageConfig::Durable { dir: b, sync: t },
        ) => {
            check(a != b, "data-dir");
            check(s != t, "sync");
        }
        (StorageConfig::Postgres { url: a }, StorageConfig::Postgres { url: b }) => {
            check(a != b, "database-url")
        }
        _ => check(true, "memory/data-dir/database-url (the kind of store)"),
    }
    let (r, s) = (&running.registry, &new.registry);
    check(r.retain != s.retain, "retain");
    check(r.retain_max_age != s.retain_max_age, "retain-max-age");
    check(r.retain_max_bytes != s.retain_max_bytes, "retain-max-bytes");
    check(r.dedupe_window != s.dedupe_window, "dedupe-window");
    let (r, s) = (&running.session, &new.session);
    check(r.max_frame_bytes != s.max_frame_bytes, "max-frame-bytes");
    check(r.login_timeout != s.login_timeout, "login-timeout");
    check(r.idle_timeout != s.idle_timeout, "idle-timeout");
    check(
        running.max_connections != new.max_connections,
        "max-connections",
    );
    check(running.admin_bind != new.admin_bind, "admin-bind");
    let http = |c: &ServerConfig| c.http.as_ref().map(|h| h.bind);
    check(http(running) != http(new), "http-bind");
    let origins = |c: &ServerConfig| c.http.as_ref().map(|h| h.allowed_origins.clone());
    check(origins(running) != origins(new), "http-allowed-origins");
    changed
}

/// Changes a reload cannot make at all, because the listeners or the login
/// checks were set up without (or with) them: TLS or secrets switched on or
/// off. Such a reload changes nothing.
fn switched(running: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut switched = Vec::new();
    if running.tls.is_some() != new.tls.is_some() {
        switched.push("tls-cert/tls-key (TLS on or off)");
    }
    if running.secrets.is_some() != new.secrets.is_some() {
        switched.push("secrets-file (secrets on or off)");
    }
    switched
}

/// What the running broker lets a reload change.
pub(super) struct Live {
    /// The settings in force (the restart-only ones as the process started).
    pub(super) running: ServerConfig,
    /// Reads the new settings.
    pub(super) reloader: Reloader,
    /// Owns the allow-list and the secrets.
    pub(super) registry: Addr<Registry>,
    /// The certificate every listener serves, when TLS is on.
    pub(super) cert: Option<Arc<ServerCert>>,
}

impl Live {
    /// One reload: read and check everything, then apply it all, or log
    /// one line and change nothing.
    pub(super) async fn reload(&mut self) {
        let reloader = self.reloader.clone();
        let read = tokio::task::spawn_blocking(move || (reloader.0)()).await;
        let new = match read {
            Ok(Ok(new)) => new,
            Ok(Err(e)) => return failed(&e),
            Err(e) => return failed(&e.to_string()),
        };
        let switched = switched(&self.running, &new);
        if !switched.is_empty() {
            log::error!(
                "SIGHUP: reload refused, still running with the old settings: switching {} needs a restart",
                switched.join(", ")
            );
            return;
        }
        let restart = restart_only_changes(&self.running, &new);
        let changed = match self
            .registry
            .send(Reconfigure {
                allowed: new.client_ids.clone(),
                secrets: new.secrets.clone(),
            })
            .await
        {
            Ok(changed) => changed,
            Err(e) => {
                log::error!("SIGHUP: reload failed, the registry is unreachable: {e}");
                return;
            }
        };
        if let (Some(cert), Some(tls)) = (&self.cert, &new.tls) {
            cert.replace(tls.cert.current());
        }
        log::info!("SIGHUP: reloaded: {}", self.summary(&new, &changed));
        if !restart.is_empty() {
            log::warn!(
                "SIGHUP: changed but only applied by a restart (still running with the old values): {}",
                restart.join(", ")
            );
        }
        self.running.client_ids = new.client_ids;
        self.running.secrets = new.secrets;
    }

    /// One line on what a reload changed.
    fn summary(&self, new: &ServerConfig, changed: &AllowChanged) -> String {
        let list = |ids: &[crate::types::ClientId]| {
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut parts = vec![format!("{} allowed client id(s)", new.client_ids.len())];
        if !changed.added.is_empty() {
            parts.push(format!("added {}", list(&changed.added)));
        }
        if !changed.removed.is_empty() {
            parts.push(format!(
                "removed {} ({} connection(s) ended)",
                list(&changed.removed),
                changed.ended
            ));
        }
        if new.secrets.is_some() {
            parts.push("secrets read again (new logins use them)".into());
        }
        if new.tls.is_some() {
            parts.push("certificate read again (new connections get it)".into());
        }
        parts.join("; ")
    }
}

/// The one line of a reload that changed nothing because of `why`.
fn failed(why: &str) {
    log::error!("SIGHUP: reload failed, still running with the old settings: {why}");
}

/// Reloads on every SIGHUP until the process ends. Without a reloader,
/// a SIGHUP changes nothing and says so. The signal is caught from this
/// call on (before the start lines are printed), not from the task's start.
pub(super) fn watch_hangups(live: Option<Live>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                log::warn!("cannot watch SIGHUP ({e}); a SIGHUP will end the process");
                return;
            }
        };
        let mut live = live;
        actix_rt::spawn(async move {
            while hangups.recv().await.is_some() {
                match live.as_mut() {
                    Some(live) => live.reload().await,
                    None => log::warn!(
                        "SIGHUP: this server was started without settings to read again; nothing changed"
                    ),
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(live);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 5000,
            client_ids: Vec::new(),
            storage: StorageConfig::Memory,
            registry: Default::default(),
            session: Default::default(),
            session_threads: 0,
            max_connections: 10,
            secrets: None,
            tls: None,
            admin_bind: None,
            http: None,
            reload: None,
        }
    }

    #[test]
    fn only_settings_a_restart_applies_are_named() {
        let running = config();
        let mut new = config();
        new.client_ids = vec![crate::types::ClientId::new("7").unwrap()];
        // Another registry (its node name and metrics differ) is no change.
        new.registry = Default::default();
        assert!(restart_only_changes(&running, &new).is_empty());
        new.port = 5001;
        new.max_connections = 11;
        new.session.idle_timeout = None;
        new.registry.retain_max_age = Some(std::time::Duration::from_secs(60));
        new.storage = StorageConfig::Postgres {
            url: "postgres://u:pw@h/db".into(),
        };
        let changed = restart_only_changes(&running, &new);
        assert_eq!(
            changed,
            [
                "port",
                "memory/data-dir/database-url (the kind of store)",
                "retain-max-age",
                "idle-timeout",
                "max-connections"
            ]
        );
        assert!(!changed.join(" ").contains("pw"));
    }
}
