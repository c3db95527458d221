//! The client's I/O shell: connects (plain or TLS), reads frames, writes
//! from a bounded buffer, reads stdin, keeps time, and hands every event to
//! the [`Machine`], carrying out what it answers.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use herald::net::{ClientCodec, ClientFrame};

use crate::machine::{Action, Machine, Outcome, StdinEvent, MAX_UNCONFIRMED_BYTES};
use crate::servers::{Node, Rotation};
use crate::stdin::LineReader;

/// Bytes of acks and pings the write buffer may hold on top of one full
/// resend of the unconfirmed lines; a server that lets more pile up is not
/// reading, and the connection is ended.
const WRITE_SLACK: usize = 64 << 10;
/// How long queued frames may take to leave when a connection is ended.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// The servers, and which one is tried next: the shell moves on to the
    /// next one each time the machine asks to reconnect.
    pub servers: Rotation,
    /// Speak TLS with these settings.
    pub tls: Option<ClientTls>,
    /// Longest frame accepted from the server, and longest stdin line.
    pub max_frame_bytes: usize,
}

/// TLS settings of a client.
#[derive(Clone)]
pub struct ClientTls {
    /// Trusted CAs and the rest.
    pub config: Arc<tokio_rustls::rustls::ClientConfig>,
    /// The name every server's certificate must carry (`--tls-server-name`);
    /// without it, each server's own host.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
}

impl ClientTls {
    /// The name `node`'s certificate must carry.
    pub fn name_for(&self, node: &Node) -> Result<rustls_pki_types::ServerName<'static>, String> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => rustls_pki_types::ServerName::try_from(node.host.clone())
                .map_err(|e| format!("'{}' is not a valid server name: {e}", node.host)),
        }
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A connection's byte stream, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects to the current server, with TLS when configured; the error
/// text carries a hint when TLS is probably on one side only.
async fn connect(target: &Target) -> Result<Box<dyn Io>, Failure> {
    let node = target.servers.current();
    let where_ = node.to_string();
    let tcp = TcpStream::connect((node.host.as_str(), node.port))
        .await
        .map_err(|e| Failure::Retry(format!("cannot connect to {where_}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &target.tls else {
        return Ok(Box::new(tcp));
    };
    let name = tls.name_for(node).map_err(Failure::Retry)?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    match connector.connect(name, tcp).await {
        Ok(stream) => Ok(Box::new(stream)),
        Err(e) => {
            if let Some(why) = untrusted(&e) {
                return Err(Failure::Untrusted(format!(
                    "cannot connect to {where_}: the server's certificate is not trusted: {why}"
                )));
            }
            let hint = if is_not_tls(&e) {
                "; the server does not speak TLS on this port: drop --tls"
            } else {
                ""
            };
            Err(Failure::Retry(format!(
                "cannot connect to {where_}: TLS: {e}{hint}"
            )))
        }
    }
}

/// Why a connection attempt failed.
enum Failure {
    /// Worth trying again (no server there yet, a network error).
    Retry(String),
    /// The server's certificate is not one `--ca-file` lets through:
    /// trying again would meet the same certificate.
    Untrusted(String),
}

/// What is wrong with the server's certificate, in words a user can act
/// on, when that is why the handshake failed.
fn untrusted(e: &std::io::Error) -> Option<String> {
    use tokio_rustls::rustls::{CertificateError as C, Error};
    let Some(Error::InvalidCertificate(c)) = e.get_ref().and_then(|i| i.downcast_ref::<Error>())
    else {
        return None;
    };
    Some(match c {
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it does not carry the name checked (connect by a name it carries, or give \
             --tls-server-name NAME)"
                .to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "it has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "it is not valid yet (check both machines' clocks)".to_owned()
        }
        C::UnknownIssuer | C::Other(_) => "it is neither signed by a CA in --ca-file nor the \
             self-signed certificate that --ca-file holds (give the file that signed it, or \
             the server's own self-signed certificate)"
            .to_owned(),
        other => format!("{other:?}"),
    })
}

/// Whether a failed handshake met a peer that is not speaking TLS.
fn is_not_tls(e: &std::io::Error) -> bool {
    use tokio_rustls::rustls::Error;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidMessage(_)) => true,
        Some(_) => false,
        None => e.kind() == std::io::ErrorKind::UnexpectedEof,
    }
}

