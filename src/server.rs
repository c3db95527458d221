//! Wiring of a running broker: opens the store, starts the store actor, the
//! registry and the session arbiters, listens (TCP, and HTTP/WebSocket when
//! asked), and shuts down in order on SIGINT/SIGTERM.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use actix::prelude::*;
use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::actors::messages::Shutdown;
use crate::actors::{ConnectionSlot, Registry, RegistryConfig, Session, SessionConfig};
use crate::net::http::{HttpConfig, Routes};
use crate::net::listener::accept_loop;
use crate::net::transport::{accept_tls, Connection, Input};
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
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    /// When given, the admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin_bind: Option<SocketAddr>,
    /// When given, the web page and WebSocket listener.
    pub http: Option<HttpConfig>,
}

/// How long a TLS handshake may take when there is no login timeout.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn open_store(config: &StorageConfig) -> anyhow::Result<Box<dyn Store>> {
    match config {
        StorageConfig::Memory => Ok(Box::new(MemoryStore::new())),
        StorageConfig::Durable { dir, sync } => Ok(Box::new(SqliteStore::open(dir, *sync)?)),
        StorageConfig::Postgres { url } => Ok(Box::new(PostgresStore::open(url)?)),
    }
}

/// Says `ERR LIMIT` and `BYE limit` to a connection over the limit (inside
/// TLS when the server speaks TLS, so a TLS client reads them as any other
/// frames) and closes it, giving up after `REFUSAL_TIME`.
async fn refuse(stream: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        match tls {
            None => say_limit(stream).await,
            Some(acceptor) => say_limit(acceptor.accept(stream).await?).await,
        }
    })
    .await;
}

/// What a connection over the limit is told before it is closed.
const LIMIT_REFUSAL: &[u8] = b"ERR LIMIT too many connections\nBYE limit\n";

/// [`say_limit`] for a connection already set up (a WebSocket): the same
/// two frames, a close, and the peer's input read and dropped until it
/// closes too, within `REFUSAL_TIME`.
async fn refuse_connection(mut conn: Connection) {
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        conn.writer.write_all(LIMIT_REFUSAL).await?;
        conn.writer.shutdown().await?;
        let mut sink = bytes::BytesMut::new();
        while !matches!(conn.reader.read_some(&mut sink, 512).await?, Input::Eof) {
            sink.clear();
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// How long a refused connection may take of the server's time.
const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes the refusal, sends FIN, then reads and drops whatever the client
/// still sends until it closes too, so our close is not a reset that could
/// destroy the two lines.
async fn say_limit<S>(mut stream: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(LIMIT_REFUSAL).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 512];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
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

/// Logs refused connections at most once every ten seconds.
#[derive(Default)]
struct RefusalLog {
    refused: u64,
    last: Option<std::time::Instant>,
}

impl RefusalLog {
    fn refused(&mut self, max: usize) {
        self.refused += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10))
        {
            log::warn!(
                "refusing connections: {max} are open, the most this server serves (--max-connections, or fewer under the open-file limit); {} refused so far",
                self.refused
            );
            self.last = Some(std::time::Instant::now());
        }
    }
}

/// Hands connections to the session threads in turn, within the
/// connection limit; shared by the TCP and the HTTP listeners.
struct Dispatch {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    workers: Vec<actix_rt::ArbiterHandle>,
    next: std::sync::atomic::AtomicUsize,
    registry: Addr<Registry>,
    session: SessionConfig,
    refusals: std::sync::Mutex<RefusalLog>,
}

impl Dispatch {
    /// A place among the open connections, or none (logged) at the limit.
    fn slot(&self) -> Option<ConnectionSlot> {
        let slot = ConnectionSlot::take(&self.open, self.max);
        if slot.is_none() {
            if let Ok(mut log) = self.refusals.lock() {
                log.refused(self.max);
            }
        }
        slot
    }

    /// The session thread for the next connection.
    fn worker(&self) -> &actix_rt::ArbiterHandle {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.workers[n % self.workers.len()]
    }

