//! The `client` binary's promises, against real servers and against fake
//! servers that misbehave on purpose: nothing typed is lost while the server
//! stops and starts, long messages arrive whole, what cannot be decoded is
//! never acknowledged, and a full or stopping server is waited for.

mod common;

use std::io::Write;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn client(port: u16, id: &str, extra: &[&str]) -> Child {
    common::client_command(port, id, extra).spawn().unwrap()
}

/// Waits (bounded by `within`) for the next line that satisfies `want`.
fn wait_for(
    lines: &Receiver<String>,
    within: Duration,
    mut want: impl FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if want(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no such line within {within:?}: {e}"),
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// How the server is stopped between restarts.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

/// Lines typed into client 1 at thousands per second while the server is
/// stopped `restarts` times and started again on the same port and data:
/// client 2 prints each exactly once, in order, the store holds each
/// exactly once, and client 1 is still running at the end.
fn lines_survive_restarts(stop: Stop) {
    const LINES: usize = 20_000;
    const PER_SECOND: usize = 5_000;
    const RESTARTS: usize = 4;
    let bound = Duration::from_secs(60);
    let start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::durable_on(dir.path(), 0, "1,2,3");
    let port = server.port;

    let mut receiver = client(port, "2", &[]);
    let printed = common::lines_of(receiver.stdout.take().unwrap());
    let receiver_err = common::lines_of(receiver.stderr.take().unwrap());
    wait_for(&receiver_err, DEADLINE, |l| l.starts_with("logged in as 2"));
    let mut sender = client(port, "1", &[]);
    let sender_err = common::lines_of(sender.stderr.take().unwrap());
    wait_for(&sender_err, DEADLINE, |l| l.starts_with("logged in as 1"));

    // Type at PER_SECOND, in blocks of 50 lines.
    let mut stdin = sender.stdin.take().unwrap();
    let typed = Arc::new(AtomicUsize::new(0));
    let typist = {
        let typed = typed.clone();
        std::thread::spawn(move || {
            let begin = Instant::now();
            for block in 0..LINES / 50 {
                let mut buf = String::new();
                for i in block * 50..(block + 1) * 50 {
                    buf.push_str(&format!("line {i}\n"));
                }
                stdin.write_all(buf.as_bytes()).unwrap();
                typed.fetch_add(50, Ordering::SeqCst);
                let due =
                    begin + Duration::from_secs_f64((block + 1) as f64 * 50.0 / PER_SECOND as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    // Pacing the typist, not waiting for a condition.
                    std::thread::sleep(wait);
                }
            }
            stdin
        })
    };

    // Stop and restart the server as typing goes on, each time once the
    // sender is logged in again, so every stop hits a live stream.
    let mut notes = Vec::new();
    for k in 1..=RESTARTS {
        let threshold = k * LINES / (RESTARTS + 1);
        while typed.load(Ordering::SeqCst) < threshold {
            assert!(start.elapsed() < bound, "typing stalled at restart {k}");
            std::thread::sleep(Duration::from_millis(5));
        }
        if k > 1 {
            let login = wait_for(&sender_err, DEADLINE, |l| {
                notes.push(l.to_owned());
                l.starts_with("logged in as 1")
            });
            assert!(!login.is_empty());
        }
        match stop {
            Stop::Term => {
                server.signal("TERM");
                assert_eq!(server.wait_exit(), Some(0));
            }
            Stop::Kill => {
                server.child.kill().unwrap();
                server.child.wait().unwrap();
            }
        }
        server = Server::durable_on(dir.path(), port, "1,2,3");
    }
    let stdin = typist.join().unwrap();

    // Client 2 prints every line once, in order.
    for i in 0..LINES {
        let left = bound.saturating_sub(start.elapsed());
        let line = printed
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("line {i} not printed within {bound:?}: {e}"));
        assert_eq!(line, format!("1: line {i}"));
    }
    assert!(
        sender.try_wait().unwrap().is_none(),
        "the sending client is still running"
    );
    // No line was dropped.
    notes.extend(sender_err.try_iter());
    assert!(!notes.iter().any(|l| l.contains("dropped")), "{notes:?}");

    // The store holds each line exactly once, in order: id 3, never
    // logged in, is owed all of them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut c3, pending) = server.login("3").await;
        assert_eq!(pending, LINES as u64, "stored exactly once each");
        for (i, (_, from, text)) in c3.msgs(LINES).await.into_iter().enumerate() {
            assert_eq!((from.as_str(), text), ("1", format!("line {i}")));
        }
    });

    // Client 2 printed nothing twice: after a polite stop, its whole
    // output is what was checked.
    common::signal_child(&receiver, "TERM");
    let code = common::wait_child(&mut receiver, DEADLINE);
    assert_eq!(code, Some(0));
    let extra: Vec<String> = printed.try_iter().collect();
    assert!(
        extra.is_empty(),
        "printed again: {:?}",
        &extra[..extra.len().min(5)]
    );
    drop(stdin);
    kill(&mut sender);
    assert!(start.elapsed() < bound + DEADLINE);
}