/// The hint for a plain connection that ended before its first frame:
/// TLS record bytes (or nothing at all) suggest a TLS port.
pub fn plain_hint(unparsed: &[u8]) -> &'static str {
    match unparsed {
        // A TLS record: alert or handshake, version 3.x.
        [0x15 | 0x16, 0x03, ..] => "; this looks like TLS: try --tls --ca-file FILE",
        [] => "; if the server expects TLS, try --tls --ca-file FILE",
        _ => "",
    }
}

/// One live connection: its halves, the decoder, and what waits to be
/// written.
struct Conn {
    reader: ReadHalf<Box<dyn Io>>,
    writer: WriteHalf<Box<dyn Io>>,
    codec: ClientCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// A frame came on this connection.
    any_frame: bool,
}

impl Conn {
    fn new(stream: Box<dyn Io>, max_frame_bytes: usize) -> Conn {
        let (reader, writer) = tokio::io::split(stream);
        Conn {
            reader,
            writer,
            codec: ClientCodec::new(max_frame_bytes),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::new(),
            any_frame: false,
        }
    }

    /// Writes what is queued (bounded by [`CLOSE_GRACE`]) and closes.
    async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = self.writer.write_all(&self.write_buf).await;
            let _ = self.writer.shutdown().await;
        })
        .await;
    }
}

/// What woke the loop.
enum Event {
    /// Bytes arrived (0: the server closed the connection).
    Read(usize),
    /// Queued bytes were written.
    Wrote,
    /// Reading or writing failed.
    Failed(std::io::Error),
    Stdin(StdinEvent),
    Tick,
    Signal,
}

/// Reads from, or writes queued bytes to, the connection, whichever is
/// ready first; both are safe to cancel.
async fn net(conn: &mut Conn) -> Event {
    let Conn {
        reader,
        writer,
        read_buf,
        write_buf,
        ..
    } = conn;
    read_buf.reserve(READ_CHUNK);
    tokio::select! {
        res = reader.read_buf(read_buf) => match res {
            Ok(n) => Event::Read(n),
            Err(e) => Event::Failed(e),
        },
        res = writer.write_buf(write_buf), if !write_buf.is_empty() => match res {
            Ok(_) => Event::Wrote,
            Err(e) => Event::Failed(e),
        },
    }
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// The I/O shell's state; see [`run`].
struct Shell {
    target: Target,
    conn: Option<Conn>,
    /// When to connect next, while there is no connection.
    reconnect_at: Option<std::time::Instant>,
    /// Stdout bytes not yet written.
    stdout: Vec<u8>,
}

impl Shell {
    /// Carries out `actions` in order; `Some` when the run is over.
    async fn apply(&mut self, actions: Vec<Action>) -> std::io::Result<Option<Outcome>> {
        for action in actions {
            match action {
                Action::Send(frame) => self.send(&frame),
                Action::Print(line) => self.stdout.extend_from_slice(&line),
                Action::Note(text) => eprintln!("{text}"),
                Action::Reconnect(wait) => {
                    // Printed before any ACK for it can leave.
                    self.flush()?;
                    if let Some(conn) = self.conn.take() {
                        conn.close().await;
                    }
                    self.reconnect_at = Some(now() + jitter(wait));
                    self.next_server();
                }
                Action::Exit(outcome) => {
                    self.flush()?;
                    if let Some(conn) = self.conn.take() {
                        conn.close().await;
                    }
                    return Ok(Some(outcome));
                }
            }
        }
        self.flush()?;
        Ok(None)
    }

    /// Moves on to the next server (the same one when there is one).
    fn next_server(&mut self) {
        let servers = &mut self.target.servers;
        if servers.len() > 1 {
            servers.advance();
            eprintln!("next server: {}", servers.current());
        }
    }

    fn send(&mut self, frame: &ClientFrame) {
        if let Some(conn) = &mut self.conn {
            frame.encode(&mut conn.write_buf);
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.stdout.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(&self.stdout)?;
            out.flush()?;
            self.stdout.clear();
        }
        Ok(())
    }

    /// Decodes every complete frame read so far and feeds it to the
    /// machine, until the machine ends the connection.
    fn frames(&mut self, machine: &mut Machine) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(conn) = self.conn.as_mut().filter(|_| machine.connected()) {
            let item = match conn.codec.decode(&mut conn.read_buf) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    actions
                        .extend(machine.on_lost(&format!("reading from the server failed: {e}")));
                    break;
                }
            };
            conn.any_frame = true;
            actions.extend(machine.on_frame(now(), item));
        }
        actions
    }

    /// Hands an event to the machine; its answer.
    fn handle(&mut self, machine: &mut Machine, event: Event) -> Vec<Action> {
        match event {
            Event::Read(0) => {
                let why = self.lost_reason(machine, "the server closed the connection".into());
                machine.on_lost(&why)
            }
            Event::Read(_) => self.frames(machine),
            Event::Wrote => Vec::new(),
            Event::Failed(e) => {
                let why =
                    self.lost_reason(machine, format!("connection to the server failed: {e}"));
                machine.on_lost(&why)
            }
            Event::Stdin(event) => machine.on_stdin(now(), event),
            Event::Tick => machine.on_tick(now()),
            Event::Signal => machine.on_signal(now()),
        }
    }

    /// Why the connection ended, with a TLS hint when it ended before its
    /// first frame on a plain connection: always when TLS bytes came, and
    /// when nothing came only if no login ever worked (a server that
    /// restarts closes connections like that too).
    fn lost_reason(&self, machine: &Machine, what: String) -> String {
        match &self.conn {
            Some(conn) if self.target.tls.is_none() && !conn.any_frame => {
                let hint = plain_hint(&conn.read_buf);
                if conn.read_buf.is_empty() && machine.ever_logged_in() {
                    what
                } else {
                    format!("{what}{hint}")
                }
            }
            _ => what,
        }
    }
}

