//! Who gets in: connections counted against the limit, handed to the
//! session threads in turn, and refused with `ERR LIMIT` + `BYE limit` past
//! it; the limit itself sized to the open-file limit.

use actix::prelude::*;

use crate::actors::{ConnectionSlot, Registry, Session, SessionConfig};
use crate::net::transport::{accept_tls, Connection, Input};

/// How long a TLS handshake may take when there is no login timeout.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
pub(super) async fn refuse_connection(mut conn: Connection) {
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
pub(super) async fn say_limit<S>(mut stream: S) -> std::io::Result<()>
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
pub(super) struct Dispatch {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max: usize,
    workers: Vec<actix_rt::ArbiterHandle>,
    next: std::sync::atomic::AtomicUsize,
    registry: std::sync::Arc<Addr<Registry>>,
    session: std::sync::Arc<SessionConfig>,
    refusals: std::sync::Mutex<RefusalLog>,
}

impl Dispatch {
    /// Up to `max` connections at once, handed to `workers` in turn.
    pub(super) fn new(
        max: usize,
        workers: &[Arbiter],
        registry: Addr<Registry>,
        session: SessionConfig,
    ) -> Dispatch {
        Dispatch {
            open: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max,
            workers: workers.iter().map(Arbiter::handle).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            registry: std::sync::Arc::new(registry),
            session: std::sync::Arc::new(session),
            refusals: std::sync::Mutex::new(RefusalLog::default()),
        }
    }

    /// Takes an accepted TCP connection: hands it to a session thread (TLS
    /// handshake and session there), or refuses it at the limit.
    pub(super) fn accept_tcp(
        &self,
        stream: tokio::net::TcpStream,
        tls: Option<&tokio_rustls::TlsAcceptor>,
    ) {
        let Some(slot) = self.slot() else {
            actix_rt::spawn(refuse(stream, tls.cloned()));
            return;
        };
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot hand over a connection: {e}");
                return;
            }
        };
        let registry = self.registry.clone();
        let config = self.session.clone();
        self.worker()
            .spawn(serve(std_stream, tls.cloned(), registry, config, slot));
    }

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
    pub(super) fn admit(&self, conn: Connection) {
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

/// File descriptors kept free beyond those open when the server starts:
/// connections being refused, SQLite's temporary files, and slack.
const SPARE_FDS: usize = 32;

/// How many connections the open-file limit lets the server serve, after
/// raising that limit as far as it goes: `wanted`, or fewer (with one warn
/// line) when the limit is lower, so that every connection past it can
/// still be accepted and refused with `ERR LIMIT`. An error when the limit
/// leaves no room at all.
pub(super) fn connection_budget(wanted: usize) -> anyhow::Result<usize> {
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

/// On a session thread: registers an accepted socket with this thread's
/// reactor, runs the TLS handshake when configured, and starts its session.
async fn serve(
    std_stream: std::net::TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    registry: std::sync::Arc<Addr<Registry>>,
    config: std::sync::Arc<SessionConfig>,
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
