//! `--retain` over the real server and store: an id that only sends does
//! not hold pruning back; an allowed id that never logs in does, and the
//! server names it. `--retain-max-bytes` and `--retain-max-age` prune even
//! what such an id never got: the log says what it lost, `server inspect`
//! shows it, and when it returns it gets exactly what is kept.

mod common;

use std::time::{Duration, Instant};

use common::{Conn, Server, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Sends `n` short messages as `c`, pipelined, and reads every `SENT`.
async fn send_many(c: &mut Conn, n: usize) {
    send_padded(c, 1, n, 0).await;
}

/// Sends `n` messages of at least `len` bytes as `c`, pipelined, and reads
/// every `SENT`, the first being `first`.
async fn send_padded(c: &mut Conn, first: usize, n: usize, len: usize) {
    let mut frames = String::new();
    for i in 0..n {
        frames.push_str(&format!("SEND {:x<len$}\n", format!("m{i}")));
    }
    let Conn { reader, writer } = c;
    let write = async {
        writer.write_all(frames.as_bytes()).await.unwrap();
    };
    let read = async {
        let mut line = String::new();
        for i in first..first + n {
            line.clear();
            tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
                .await
                .expect("timed out waiting for SENT")
                .unwrap();
            assert_eq!(line, format!("SENT {i}\n"));
        }
    };
    tokio::join!(write, read);
}

/// Stored messages, read from the database while the server runs.
fn stored(dir: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("herald.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap()
}

fn start(dir: &std::path::Path, ids: &str) -> Server {
    Server::start(&[
        "--client-ids",
        ids,
        "--data-dir",
        dir.to_str().unwrap(),
        "--sync",
        "none",
        "--retain",
        "0",
    ])
}

/// `w` sends `n` messages, `r` reads and acknowledges all of them.
async fn talk(s: &Server, n: usize) {
    let (mut w, _) = s.login("w").await;
    send_many(&mut w, n).await;
    let (mut r, pending) = s.login("r").await;
    assert_eq!(pending, n as u64);
    let got = r.msgs(n).await;
    assert_eq!(got.last().map(|m| m.0), Some(n as u64));
    r.send(&format!("ACK {n}")).await;
    r.send("PING acked").await;
    assert_eq!(r.line().await, "PONG acked");
}

#[tokio::test]
async fn a_pure_sender_does_not_hold_pruning_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "w,r");
    talk(&s, 100).await;
    // `w` never acknowledged anything: they are its own messages.
    let deadline = Instant::now() + DEADLINE;
    while stored(dir.path()) > 0 {
        assert!(Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_id_that_never_logs_in_holds_pruning_back_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "w,r,idle");
    let n = 10_050;
    talk(&s, n).await;
    let deadline = Instant::now() + DEADLINE;
    while !s
        .log
        .lock()
        .unwrap()
        .contains("retention: client idle (last ack 0)")
    {
        assert!(Instant::now() < deadline, "the holder was not named");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not the pure sender, whose ack is as low.
    assert!(!s.log.lock().unwrap().contains("retention: client w "));
    assert_eq!(stored(dir.path()), n as i64);
}

fn start_limited(dir: &std::path::Path, ids: &str, limit: &[&str]) -> Server {
    let mut args = vec![
        "--client-ids",
        ids,
        "--data-dir",
        dir.to_str().unwrap(),
        "--sync",
        "none",
    ];
    args.extend_from_slice(limit);
    Server::start(&args)
}

/// Polls `cond` until it holds, failing after [`DEADLINE`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `r` logs in, reads the `n` messages it is owed and acknowledges them.
async fn read_all(s: &Server, id: &str, n: usize) -> Conn {
    let (mut r, pending) = s.login(id).await;
    assert_eq!(pending, n as u64);
    let got = r.msgs(n).await;
    let last = got.last().map_or(0, |m| m.0);
    r.send(&format!("ACK {last}")).await;
    r.send("PING acked").await;
    assert_eq!(r.line().await, "PONG acked");
    r
}

/// `server inspect --data-dir DIR` (plus `extra`), which must succeed.
fn inspect(dir: &std::path::Path, extra: &[&str]) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["inspect", "--data-dir", dir.to_str().unwrap()])
        .args(extra)
        .env_remove("HERALD_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_child(&mut child, DEADLINE);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts the returning `id` is owed and gets exactly seqs `kept`, and
/// nothing after them.
async fn returns_to(s: &Server, id: &str, kept: std::ops::RangeInclusive<u64>) -> Conn {
    let (mut c, pending) = s.login(id).await;
    let want: Vec<u64> = kept.collect();
    assert_eq!(pending, want.len() as u64);
    let got: Vec<u64> = c.msgs(want.len()).await.iter().map(|m| m.0).collect();
    assert_eq!(got, want);
    c.send("PING end").await;
    assert_eq!(c.line().await, "PONG end");
    c
}

#[tokio::test]
async fn a_size_limit_prunes_what_an_absent_id_never_got() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_limited(dir.path(), "w,r,idle", &["--retain-max-bytes", "1000"]);
    // 50 messages of 100 bytes: the newest 10 fit in 1000.
    let (mut w, _) = s.login("w").await;
    send_padded(&mut w, 1, 50, 100).await;
    let _r = read_all(&s, "r", 50).await;
    until("pruned to the newest 10", || stored(dir.path()) == 10).await;
    let line = "retention: client idle will not get 40 message(s) in seqs 1..=40: \
                beyond --retain-max-bytes";
    until("the loss logged", || s.log.lock().unwrap().contains(line)).await;
    // Neither the reader (it acknowledged) nor the sender (its own) lost any.
    let log = s.log.lock().unwrap().clone();
    assert!(!log.contains("client r will"), "{log}");
    assert!(!log.contains("client w will"), "{log}");
    assert_eq!(log.matches("client idle will").count(), 1, "{log}");

    let text = inspect(dir.path(), &[]);
    let row = text
        .lines()
        .find(|l| l.starts_with("idle "))
        .unwrap_or_else(|| panic!("no idle row: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // ID LAST_ACK BACKLOG SENT MIDS LOST LOST_UPTO
    assert_eq!(cells, ["idle", "40", "10", "0", "0", "40", "40"], "{text}");
    let json: serde_json::Value = serde_json::from_str(&inspect(dir.path(), &["--json"])).unwrap();
    let ids = json["ids"].as_array().unwrap();
    let idle = ids.iter().find(|i| i["id"] == "idle").unwrap();
    assert_eq!(
        (idle["lost"].as_u64(), idle["lost_upto"].as_u64()),
        (Some(40), Some(40))
    );
    let r = ids.iter().find(|i| i["id"] == "r").unwrap();
    assert_eq!(r["lost"].as_u64(), Some(0));
    assert!(r["lost_upto"].is_null());

    let _idle = returns_to(&s, "idle", 41..=50).await;
}

#[tokio::test]
async fn an_age_limit_prunes_what_an_absent_id_never_got_and_keeps_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_limited(dir.path(), "w,r,idle", &["--retain-max-age", "1"]);
    let (mut w, _) = s.login("w").await;
    send_padded(&mut w, 1, 20, 0).await;
    let sent = Instant::now();
    // The condition is the time itself: the 20 are older than 1 s.
    until("a second passed", || {
        sent.elapsed() > Duration::from_millis(1100)
    })
    .await;
    send_padded(&mut w, 21, 1, 0).await;
    let r = read_all(&s, "r", 21).await;
    let line = "retention: client idle will not get 20 message(s) in seqs 1..=20: \
                older than --retain-max-age";
    until("the loss logged", || s.log.lock().unwrap().contains(line)).await;
    until("only the newest kept", || stored(dir.path()) == 1).await;
    drop(r);
    let idle = returns_to(&s, "idle", 21..=21).await;
    drop(idle);

    // A restart after kill -9 keeps the head: numbering goes on.
    drop(w);
    let mut s = s;
    s.child.kill().unwrap();
    s.wait_exit();
    let s = start_limited(dir.path(), "w,r,idle", &["--retain-max-age", "1"]);
    let (mut w, _) = s.login("w").await;
    send_padded(&mut w, 22, 1, 0).await;
    // idle never acknowledged 21: it is owed again, then 22.
    let _idle = returns_to(&s, "idle", 21..=22).await;
}
