//! The `client` binary's promises, against real servers and against fake
//! servers that misbehave on purpose: nothing typed is lost while the server
//! stops and starts, long messages arrive whole, what cannot be decoded is
//! never acknowledged, and a full or stopping server is waited for.

mod common;

use std::io::Write;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_for, Fake, Server, DEADLINE};
use tokio::net::TcpListener;

fn client(port: u16, id: &str, extra: &[&str]) -> Child {
    common::client_command(port, id, extra).spawn().unwrap()
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
