//! `--retain` over the real server and store: an id that only sends does
//! not hold pruning back; an allowed id that never logs in does, and the
//! server names it.

mod common;

use std::time::{Duration, Instant};

use common::{Conn, Server, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Sends `n` short messages as `c`, pipelined, and reads every `SENT`.
async fn send_many(c: &mut Conn, n: usize) {
    let mut frames = String::new();
    for i in 0..n {
        frames.push_str(&format!("SEND m{i}\n"));
    }
    let Conn { reader, writer } = c;
    let write = async {
        writer.write_all(frames.as_bytes()).await.unwrap();
    };
    let read = async {
        let mut line = String::new();
        for i in 1..=n {
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
