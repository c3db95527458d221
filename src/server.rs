//! Wiring of a running broker: opens the store, starts the store actor, the
//! registry and the session arbiters, listens, and shuts down in order on
//! SIGINT/SIGTERM.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use actix::prelude::*;
use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::actors::messages::Shutdown;
use crate::actors::{ConnectionSlot, Registry, RegistryConfig, Session, SessionConfig};
use crate::net::listener::accept_loop;
use crate::net::transport::Connection;
use crate::store::{MemoryStore, SqliteStore, Store, StoreActor, SyncPolicy};
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
    /// When given, connections speak TLS.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// How long a TLS handshake may take when there is no login timeout.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn open_store(config: &StorageConfig) -> anyhow::Result<Box<dyn Store>> {
    match config {
        StorageConfig::Memory => Ok(Box::new(MemoryStore::new())),
        StorageConfig::Durable { dir, sync } => Ok(Box::new(SqliteStore::open(dir, *sync)?)),
    }
}

/// Says `ERR LIMIT` and `BYE limit` to a connection over the limit and
/// closes it: sends FIN, then reads and drops whatever the client still
/// sends until it closes too, so our close is not a reset that could destroy
/// the two lines (giving up after a second).
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bye = b"ERR LIMIT too many connections\nBYE limit\n";
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(bye).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
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
                "refusing connections: {max} are open (--max-connections); {} refused so far",
                self.refused
            );
            self.last = Some(std::time::Instant::now());
        }
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

/// Runs the broker until SIGINT or SIGTERM, inside an actix `System`.
///
/// Prints `listening on <ip>:<port>` to stdout once it accepts connections.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let mut store = open_store(&config.storage)?;
    let recovered = store.recover().context("cannot read the store")?;
    log::info!(
        "store holds messages up to seq {} and cursors of {} client id(s)",
        recovered.head,
        recovered.acks.len()
    );
    let listener = listen(SocketAddr::new(config.bind, config.port))
        .with_context(|| format!("cannot listen on {}:{}", config.bind, config.port))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let slot = std::sync::Mutex::new(Some(store));
    let store = SyncArbiter::start(1, move || {
        StoreActor::new(slot.lock().ok().and_then(|mut s| s.take()))
    });

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
    if !config.bind.is_loopback() {
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

    let threads = match config.session_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let workers: Vec<Arbiter> = (0..threads).map(|_| Arbiter::new()).collect();

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {local}").context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    log::info!(
        "listening on {local} for {} client id(s)",
        config.client_ids.len()
    );

    match crate::cli::raise_fd_limit() {
        Ok(limit) if (limit as usize) < config.max_connections + 64 => log::warn!(
            "the open-file limit ({limit}) is below --max-connections ({}) plus room for the store",
            config.max_connections
        ),
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut refusals = RefusalLog::default();
    let mut next = 0usize;
    let session_config = config.session.clone();
    let accept_registry = registry.clone();
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    accept_loop(
        listener,
        |stream| {
            let Some(slot) = ConnectionSlot::take(&open, config.max_connections) else {
                refusals.refused(config.max_connections);
                actix_rt::spawn(refuse(stream));
                return;
            };
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("cannot hand over a connection: {e}");
                    return;
                }
            };
            let registry = accept_registry.clone();
            let config = session_config.clone();
            let worker = &workers[next % workers.len()];
            next = next.wrapping_add(1);
            let tls = tls.clone();
            worker.spawn(async move {
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
                        let peer = stream.peer_addr().ok();
                        let deadline = config.login_timeout.unwrap_or(TLS_HANDSHAKE_TIMEOUT);
                        match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => Connection::tls(tls),
                            Ok(Err(e)) => {
                                log::info!("TLS handshake with {peer:?} failed: {e}");
                                return;
                            }
                            Err(_) => {
                                log::info!("TLS handshake with {peer:?} timed out");
                                return;
                            }
                        }
                    }
                };
                Session::new(conn, registry, config).counted(slot).start();
            });
        },
        crate::cli::shutdown_signal(),
    )
    .await;

    log::info!("shutting down: confirming pending messages and closing sessions");
    if let Err(e) = registry.send(Shutdown).await {
        log::error!("registry unreachable at shutdown: {e}");
    }
    for w in &workers {
        w.stop();
    }
    registry_arbiter.stop();
    log::info!("stopped");
    Ok(())
}
