//! The `client` program: a line-oriented chat client for terminals, pipes
//! and scripts.
//!
//! Every non-empty stdin line is sent as one message; every received message
//! is printed as `<from>: <text>` and acknowledged once printed, so a
//! restarted client neither loses nor repeats a line. Status goes to stderr.
//!
//! When the connection drops or the server restarts, the client reconnects
//! by itself (capped exponential backoff with jitter), logs in again and
//! resends every line whose `SENT` it has not seen, in order, with the same
//! message id (`@mid=…`), so a broker that remembers mids stores it once. A
//! line is forgotten only once its `SENT` (or a refusal) came back, and a
//! message whose seq was printed already is not printed again.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Stdin};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use crate::net::{ByeReason, ClientCodec, ClientFrame, ServerFrame, Tags};
use crate::types::{ClientId, Seq};

/// How the client was started.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Server host name or address.
    pub server: String,
    /// Server port.
    pub port: u16,
    /// The id to log in as.
    pub id: ClientId,
    /// After stdin ends and every line is confirmed, quit once no message
    /// arrived for this long.
    pub exit_when_idle: Option<Duration>,
    /// Reconnect when the connection drops (after a first successful login).
    pub reconnect: bool,
    /// Print each message's seq in front of it: `[<seq>] <from>: <text>`.
    pub show_seq: bool,
    /// The secret sent with `LOGIN`, for servers that check secrets.
    pub secret: Option<String>,
    /// Speak TLS, trusting this configuration, checking this name.
    pub tls: Option<ClientTls>,
}

/// TLS settings of a client.
#[derive(Clone)]
pub struct ClientTls {
    /// Trusted CAs and the rest.
    pub config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    /// The name the server's certificate must carry.
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A connection's byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connects to the server, with TLS when configured.
async fn connect(config: &ClientConfig) -> std::io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect((config.server.as_str(), config.port)).await?;
    let _ = tcp.set_nodelay(true);
    match &config.tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            Ok(Box::new(
                connector.connect(tls.server_name.clone(), tcp).await?,
            ))
        }
    }
}

/// How a client run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A polite close we asked for (`QUIT` answered by `BYE quit`).
    Quit,
    /// The server refused the login; the text is its reason.
    Refused(String),
    /// The server ended the connection (`BYE <reason>`, or it vanished)
    /// and the client does not reconnect.
    Closed(String),
}

/// Lines read from stdin and not yet confirmed, at most.
const MAX_UNCONFIRMED: usize = 1024;
/// Printed messages after which an `ACK` goes out without waiting.
const ACK_EVERY: u64 = 256;
/// How long acks may wait to be batched.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// How often the client pings, so a server's idle timeout (300 s by
/// default) never closes a client that is merely quiet.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long to wait for `WELCOME` (or a refusal) after connecting.
const LOGIN_WAIT: Duration = Duration::from_secs(10);
/// How long to wait for `BYE` after `QUIT`.
const QUIT_GRACE: Duration = Duration::from_secs(3);
/// Reconnection delays: the first, and the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A line waiting for its `SENT`.
struct Line {
    mid: String,
    text: Bytes,
}

/// What outlives a connection.
struct State {
    stdin: BufReader<Stdin>,
    stdin_open: bool,
    /// A stdin line being read (kept across reconnections: a read
    /// interrupted by another event leaves its bytes here).
    line: Vec<u8>,
    /// Successful logins so far.
    logins: u64,
    /// Lines sent (or to send after a reconnect) whose `SENT` is not back.
    unconfirmed: VecDeque<Line>,
    /// Highest seq printed, across connections.
    printed: Seq,
    /// Prefix of this process's message ids, and the next number.
    mid_prefix: String,
    next_mid: u64,
    /// When the last message or stdin line came (for `--exit-when-idle`).
    last_activity: Instant,
}

/// How one connection ended.
enum Ended {
    /// The run is over.
    Done(Outcome),
    /// The connection is gone; the run may go on with a new one.
    Lost(String),
}

/// Writes frames to the socket from a queue, so reading never waits on a
/// write (the server may pause reading while its answers are unread).
async fn writer(
    mut sock: impl tokio::io::AsyncWrite + Unpin,
    mut rx: mpsc::UnboundedReceiver<ClientFrame>,
) {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(frame) = rx.recv().await {
        frame.encode(&mut buf);
        while let Ok(frame) = rx.try_recv() {
            frame.encode(&mut buf);
        }
        if let Err(e) = sock.write_all(&buf).await {
            log::debug!("write failed: {e}");
            return;
        }
        buf.clear();
    }
    let _ = sock.shutdown().await;
}

/// A message id unique across this client's restarts: the clock and the
/// process id, then a counter.
fn mid_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}.{:x}", nanos, std::process::id())
}

/// The delay before reconnection attempt `n` (0-based): doubling from
/// 100 ms up to 5 s, each randomised to between half and all of it.
fn backoff(n: u32) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1u32 << n.min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.5 + f64::from(nanos % 1000) / 2000.0;
    full.mul_f64(jitter)
}