#[test]
fn typed_lines_survive_sigterm_restarts_exactly_once_in_order() {
    lines_survive_restarts(Stop::Term);
}

#[test]
fn typed_lines_survive_sigkill_restarts_exactly_once_in_order() {
    lines_survive_restarts(Stop::Kill);
}

#[test]
fn half_megabyte_messages_reach_the_client_whole() {
    let s = Server::start(&[
        "--memory",
        "--client-ids",
        "1,2",
        "--max-frame-bytes",
        "1048576",
    ]);
    let mut receiver = client(s.port, "2", &[]);
    let printed = common::lines_of(receiver.stdout.take().unwrap());
    let err = common::lines_of(receiver.stderr.take().unwrap());
    wait_for(&err, DEADLINE, |l| l.starts_with("logged in as 2"));
    let mut sender = client(s.port, "1", &[]);
    let texts: Vec<String> = (0..3)
        .map(|i| {
            let mut t = format!("{i}:");
            while t.len() < 512 * 1024 {
                t.push_str("abcdefghijklmnopqrstuvwxyz0123456789");
            }
            t
        })
        .collect();
    let mut stdin = sender.stdin.take().unwrap();
    for t in &texts {
        writeln!(stdin, "{t}").unwrap();
    }
    stdin.flush().unwrap();
    for t in &texts {
        let line = printed.recv_timeout(DEADLINE).unwrap();
        assert_eq!(line.len(), t.len() + 3);
        assert!(line == format!("1: {t}"), "message {} differs", &t[..2]);
    }
    drop(stdin);
    kill(&mut sender);
    kill(&mut receiver);
}

/// A fake server's side of one connection.
struct Fake {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Fake {
    async fn accept(listener: &TcpListener) -> Fake {
        let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("the client did not connect")
            .unwrap();
        Fake::from(stream)
    }