/// A delay randomised to between half and all of `full`, so clients that
/// lost one server do not all come back at the same instant.
fn jitter(full: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    full.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
}

/// Runs the client until the machine decides to exit; `Err` only for a
/// failure to write to stdout.
pub async fn run(
    target: Target,
    mut machine: Machine,
    stdin: impl AsyncRead + Unpin,
) -> std::io::Result<Outcome> {
    let mut stdin = LineReader::new(BufReader::new(stdin), target.max_frame_bytes);
    let signal = herald::cli::shutdown_signal();
    tokio::pin!(signal);
    let mut signalled = false;
    let write_limit = MAX_UNCONFIRMED_BYTES + target.max_frame_bytes + WRITE_SLACK;
    let mut shell = Shell {
        target,
        conn: None,
        reconnect_at: Some(now()),
        stdout: Vec::new(),
    };
    loop {
        let actions = if shell.conn.is_none() && shell.reconnect_at.is_some_and(|at| at <= now()) {
            // Time to connect.
            shell.reconnect_at = None;
            let attempt = tokio::time::timeout(crate::machine::LOGIN_WAIT, connect(&shell.target));
            tokio::select! {
                res = attempt => match res {
                    Ok(Ok(stream)) => {
                        shell.conn = Some(Conn::new(stream, shell.target.max_frame_bytes));
                        machine.on_connected(now())
                    }
                    Ok(Err(Failure::Retry(why))) => machine.on_connect_failed(&why),
                    Ok(Err(Failure::Untrusted(why))) => machine.on_untrusted(&why),
                    Err(_) => machine.on_connect_failed("connecting timed out"),
                },
                _ = &mut signal, if !signalled => {
                    signalled = true;
                    machine.on_signal(now())
                }
            }
        } else {
            let wake = [
                machine.next_deadline(),
                shell.reconnect_at.filter(|_| shell.conn.is_none()),
            ]
            .into_iter()
            .flatten()
            .min();
            let event = tokio::select! {
                event = async {
                    match shell.conn.as_mut() {
                        Some(conn) => net(conn).await,
                        None => std::future::pending().await,
                    }
                } => event,
                event = stdin.next(), if machine.wants_line() => Event::Stdin(event),
                _ = sleep_until(wake) => Event::Tick,
                _ = &mut signal, if !signalled => Event::Signal,
            };
            if matches!(event, Event::Signal) {
                signalled = true;
            }
            shell.handle(&mut machine, event)
        };
        if let Some(outcome) = shell.apply(actions).await? {
            return Ok(outcome);
        }
        if shell
            .conn
            .as_ref()
            .is_some_and(|c| c.write_buf.len() > write_limit)
        {
            let actions = machine.on_lost("the server stopped reading what this client sends");
            if let Some(outcome) = shell.apply(actions).await? {
                return Ok(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_bytes_on_a_plain_connection_suggest_tls() {
        assert!(plain_hint(&[0x15, 0x03, 0x03, 0x00, 0x02]).contains("--tls"));
        assert!(plain_hint(&[]).contains("--tls"));
        assert_eq!(plain_hint(b"MSG 1"), "");
    }
}