/// Connects, logs in and chats until stdin and the server are done (or a
/// signal arrives), reconnecting when the connection drops; see the module
/// docs.
pub async fn run(config: ClientConfig) -> anyhow::Result<Outcome> {
    let mut state = State {
        stdin: BufReader::new(tokio::io::stdin()),
        stdin_open: true,
        line: Vec::new(),
        logins: 0,
        unconfirmed: VecDeque::new(),
        printed: Seq::ZERO,
        mid_prefix: mid_prefix(),
        next_mid: 0,
        last_activity: Instant::now(),
    };
    let signal = crate::cli::shutdown_signal();
    tokio::pin!(signal);
    let mut attempt = 0u32;
    loop {
        let ever_logged_in = state.logins > 0;
        let stream = match connect(&config).await {
            Ok(s) => s,
            Err(e) if !ever_logged_in => {
                return Err(e).with_context(|| {
                    format!("cannot connect to {}:{}", config.server, config.port)
                })
            }
            Err(e) => {
                let wait = backoff(attempt);
                eprintln!(
                    "cannot reconnect ({e}); trying again in {} ms",
                    wait.as_millis()
                );
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = &mut signal => return Ok(Outcome::Quit),
                }
            }
        };
        let logins = state.logins;
        match chat(&config, &mut state, stream, &mut signal).await? {
            Ended::Done(outcome) => return Ok(outcome),
            Ended::Lost(reason) if config.reconnect && state.logins > 0 => {
                if state.logins > logins {
                    // That connection worked: start the backoff afresh.
                    attempt = 0;
                }
                let wait = backoff(attempt);
                eprintln!("{reason}; reconnecting in {} ms", wait.as_millis());
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = &mut signal => return Ok(Outcome::Quit),
                }
            }
            Ended::Lost(reason) => return Ok(Outcome::Closed(reason)),
        }
    }
}