    fn from(stream: TcpStream) -> Fake {
        let (r, w) = stream.into_split();
        Fake {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next line from the client, or `None` once it closed.
    async fn line(&mut self) -> Option<String> {
        let mut buf = String::new();
        let n = tokio::time::timeout(DEADLINE, self.reader.read_line(&mut buf))
            .await
            .expect("the client said nothing")
            .ok()?;
        (n > 0).then(|| buf.trim_end().to_owned())
    }
}

#[tokio::test]
async fn a_frame_the_client_cannot_decode_is_never_acknowledged() {
    let oversized = format!("MSG 2 0 2 {}\n", "x".repeat(4096));
    for bad in [oversized.as_str(), "MSG two 0 2 not a seq\n"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut c = client(port, "1", &["--max-frame-bytes", "1024"]);
        let printed = common::lines_of(c.stdout.take().unwrap());
        let err = common::lines_of(c.stderr.take().unwrap());

        let mut conn = Fake::accept(&listener).await;
        assert_eq!(conn.line().await.as_deref(), Some("LOGIN 1"));
        conn.write(b"WELCOME 1 2\nMSG 1 0 2 good\n").await;
        conn.write(bad.as_bytes()).await;
        conn.write(b"MSG 3 0 2 after\n").await;
        // Everything the client says until it closes this connection.
        let mut said = Vec::new();
        while let Some(line) = conn.line().await {
            said.push(line);
        }
        assert!(said.contains(&"ACK 1".to_owned()), "{said:?}");
        assert!(
            !said.iter().any(|l| l.starts_with("ACK") && l != "ACK 1"),
            "acknowledged past what it printed: {said:?}"
        );
        assert_eq!(printed.recv_timeout(DEADLINE).unwrap(), "2: good");
        wait_for(&err, DEADLINE, |l| l.contains("cannot decode"));
        // It comes back for the message rather than giving up.
        let mut again = Fake::accept(&listener).await;
        assert_eq!(again.line().await.as_deref(), Some("LOGIN 1"));
        assert!(c.try_wait().unwrap().is_none());
        assert!(
            printed.try_recv().is_err(),
            "printed what it could not decode"
        );
        kill(&mut c);
    }
}

#[tokio::test]
async fn a_full_or_stopping_server_is_retried_even_before_the_first_login() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = client(port, "1", &[]);
    let printed = common::lines_of(c.stdout.take().unwrap());
    let err = common::lines_of(c.stderr.take().unwrap());
    let mut stdin = c.stdin.take().unwrap();
    writeln!(stdin, "typed before any login").unwrap();
    stdin.flush().unwrap();

    let refusals: [&[u8]; 3] = [
        b"ERR LIMIT too many connections\nBYE limit\n",
        b"ERR LIMIT server is shutting down\nBYE shutdown\n",
        b"BYE shutdown\n",
    ];
    for refusal in refusals {
        let mut conn = Fake::accept(&listener).await;
        assert_eq!(conn.line().await.as_deref(), Some("LOGIN 1"));
        conn.write(refusal).await;
        drop(conn);
        assert!(c.try_wait().unwrap().is_none(), "the client gave up");
    }
    let mut conn = Fake::accept(&listener).await;
    assert_eq!(conn.line().await.as_deref(), Some("LOGIN 1"));
    conn.write(b"WELCOME 1 0\n").await;
    let send = conn.line().await.unwrap();
    assert!(
        send.starts_with("@mid=") && send.ends_with(" SEND typed before any login"),
        "{send}"
    );
    conn.write(b"SENT 1\nMSG 2 0 2 welcome at last\n").await;
    assert_eq!(
        printed.recv_timeout(DEADLINE).unwrap(),
        "2: welcome at last"
    );
    wait_for(&err, DEADLINE, |l| l.starts_with("logged in as 1"));
    assert!(c.try_wait().unwrap().is_none());
    drop(stdin);
    kill(&mut c);
}

#[tokio::test]
async fn tls_mismatches_get_a_hint() {
    // A "TLS server" that answers anything with a TLS alert record.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let c = client(port, "1", &["--no-reconnect"]);
    let mut conn = Fake::accept(&listener).await;
    conn.line().await;
    conn.write(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32])
        .await;
    drop(conn);
    let out = tokio::task::spawn_blocking(move || c.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("try --tls --ca-file"), "{err}");
}

/// The client's resident set high-water mark in KiB (Linux).
fn peak_rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_stdin_line_over_the_frame_limit_is_skipped_in_bounded_memory() {
    let s = Server::start(&["--memory", "--client-ids", "1,2"]);
    let (mut receiver, _) = s.login("2").await;
    let mut c = client(s.port, "1", &["--max-frame-bytes", "1048576"]);
    let err = common::lines_of(c.stderr.take().unwrap());
    let mut stdin = c.stdin.take().unwrap();
    let typist = std::thread::spawn(move || {
        stdin.write_all(b"first\n").unwrap();
        // 64 MiB without a newline, then the rest of the line.
        let block = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            stdin.write_all(&block).unwrap();
        }
        stdin.write_all(b"\nlast\n").unwrap();
        stdin
    });
    let texts: Vec<String> = receiver.msgs(2).await.into_iter().map(|m| m.2).collect();
    assert_eq!(texts, ["first", "last"]);
    wait_for(&err, DEADLINE, |l| l.contains("skipped a line longer"));
    let stdin = typist.join().unwrap();
    // Debug builds idle at well under 20 MiB; a buffered line would be 64.
    let kib = peak_rss_kib(&c);
    eprintln!("client peak RSS {kib} KiB");
    assert!(kib < 32 * 1024, "client peak RSS {kib} KiB");
    drop(stdin);
    kill(&mut c);
}

