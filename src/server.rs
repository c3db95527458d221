//! Wiring of a running broker: opens the store, starts the store actor, the
//! registry and the session arbiters, listens (TCP, and HTTP/WebSocket when
//! asked), reloads its settings on SIGHUP (see [`reload`]), and shuts down
//! in order on SIGINT/SIGTERM.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use actix::prelude::*;
use anyhow::Context as _;
use tokio::net::TcpListener;

mod admission;
pub mod reload;
mod web;

use self::admission::{connection_budget, Dispatch};
use crate::actors::messages::Shutdown;
use crate::actors::{Registry, RegistryConfig, SessionConfig};
use crate::net::http::HttpConfig;
use crate::net::listener::accept_loop;
use crate::store::postgres::Listener;
use crate::store::{MemoryStore, PostgresStore, SqliteStore, Store, StoreActor, SyncPolicy};
use crate::types::ClientId;

/// Where the broker keeps its log.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// In memory only: lost when the process ends.
    Memory,
    /// SQLite in `dir`, committed per `sync`.
    Durable {
        /// The data directory.
        dir: std::path::PathBuf,
        /// When a commit reaches the disk.
        sync: SyncPolicy,
    },
    /// The PostgreSQL database at `url`, shared with every other node on it.
    Postgres {
        /// `postgres://…` (may hold a password: never logged).
        url: String,
    },
}

/// Everything a broker needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to bind.
    pub bind: IpAddr,
    /// Port to bind; 0 lets the OS choose.
    pub port: u16,
    /// The allow-list.
    pub client_ids: Vec<ClientId>,
    /// The store to use.
    pub storage: StorageConfig,
    /// Registry tunables.
    pub registry: RegistryConfig,
    /// Session tunables.
    pub session: SessionConfig,
    /// Threads that run sessions (0: one per core).
    pub session_threads: usize,
    /// Connections served at once; more are refused with `BYE limit`.
    pub max_connections: usize,
    /// When given, every `LOGIN` must carry its id's secret.
    pub secrets: Option<crate::auth::Secrets>,
    /// When given, connections speak TLS (and the HTTP listener HTTPS).
    pub tls: Option<crate::net::tls::ServerTls>,
    /// When given, the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_bind: Option<SocketAddr>,
    /// When given, the web page and WebSocket listener.
    pub http: Option<HttpConfig>,
    /// When given, SIGHUP reads the settings again through it.
    pub reload: Option<reload::Reloader>,
}

fn open_store(config: &StorageConfig) -> anyhow::Result<Box<dyn Store>> {
    match config {
        StorageConfig::Memory => Ok(Box::new(MemoryStore::new())),
        StorageConfig::Durable { dir, sync } => Ok(Box::new(SqliteStore::open(dir, *sync)?)),
        StorageConfig::Postgres { url } => Ok(Box::new(PostgresStore::open(url)?)),
    }
}

/// Says in the log who can reach this server and what protects it: how to
/// open a loopback-only server to other machines, or what an open one lacks.
fn exposure_notes(config: &ServerConfig) {
    if config.bind.is_loopback() {
        log::info!(
            "only this machine can connect (--bind {}); to accept other machines use --bind 0.0.0.0, with --secrets-file and --tls-cert/--tls-key (see docs/security.md)",
            config.bind
        );
        return;
    }
    if config.secrets.is_none() {
        log::warn!(
            "listening on {} without --secrets-file: anyone who can reach this port can log in as any allowed id",
            config.bind
        );
    }
    if config.tls.is_none() {
        log::warn!(
            "listening on {} without TLS: messages (and secrets) cross the network in clear text",
            config.bind
        );
    }
}

/// Pending connections the kernel may queue for us: enough for thousands of
/// clients reconnecting at once (the kernel caps it at `somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds with address reuse (a restarted server gets its port back at once)
/// and a deep accept queue.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Starts the store actor, the secret verifier (with secrets) and the
/// registry on an arbiter of its own; returns that arbiter, the registry
/// and the store actor.
fn start_registry(
    config: &ServerConfig,
    recovered: crate::store::Recovered,
    store: Box<dyn Store>,
) -> (Arbiter, Addr<Registry>, Addr<StoreActor>) {
    let slot = std::sync::Mutex::new(Some(store));
    let metrics = config.registry.metrics.clone();
    let store = SyncArbiter::start(1, move || {
        StoreActor::new(slot.lock().ok().and_then(|mut s| s.take())).with_metrics(metrics.clone())
    });
    let store_actor = store.clone();
    let registry_arbiter = Arbiter::new();
    let registry_config = config.registry.clone();
    let ids = config.client_ids.clone();
    let secrets = config.secrets.clone();
    // Hashing is slow on purpose: two threads of its own, off every event loop.
    let verifier = secrets
        .as_ref()
        .map(|_| SyncArbiter::start(crate::auth::VERIFIER_THREADS, || crate::auth::Verifier));
    let registry = Registry::start_in_arbiter(&registry_arbiter.handle(), move |_| {
        let registry = Registry::new(registry_config, ids, recovered, store);
        match (secrets, verifier) {
            (Some(secrets), Some(verifier)) => registry.with_secrets(secrets, verifier),
            _ => registry,
        }
    });
    (registry_arbiter, registry, store_actor)
}