/// One connection: log in, resend what is unconfirmed, then chat.
async fn chat(
    config: &ClientConfig,
    state: &mut State,
    stream: Box<dyn Io>,
    signal: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Ended> {
    let (mut sock_in, sock_out) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(sock_out, rx));
    let send = |frame: ClientFrame| {
        let _ = tx.send(frame);
    };
    send(ClientFrame::Login {
        id: config.id.clone(),
        secret: config.secret.clone(),
    });
    // Lines that were never confirmed go again, in order, with their mids.
    for line in &state.unconfirmed {
        send(send_frame(line));
    }

    let mut codec = ClientCodec::default();
    let mut read_buf = BytesMut::with_capacity(8192);
    let mut welcomed = false;
    // Highest seq received on this connection: what may be acknowledged.
    let mut received = Seq::ZERO;
    let mut acked = Seq::ZERO;
    let mut quit_deadline: Option<Instant> = None;
    let mut ack_deadline: Option<Instant> = None;
    let far = Duration::from_secs(86_400);
    let login_deadline = Instant::now() + LOGIN_WAIT;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let ended = loop {
        let idle_at = match config.exit_when_idle {
            Some(idle)
                if !state.stdin_open
                    && state.unconfirmed.is_empty()
                    && welcomed
                    && quit_deadline.is_none() =>
            {
                state.last_activity + idle
            }
            _ => Instant::now() + far,
        };
        tokio::select! {
            res = sock_in.read_buf(&mut read_buf) => {
                let n = match res {
                    Ok(n) => n,
                    Err(e) => break Ended::Lost(format!("connection to the server failed: {e}")),
                };
                let mut done = None;
                loop {
                    let item = if n == 0 { codec.decode_eof(&mut read_buf) } else { codec.decode(&mut read_buf) };
                    let item = match item {
                        Ok(Some(item)) => item,
                        Ok(None) => break,
                        Err(e) => {
                            done = Some(Ended::Lost(format!("reading from the server failed: {e}")));
                            break;
                        }
                    };
                    let frame = match item {
                        Ok(f) => f,
                        Err(e) => {
                            log::warn!("server sent a frame this client does not understand: {e}");
                            continue;
                        }
                    };
                    state.last_activity = Instant::now();
                    match frame {
                        ServerFrame::Welcome { id, pending } => {
                            welcomed = true;
                            state.logins += 1;
                            eprintln!("logged in as {id}; {pending} message(s) waiting");
                        }
                        ServerFrame::Msg { seq, from, text, .. } => {
                            received = received.max(seq);
                            if seq > state.printed {
                                let mut out = std::io::stdout().lock();
                                if config.show_seq {
                                    write!(out, "[{seq}] ").context("cannot write to stdout")?;
                                }
                                out.write_all(from.as_str().as_bytes())
                                    .and_then(|_| out.write_all(b": "))
                                    .and_then(|_| out.write_all(&text))
                                    .and_then(|_| out.write_all(b"\n"))
                                    .and_then(|_| out.flush())
                                    .context("cannot write to stdout")?;
                                state.printed = seq;
                            }
                        }
                        ServerFrame::Sent { .. } => {
                            state.unconfirmed.pop_front();
                        }
                        ServerFrame::Pong { .. } => {}
                        ServerFrame::Err(e) => {
                            if !welcomed {
                                done = Some(Ended::Done(Outcome::Refused(format!("{} {}", e.code, e.reason))));
                            } else {
                                // Our only frames that can be refused are SENDs.
                                state.unconfirmed.pop_front();
                                eprintln!("server refused a line: {} {}", e.code, e.reason);
                            }
                        }
                        ServerFrame::Bye { reason } => {
                            done = Some(match done.take() {
                                Some(refused) => refused,
                                None => match reason {
                                    ByeReason::Quit => Ended::Done(Outcome::Quit),
                                    // Someone else is this id now, or may not
                                    // be: trying again would not help.
                                    ByeReason::Replaced | ByeReason::UnknownClient | ByeReason::AuthFailed => {
                                        Ended::Done(Outcome::Closed(format!("server closed the connection: {reason}")))
                                    }
                                    ByeReason::Shutdown | ByeReason::Idle | ByeReason::Limit => {
                                        Ended::Lost(format!("server closed the connection: {reason}"))
                                    }
                                },
                            });
                        }
                    }
                }
                if received > acked {
                    if received.0 - acked.0 >= ACK_EVERY {
                        send(ClientFrame::Ack { seq: received });
                        acked = received;
                        ack_deadline = None;
                    } else if ack_deadline.is_none() {
                        ack_deadline = Some(Instant::now() + ACK_DELAY);
                    }
                }
                if let Some(ended) = done {
                    break ended;
                }
                if n == 0 {
                    break if quit_deadline.is_some() {
                        Ended::Done(Outcome::Quit)
                    } else {
                        Ended::Lost("the server closed the connection".into())
                    };
                }
            }
            res = state.stdin.read_until(b'\n', &mut state.line),
                if state.stdin_open && state.unconfirmed.len() < MAX_UNCONFIRMED && quit_deadline.is_none() => {
                match res {
                    Ok(0) => state.stdin_open = false,
                    Ok(_) => {
                        let mut text: &[u8] = &state.line;
                        while let [rest @ .., b'\n' | b'\r'] = text {
                            text = rest;
                        }
                        if text.is_empty() {
                        } else if std::str::from_utf8(text).is_err() {
                            eprintln!("skipped a line that is not valid UTF-8");
                        } else if text.contains(&b'\r') {
                            eprintln!("skipped a line with a carriage return inside");
                        } else {
                            let l = Line {
                                mid: format!("{}.{}", state.mid_prefix, state.next_mid),
                                text: Bytes::copy_from_slice(text),
                            };
                            state.next_mid += 1;
                            send(send_frame(&l));
                            state.unconfirmed.push_back(l);
                        }
                        state.line.clear();
                    }
                    Err(e) => {
                        eprintln!("cannot read stdin ({e}); no more lines will be sent");
                        state.stdin_open = false;
                    }
                }
                state.last_activity = Instant::now();
            }
            _ = tokio::time::sleep_until(ack_deadline.unwrap_or(Instant::now() + far)), if ack_deadline.is_some() => {
                ack_deadline = None;
                if received > acked {
                    send(ClientFrame::Ack { seq: received });
                    acked = received;
                }
            }
            _ = tokio::time::sleep_until(idle_at), if config.exit_when_idle.is_some() => {
                quit(&send, received, &mut acked, &mut quit_deadline);
            }
            _ = tokio::time::sleep_until(login_deadline), if !welcomed => {
                break Ended::Lost(format!("the server did not answer LOGIN within {} s", LOGIN_WAIT.as_secs()));
            }
            _ = ping.tick(), if quit_deadline.is_none() => {
                send(ClientFrame::Ping { token: None });
            }
            _ = &mut *signal, if quit_deadline.is_none() => {
                quit(&send, received, &mut acked, &mut quit_deadline);
            }
            _ = tokio::time::sleep_until(quit_deadline.unwrap_or(Instant::now() + far)), if quit_deadline.is_some() => {
                eprintln!("the server did not answer QUIT; closing");
                break Ended::Done(Outcome::Quit);
            }
        }
    };
    drop(tx);
    let _ = tokio::time::timeout(QUIT_GRACE, writer).await;
    Ok(ended)
}

fn send_frame(line: &Line) -> ClientFrame {
    ClientFrame::Send {
        text: line.text.clone(),
        tags: Tags {
            mid: Some(line.mid.clone()),
        },
    }
}

fn quit(
    send: &impl Fn(ClientFrame),
    received: Seq,
    acked: &mut Seq,
    quit_deadline: &mut Option<Instant>,
) {
    if received > *acked {
        send(ClientFrame::Ack { seq: received });
        *acked = received;
    }
    send(ClientFrame::Quit);
    *quit_deadline = Some(Instant::now() + QUIT_GRACE);
}