/// A client given `--servers A,B` logs in to A; when A is killed it moves
/// to B by itself, and every line typed meanwhile reaches B once, in
/// order, with what is typed after.
#[test]
fn a_client_with_a_server_list_fails_over_to_the_next_server() {
    const DURING: usize = 50;
    let mut a = Server::start(&["--memory", "--client-ids", "1,2,3"]);
    let b = Server::start(&["--memory", "--client-ids", "1,2,3"]);
    let list = format!("127.0.0.1:{},127.0.0.1:{}", a.port, b.port);

    let mut on_a = client(a.port, "2", &[]);
    let on_a_err = common::lines_of(on_a.stderr.take().unwrap());
    wait_for(&on_a_err, DEADLINE, |l| l.starts_with("logged in as 2"));
    let mut on_b = client(b.port, "2", &[]);
    let printed_b = common::lines_of(on_b.stdout.take().unwrap());
    let on_b_err = common::lines_of(on_b.stderr.take().unwrap());
    wait_for(&on_b_err, DEADLINE, |l| l.starts_with("logged in as 2"));

    let mut sender = common::servers_client_command(&list, "1", &[])
        .spawn()
        .unwrap();
    let mut stdin = sender.stdin.take().unwrap();
    let sender_out = common::lines_of(sender.stdout.take().unwrap());
    let sender_err = common::lines_of(sender.stderr.take().unwrap());
    wait_for(&sender_err, DEADLINE, |l| l.starts_with("logged in as 1"));
    // The first server listed is the one used: a message sent on A
    // reaches it (and it leaves no line of its own unconfirmed).
    on_a.stdin.as_mut().unwrap().write_all(b"hello\n").unwrap();
    assert_eq!(sender_out.recv_timeout(DEADLINE).unwrap(), "2: hello");

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let mut typed = String::new();
    for i in 0..DURING {
        typed.push_str(&format!("during {i}\n"));
    }
    stdin.write_all(typed.as_bytes()).unwrap();
    let next = format!("next server: 127.0.0.1:{}", b.port);
    wait_for(&sender_err, DEADLINE, |l| l == next);
    wait_for(&sender_err, DEADLINE, |l| l.starts_with("logged in as 1"));
    stdin.write_all(b"after\n").unwrap();

    for i in 0..DURING {
        let line = printed_b.recv_timeout(DEADLINE).unwrap();
        assert_eq!(line, format!("1: during {i}"));
    }
    assert_eq!(printed_b.recv_timeout(DEADLINE).unwrap(), "1: after");

    // B stored each line once: id 3 never logged in and is owed them all.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut c3, pending) = b.login("3").await;
        assert_eq!(pending, DURING as u64 + 1);
        let texts: Vec<String> = c3.msgs(DURING + 1).await.into_iter().map(|m| m.2).collect();
        let mut want: Vec<String> = (0..DURING).map(|i| format!("during {i}")).collect();
        want.push("after".into());
        assert_eq!(texts, want);
    });
    assert!(
        sender.try_wait().unwrap().is_none(),
        "the client still runs"
    );
    drop(stdin);
    kill(&mut sender);
    kill(&mut on_a);
    kill(&mut on_b);
}