/// With a PostgreSQL store, starts the thread that turns the other nodes'
/// notifications into wake-ups for the registry.
fn start_listener(
    config: &ServerConfig,
    registry: &Addr<Registry>,
) -> anyhow::Result<Option<Listener>> {
    let StorageConfig::Postgres { url } = &config.storage else {
        return Ok(None);
    };
    log::info!(
        "cluster node {} on the database; other nodes' commits and logins arrive by LISTEN/NOTIFY",
        config.registry.node
    );
    let listener = Listener::start(url, registry.clone().recipient())
        .context("cannot start the database listener")?;
    Ok(Some(listener))
}

/// Prints the start lines on stdout (`listening on …` first), each flushed
/// at once: scripts wait for them.
fn announce(lines: &[String]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}").context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    Ok(())
}

/// Runs the broker until SIGINT or SIGTERM, inside an actix `System`.
///
/// Prints `listening on <ip>:<port>` to stdout once it accepts connections,
/// then tells a service manager `READY=1` (see [`crate::notify`]), and
/// `STOPPING=1` when a signal ends it.
/// Everything that can make a start fail (the port, the store, the
/// open-file limit) is tried before that line; logs held back by
/// [`crate::logging::init_held_logging`] are written only after it.
pub async fn run(mut config: ServerConfig) -> anyhow::Result<()> {
    let listener = listen(SocketAddr::new(config.bind, config.port))
        .with_context(|| format!("cannot listen on {}:{}", config.bind, config.port))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let web = web::bind(&config)?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    config.registry.metrics = metrics.clone();
    config.session.metrics = metrics.clone();
    // On a thread of its own: a database client blocks, and must never
    // block (or nest a runtime in) this event loop.
    let opened = std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<(Box<dyn Store>, _)> {
                let mut store = open_store(&config.storage)?;
                let recovered = store.recover().context("cannot read the store")?;
                Ok((store, recovered))
            })
            .join()
    });
    let (store, recovered) = match opened {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("opening the store failed unexpectedly"),
    };
    log::info!(
        "store holds messages up to seq {} and cursors of {} client id(s)",
        recovered.head,
        recovered.acks.len()
    );

    let (registry_arbiter, registry, store_actor) = start_registry(&config, recovered, store);
    let wakeups = start_listener(&config, &registry)?;
    let threads = match config.session_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let workers: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();
    // Counted once every thread and the store have their descriptors.
    let max_connections = connection_budget(config.max_connections)?;
    let dispatch = std::sync::Arc::new(Dispatch::new(
        max_connections,
        &workers,
        registry.clone(),
        config.session.clone(),
    ));
    let accepting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = crate::admin::AdminState {
        metrics,
        store: store_actor,
        accepting: accepting.clone(),
    };
    let web = web.build(&config, dispatch.clone(), threads, admin)?;

    // Installed before the first stdout line: a signal sent as soon as a
    // script reads it must stop the server cleanly, not by default action.
    let stop = crate::cli::shutdown_signal();
    reload::watch_hangups(config.reload.clone().map(|reloader| reload::Live {
        running: config.clone(),
        reloader,
        registry: registry.clone(),
        cert: config.tls.as_ref().map(|t| t.cert.clone()),
    }));
    let lines: Vec<String> = std::iter::once(format!("listening on {local}"))
        .chain(web.announcements())
        .collect();
    announce(&lines)?;
    crate::logging::release_logs();
    log::info!(
        "listening on {local} for {} client id(s)",
        config.client_ids.len()
    );
    exposure_notes(&config);
    let web = web.run(config.tls.is_some());

    let tls = config
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    accepting.store(true, std::sync::atomic::Ordering::Release);
    // The addresses, as the stdout lines say them, for `systemctl status`.
    crate::notify::ready(&lines.join(", "));
    accept_loop(
        listener,
        |stream| dispatch.accept_tcp(stream, tls.as_ref()),
        stop,
    )
    .await;

    accepting.store(false, std::sync::atomic::Ordering::Release);
    crate::notify::stopping();
    web.pause().await;
    log::info!("shutting down: confirming pending messages and closing sessions");
    if let Err(e) = registry.send(Shutdown).await {
        log::error!("registry unreachable at shutdown: {e}");
    }
    web.stop().await;
    if let Some(wakeups) = wakeups {
        // Joining waits up to one poll of its thread: off the event loop.
        let _ = tokio::task::spawn_blocking(move || wakeups.stop()).await;
    }
    for w in &workers {
        w.stop();
    }
    registry_arbiter.stop();
    log::info!("stopped");
    Ok(())
}
