//! The `client` program: a line-oriented chat client for terminals, pipes
//! and scripts.
//!
//! Every non-empty stdin line is sent as one message; every received message
//! is printed as `<from>: <text>` and acknowledged once printed, so a
//! restarted client neither loses nor repeats a line. Status goes to stderr.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
}

/// How a client run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A polite close we asked for (`QUIT` answered by `BYE quit`).
    Quit,
    /// The server refused the login; the text is its reason.
    Refused(String),
    /// The server ended the connection (`BYE <reason>`, or it vanished).
    Closed(String),
}

/// Lines read ahead of their `SENT` before stdin is read further.
const MAX_UNCONFIRMED: usize = 1024;
/// Printed messages after which an `ACK` goes out without waiting.
const ACK_EVERY: u64 = 256;
/// How long acks may wait to be batched.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// How often the client pings, so a server's idle timeout (300 s by
/// default) never closes a client that is merely quiet.
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long to wait for `BYE` after `QUIT`.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// Writes frames to the socket from a queue, so reading never waits on a
/// write (the server may pause reading while its answers are unread).
async fn writer(
    mut sock: tokio::net::tcp::OwnedWriteHalf,
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

/// Connects, logs in and chats until stdin and the server are done (or a
/// signal arrives); see the module docs.
pub async fn run(config: ClientConfig) -> anyhow::Result<Outcome> {
    let stream = TcpStream::connect((config.server.as_str(), config.port))
        .await
        .with_context(|| format!("cannot connect to {}:{}", config.server, config.port))?;
    let _ = stream.set_nodelay(true);
    let (mut sock_in, sock_out) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(sock_out, rx));
    let send = |frame: ClientFrame| {
        let _ = tx.send(frame);
    };
    send(ClientFrame::Login {
        id: config.id.clone(),
        secret: None,
    });

    let mut codec = ClientCodec::default();
    let mut read_buf = BytesMut::with_capacity(8192);
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut stdin_open = true;
    let mut welcomed = false;
    let mut unconfirmed = 0usize;
    let mut printed = Seq::ZERO;
    let mut acked = Seq::ZERO;
    let mut last_activity = Instant::now();
    let mut quit_deadline: Option<Instant> = None;
    let mut ack_deadline: Option<Instant> = None;
    let signal = crate::cli::shutdown_signal();
    tokio::pin!(signal);
    let far = Duration::from_secs(86_400);
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let outcome = loop {
        let idle_at = match config.exit_when_idle {
            Some(idle)
                if !stdin_open && unconfirmed == 0 && welcomed && quit_deadline.is_none() =>
            {
                last_activity + idle
            }
            _ => Instant::now() + far,
        };
        tokio::select! {
            res = sock_in.read_buf(&mut read_buf) => {
                let n = res.context("connection to the server failed")?;
                let mut done = None;
                loop {
                    let item = if n == 0 { codec.decode_eof(&mut read_buf) } else { codec.decode(&mut read_buf) };
                    let Some(item) = item.context("reading from the server failed")? else { break };
                    let frame = match item {
                        Ok(f) => f,
                        Err(e) => {
                            log::warn!("server sent a frame this client does not understand: {e}");
                            continue;
                        }
                    };
                    last_activity = Instant::now();
                    match frame {
                        ServerFrame::Welcome { id, pending } => {
                            welcomed = true;
                            eprintln!("logged in as {id}; {pending} message(s) waiting");
                        }
                        ServerFrame::Msg { seq, from, text, .. } => {
                            if seq > printed {
                                let mut out = std::io::stdout().lock();
                                out.write_all(from.as_str().as_bytes())
                                    .and_then(|_| out.write_all(b": "))
                                    .and_then(|_| out.write_all(&text))
                                    .and_then(|_| out.write_all(b"\n"))
                                    .and_then(|_| out.flush())
                                    .context("cannot write to stdout")?;
                                printed = seq;
                            }
                        }
                        ServerFrame::Sent { .. } => unconfirmed = unconfirmed.saturating_sub(1),
                        ServerFrame::Pong { .. } => {}
                        ServerFrame::Err(e) => {
                            if !welcomed {
                                done = Some(Outcome::Refused(format!("{} {}", e.code, e.reason)));
                            } else {
                                // Our only frames that can be refused are SENDs.
                                unconfirmed = unconfirmed.saturating_sub(1);
                                eprintln!("server refused a line: {} {}", e.code, e.reason);
                            }
                        }
                        ServerFrame::Bye { reason } => {
                            done = Some(match done.take() {
                                Some(refused) => refused,
                                None if reason == ByeReason::Quit => Outcome::Quit,
                                None => Outcome::Closed(format!("server closed the connection: {reason}")),
                            });
                        }
                    }
                }
                if printed > acked {
                    if printed.0 - acked.0 >= ACK_EVERY {
                        send(ClientFrame::Ack { seq: printed });
                        acked = printed;
                        ack_deadline = None;
                    } else if ack_deadline.is_none() {
                        ack_deadline = Some(Instant::now() + ACK_DELAY);
                    }
                }
                if let Some(outcome) = done {
                    break outcome;
                }
                if n == 0 {
                    break if quit_deadline.is_some() {
                        Outcome::Quit
                    } else {
                        Outcome::Closed("the server closed the connection".into())
                    };
                }
            }
            res = stdin.read_until(b'\n', &mut line), if stdin_open && unconfirmed < MAX_UNCONFIRMED && quit_deadline.is_none() => {
                match res {
                    Ok(0) => stdin_open = false,
                    Ok(_) => {
                        let mut text: &[u8] = &line;
                        while let [rest @ .., b'\n' | b'\r'] = text {
                            text = rest;
                        }
                        if text.is_empty() {
                        } else if std::str::from_utf8(text).is_err() {
                            eprintln!("skipped a line that is not valid UTF-8");
                        } else if text.contains(&b'\r') {
                            eprintln!("skipped a line with a carriage return inside");
                        } else {
                            unconfirmed += 1;
                            send(ClientFrame::Send { text: Bytes::copy_from_slice(text), tags: Tags::default() });
                        }
                        line.clear();
                    }
                    Err(e) => {
                        eprintln!("cannot read stdin ({e}); no more lines will be sent");
                        stdin_open = false;
                    }
                }
                last_activity = Instant::now();
            }
            _ = tokio::time::sleep_until(ack_deadline.unwrap_or(Instant::now() + far)), if ack_deadline.is_some() => {
                ack_deadline = None;
                if printed > acked {
                    send(ClientFrame::Ack { seq: printed });
                    acked = printed;
                }
            }
            _ = tokio::time::sleep_until(idle_at), if config.exit_when_idle.is_some() => {
                quit(&send, printed, &mut acked, &mut quit_deadline);
            }
            _ = ping.tick(), if quit_deadline.is_none() => {
                send(ClientFrame::Ping { token: None });
            }
            _ = &mut signal, if quit_deadline.is_none() => {
                quit(&send, printed, &mut acked, &mut quit_deadline);
            }
            _ = tokio::time::sleep_until(quit_deadline.unwrap_or(Instant::now() + far)), if quit_deadline.is_some() => {
                eprintln!("the server did not answer QUIT; closing");
                break Outcome::Quit;
            }
        }
    };
    drop(tx);
    let _ = tokio::time::timeout(QUIT_GRACE, writer).await;
    Ok(outcome)
}

fn quit(
    send: &impl Fn(ClientFrame),
    printed: Seq,
    acked: &mut Seq,
    quit_deadline: &mut Option<Instant>,
) {
    if printed > *acked {
        send(ClientFrame::Ack { seq: printed });
        *acked = printed;
    }
    send(ClientFrame::Quit);
    *quit_deadline = Some(Instant::now() + QUIT_GRACE);
}
