//! The clients of a test cluster (`cluster.rs`): real `client --servers …`
//! processes whose output is recorded, and protocol connections that keep
//! the messages pushed while they wait for a `SENT`.
//!
//! Include it after `cluster`:
//! `#[path = "common/cluster_clients.rs"] mod cluster_clients;`
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex};

use crate::cluster::wait_until;
use crate::common::{Server, DEADLINE};

/// `[seq] from: text`, as `client --show-seq` prints it, split.
pub fn parse_printed(line: &str) -> Option<(u64, String, String)> {
    let (seq, rest) = line.strip_prefix('[')?.split_once("] ")?;
    let (from, text) = rest.split_once(": ")?;
    Some((seq.parse().ok()?, from.to_owned(), text.to_owned()))
}

/// A real `client --servers … --show-seq` process whose stdout and stderr
/// are recorded; killed when dropped.
pub struct ClientProc {
    pub id: String,
    pub child: Child,
    stdin: Option<ChildStdin>,
    /// Everything it printed on stdout.
    pub printed: Arc<Mutex<Vec<String>>>,
    /// Everything it said on stderr.
    pub notes: Arc<Mutex<Vec<String>>>,
    /// The lines written to its stdin.
    pub typed: Vec<String>,
}

fn record(out: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl ClientProc {
    /// Starts `client --client-id id --servers servers --show-seq extra…`.
    pub fn spawn(servers: &str, id: &str, extra: &[&str]) -> ClientProc {
        let mut child = crate::common::servers_client_command(servers, id, &["--show-seq"])
            .args(extra)
            .spawn()
            .unwrap();
        ClientProc {
            id: id.to_owned(),
            stdin: child.stdin.take(),
            printed: record(child.stdout.take().unwrap()),
            notes: record(child.stderr.take().unwrap()),
            child,
            typed: Vec::new(),
        }
    }

    /// Waits (bounded) until it has logged in `n` times in all.
    pub fn wait_logged_in(&self, n: usize) {
        wait_until(
            DEADLINE,
            || self.logins() >= n,
            || {
                format!(
                    "{} logged in fewer than {n} times: {:?}",
                    self.id,
                    self.notes()
                )
            },
        );
    }

    /// How many times it has logged in.
    pub fn logins(&self) -> usize {
        let notes = self.notes.lock().unwrap();
        notes
            .iter()
            .filter(|l| l.starts_with("logged in as "))
            .count()
    }

    /// Types `line` into its stdin; false once stdin is closed or broken.
    pub fn type_line(&mut self, line: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        if writeln!(stdin, "{line}").is_ok() {
            self.typed.push(line.to_owned());
            true
        } else {
            false
        }
    }

    /// Closes its stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Every message it printed, parsed.
    pub fn received(&self) -> Vec<(u64, String, String)> {
        let printed = self.printed.lock().unwrap();
        printed
            .iter()
            .map(|l| {
                parse_printed(l).unwrap_or_else(|| panic!("{} printed an odd line {l:?}", self.id))
            })
            .collect()
    }

    /// Its stderr so far.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A protocol connection that keeps the `MSG`s it reads while waiting for
/// a `SENT`, so a client that sends and receives at once can be checked
/// in the order the server pushed.
pub struct Peer {
    pub conn: crate::common::Conn,
    pub id: String,
    inbox: std::collections::VecDeque<(u64, String, String)>,
}

impl Peer {
    /// Logs in as `id` on `node`; the peer and its `WELCOME` count.
    pub async fn login(node: &Server, id: &str) -> (Peer, u64) {
        let (conn, pending) = node.login(id).await;
        (Peer::new(conn, id), pending)
    }

    /// Wraps a connection that logged in (or tried to) as `id`.
    pub fn new(conn: crate::common::Conn, id: &str) -> Peer {
        Peer {
            conn,
            id: id.to_owned(),
            inbox: Default::default(),
        }
    }

    /// Sends `SEND text`; the seq it was stored as.
    pub async fn send(&mut self, text: &str) -> u64 {
        self.send_frame(&format!("SEND {text}")).await
    }

    /// Writes `frame` (a `SEND`, tagged or not) and reads until its
    /// `SENT`, keeping the `MSG`s read meanwhile.
    pub async fn send_frame(&mut self, frame: &str) -> u64 {
        self.conn.send(frame).await;
        loop {
            let line = self.conn.line().await;
            if let Some(n) = line.strip_prefix("SENT ") {
                return n
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: {line:?}", self.id));
            }
            let msg = crate::common::parse_msg(&line).unwrap_or_else(|| {
                panic!(
                    "{} expected SENT or MSG after {frame:?}, got {line:?}",
                    self.id
                )
            });
            self.inbox.push_back(msg);
        }
    }

    /// The next message pushed to this client.
    pub async fn msg(&mut self) -> (u64, String, String) {
        if let Some(m) = self.inbox.pop_front() {
            return m;
        }
        let line = self.conn.line().await;
        crate::common::parse_msg(&line)
            .unwrap_or_else(|| panic!("{} expected MSG, got {line:?}", self.id))
    }

    /// The next `n` messages.
    pub async fn msgs(&mut self, n: usize) -> Vec<(u64, String, String)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.msg().await);
        }
        out
    }

    /// The next message must be (seq, from, text).
    pub async fn expect(&mut self, seq: u64, from: &str, text: &str) {
        let got = self.msg().await;
        assert_eq!(
            got,
            (seq, from.to_owned(), text.to_owned()),
            "{} got another message",
            self.id
        );
    }

    /// Nothing more is owed to this client for now: nothing is kept, and
    /// a `PING` is answered before any other frame.
    pub async fn expect_quiet(&mut self) {
        assert!(
            self.inbox.is_empty(),
            "{} was pushed more: {:?}",
            self.id,
            self.inbox
        );
        self.conn.send("PING quiet").await;
        let line = self.conn.line().await;
        assert_eq!(line, "PONG quiet", "{} was pushed more", self.id);
    }

    /// The server must end this connection with `BYE reason` next (after
    /// any messages kept).
    pub async fn expect_bye(&mut self, reason: &str) {
        loop {
            let line = self.conn.line().await;
            if crate::common::parse_msg(&line).is_none() {
                assert_eq!(line, format!("BYE {reason}"), "{}", self.id);
                break;
            }
        }
        self.conn.expect_eof().await;
    }

    /// Ends the connection politely (`QUIT`, `BYE quit`, close).
    pub async fn quit(mut self) {
        self.conn.send("QUIT").await;
        self.expect_bye("quit").await;
    }
}