    /// Starts a session for a connection that is set up (a WebSocket), or
    /// refuses it over the connection at the limit.
    fn admit(&self, conn: Connection) {
        let Some(slot) = self.slot() else {
            actix_rt::spawn(refuse_connection(conn));
            return;
        };
        let registry = self.registry.clone();
        let config = self.session.clone();
        self.worker().spawn(async move {
            Session::new(conn, registry, config).counted(slot).start();
        });
    }
}

/// Binds the HTTP listener, when there is one, as a listener the HTTP
/// server takes over.
fn listen_http(config: &ServerConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(http) = &config.http else {
        return Ok(None);
    };
    let listener = listen(http.bind)
        .and_then(|l| l.into_std())
        .with_context(|| format!("cannot listen for HTTP on {}", http.bind))?;
    Ok(Some(listener))
}

/// Starts the HTTP server on its bound listener, with WebSocket sessions
/// admitted through `dispatch`.
fn start_http(
    config: &ServerConfig,
    listener: std::net::TcpListener,
    dispatch: std::sync::Arc<Dispatch>,
    threads: usize,
) -> anyhow::Result<actix_web::dev::Server> {
    let routes = Routes {
        admit: std::sync::Arc::new(move |conn| dispatch.admit(conn)),
        allowed_origins: config
            .http
            .as_ref()
            .map(|h| h.allowed_origins.clone())
            .unwrap_or_default(),
        max_frame_bytes: config.session.max_frame_bytes,
        idle_timeout: config.session.idle_timeout,
        secure: config.tls.is_some(),
    };
    crate::net::http::serve(listener, config.tls.as_deref(), routes, threads)
        .context("cannot start the HTTP listener")
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

/// File descriptors kept free beyond those open when the server starts:
/// connections being refused, SQLite's temporary files, and slack.
const SPARE_FDS: usize = 32;

/// How many connections the open-file limit lets the server serve, after
/// raising that limit as far as it goes: `wanted`, or fewer (with one warn
/// line) when the limit is lower, so that every connection past it can
/// still be accepted and refused with `ERR LIMIT`. An error when the limit
/// leaves no room at all.
fn connection_budget(wanted: usize) -> anyhow::Result<usize> {
    let limit = match crate::cli::raise_fd_limit() {
        Ok(limit) => limit,
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            match crate::cli::fd_limit() {
                Ok(limit) => limit,
                Err(_) => return Ok(wanted),
            }
        }
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let open = crate::cli::open_fds().unwrap_or(64);
    let room = limit.saturating_sub(open + SPARE_FDS);
    if room >= wanted {
        return Ok(wanted);
    }
    if room == 0 {
        anyhow::bail!(
            "the open-file limit ({limit}) leaves no room for connections; raise it (ulimit -n)"
        );
    }
    log::warn!(
        "the open-file limit ({limit}) leaves room for {room} connection(s): serving at most {room} at once instead of --max-connections {wanted}; raise it (ulimit -n) to serve more"
    );
    Ok(room)
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

/// Binds the admin listener, when there is one, as a listener the admin
/// server takes over.
fn listen_admin(config: &ServerConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = config.admin_bind else {
        return Ok(None);
    };
    let listener = listen(addr)
        .and_then(|l| l.into_std())
        .with_context(|| format!("cannot listen for admin requests on {addr}"))?;
    Ok(Some(listener))
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

/// On a session thread: registers an accepted socket with this thread's
/// reactor, runs the TLS handshake when configured, and starts its session.
async fn serve(
    std_stream: std::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    registry: Addr<Registry>,
    config: SessionConfig,
    slot: ConnectionSlot,
) {
    let stream = match tokio::net::TcpStream::from_std(std_stream) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot register a connection: {e}");
            return;
        }
    };
    let conn = match tls {
        None => Connection::plain(stream),
        Some(acceptor) => {
            let deadline = config.login_timeout.unwrap_or(TLS_HANDSHAKE_TIMEOUT);
            match accept_tls(&acceptor, stream, deadline).await {
                Some(conn) => conn,
                None => return,
            }
        }
    };
    Session::new(conn, registry, config).counted(slot).start();
}

/// Runs the broker until SIGINT or SIGTERM, inside an actix `System`.
///
/// Prints `listening on <ip>:<port>` to stdout once it accepts connections.
/// Everything that can make a start fail (the port, the store, the
/// open-file limit) is tried before that line; logs held back by
/// [`crate::logging::init_held_logging`] are written only after it.
pub async fn run(mut config: ServerConfig) -> anyhow::Result<()> {
    let listener = listen(SocketAddr::new(config.bind, config.port))
        .with_context(|| format!("cannot listen on {}:{}", config.bind, config.port))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let http_listener = listen_http(&config)?;
    let admin_listener = listen_admin(&config)?;
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
    let dispatch = std::sync::Arc::new(Dispatch {
        open: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        max: max_connections,
        workers: workers.iter().map(Arbiter::handle).collect(),
        next: std::sync::atomic::AtomicUsize::new(0),
        registry: registry.clone(),
        session: config.session.clone(),
        refusals: std::sync::Mutex::new(RefusalLog::default()),
    });
    let http = match http_listener {
        Some(l) => {
            let addr = l.local_addr().context("cannot read the HTTP address")?;
            let server = start_http(&config, l, dispatch.clone(), threads)?;
            Some((addr, server))
        }
        None => None,
    };
    let accepting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = match admin_listener {
        Some(l) => {
            let addr = l.local_addr().context("cannot read the admin address")?;
            let state = crate::admin::AdminState {
                metrics,
                store: store_actor,
                accepting: accepting.clone(),
            };
            let server =
                crate::admin::start(l, state).context("cannot start the admin listener")?;
            Some((addr, server))
        }
        None => None,
    };

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
        if let Some((addr, _)) = &http {
            writeln!(out, "http on {addr}").context("cannot write to stdout")?;
            out.flush().context("cannot write to stdout")?;
        }
        if let Some((addr, _)) = &admin {
            writeln!(out, "admin on {addr}").context("cannot write to stdout")?;
            out.flush().context("cannot write to stdout")?;
        }
    }
    crate::logging::release_logs();
    log::info!(
        "listening on {local} for {} client id(s)",
        config.client_ids.len()
    );
    exposure_notes(&config);
    let http_handle = http.map(|(addr, server)| {
        log::info!(
            "http on {addr}: the web page at /, the protocol over WebSocket at /ws{}",
            if config.tls.is_some() {
                " (HTTPS/WSS)"
            } else {
                ""
            }
        );
        let handle = server.handle();
        actix_rt::spawn(server);
        handle
    });
    let admin_handle = admin.map(|(addr, server)| {
        log::info!("admin on {addr}: /metrics, /healthz, /readyz (internal: never expose it)");
        let handle = server.handle();
        actix_rt::spawn(server);
        handle
    });

    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    accepting.store(true, std::sync::atomic::Ordering::Release);
    accept_loop(
        listener,
        |stream| {
            let Some(slot) = dispatch.slot() else {
                actix_rt::spawn(refuse(stream, tls.clone()));
                return;
            };
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("cannot hand over a connection: {e}");
                    return;
                }
            };
            let registry = dispatch.registry.clone();
            let config = dispatch.session.clone();
            let tls = tls.clone();
            dispatch
                .worker()
                .spawn(serve(std_stream, tls, registry, config, slot));
        },
        crate::cli::shutdown_signal(),
    )
    .await;

    accepting.store(false, std::sync::atomic::Ordering::Release);
    log::info!("shutting down: confirming pending messages and closing sessions");
    if let Err(e) = registry.send(Shutdown).await {
        log::error!("registry unreachable at shutdown: {e}");
    }
    if let Some(handle) = http_handle {
        // Sessions have said BYE shutdown; their WebSockets close now.
        handle.stop(true).await;
    }
    if let Some(handle) = admin_handle {
        handle.stop(true).await;
    }
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