/// Runs `client ARGS` with stdin closed; its exit code and stderr.
fn client_usage(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_server_list_with_port_or_a_bad_entry_is_a_usage_error() {
    let servers = ["--client-id", "1", "--servers", "127.0.0.1:7000"];
    for extra in [["--port", "7000"], ["--server-ip", "127.0.0.1"]] {
        let args: Vec<&str> = servers.iter().chain(&extra).copied().collect();
        let (code, err) = client_usage(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("cannot be used with"), "{err}");
        assert!(err.contains(extra[0]), "{err}");
    }
    for (list, entry) in [
        ("127.0.0.1:7000,localhost", "'localhost' has no port"),
        ("127.0.0.1:7000,b:99999", "'b:99999' has a bad port"),
        (
            "127.0.0.1:7000,127.0.0.1:7000",
            "'127.0.0.1:7000' is listed twice",
        ),
        ("127.0.0.1:7000,", "empty"),
        ("", "empty"),
    ] {
        let (code, err) = client_usage(&["--client-id", "1", "-servers", list]);
        assert_eq!(code, Some(2), "{list:?}: {err}");
        assert!(err.contains(entry), "{list:?}: {err}");
    }
    // Neither a list nor a port.
    let (code, err) = client_usage(&["--client-id", "1"]);
    assert_eq!(code, Some(2), "{err}");
}

/// With TLS, each server in the list is checked against its own host: a
/// certificate for `localhost` only is refused at `127.0.0.1` and taken at
/// `localhost` (the same server), where the client then logs in.
#[test]
fn with_tls_each_listed_server_is_checked_against_its_own_host() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::make_certs_for(dir.path(), "l", &["localhost"]);
    let s = Server::start(&[
        "--memory",
        "--client-ids",
        "1",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let list = format!("127.0.0.1:{0},localhost:{0}", s.port);
    let mut c = common::servers_client_command(&list, "1", &["--tls", "--ca-file", &ca])
        .spawn()
        .unwrap();
    let err = common::lines_of(c.stderr.take().unwrap());
    let mut notes = Vec::new();
    wait_for(&err, DEADLINE, |l| {
        notes.push(l.to_owned());
        l.starts_with("logged in as 1")
    });
    assert!(
        notes[0].starts_with(&format!("cannot connect to 127.0.0.1:{}: TLS", s.port)),
        "{notes:?}"
    );
    assert!(notes[0].contains("not valid for name"), "{notes:?}");
    assert_eq!(notes[1], format!("next server: localhost:{}", s.port));
    kill(&mut c);
}

/// Over fake servers A and B: a line A took but did not confirm goes to B
/// with the same mid, a confirmed one does not, and when B goes too the
/// client comes back to A (the list wraps around).
#[tokio::test]
async fn unconfirmed_lines_follow_the_client_to_the_next_server_with_their_mids() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pa, pb) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    let list = format!("127.0.0.1:{pa},127.0.0.1:{pb}");
    let mut c = common::servers_client_command(&list, "1", &[])
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();

    let mut on_a = Fake::accept(&a).await;
    assert_eq!(on_a.line().await.as_deref(), Some("LOGIN 1"));
    on_a.write(b"WELCOME 1 0\n").await;
    stdin.write_all(b"one\ntwo\n").unwrap();
    let one = on_a.line().await.unwrap();
    let two = on_a.line().await.unwrap();
    assert!(
        one.ends_with(" SEND one") && two.ends_with(" SEND two"),
        "{one} {two}"
    );
    on_a.write(b"SENT 1\n").await;
    drop(on_a);

    let mut on_b = Fake::accept(&b).await;
    assert_eq!(on_b.line().await.as_deref(), Some("LOGIN 1"));
    on_b.write(b"WELCOME 1 0\n").await;
    assert_eq!(on_b.line().await.unwrap(), two, "resent with its mid");
    stdin.write_all(b"three\n").unwrap();
    let three = on_b.line().await.unwrap();
    assert!(three.ends_with(" SEND three"), "{three}");
    drop(on_b);

    let mut again = Fake::accept(&a).await;
    assert_eq!(again.line().await.as_deref(), Some("LOGIN 1"));
    again.write(b"WELCOME 1 0\n").await;
    assert_eq!(again.line().await.unwrap(), two);
    assert_eq!(again.line().await.unwrap(), three);
    assert!(c.try_wait().unwrap().is_none());
    drop(stdin);
    kill(&mut c);
}
