//! Idempotent SEND: a line resent with the same `@mid` is stored once and
//! answered with the first copy's seq — on the same connection, on another,
//! and after a kill -9.

mod common;

use std::collections::HashSet;

use common::Server;

fn durable(dir: &std::path::Path, port: u16) -> Server {
    Server::durable_on(dir, port, "1,2,3")
}

#[tokio::test]
async fn a_resent_mid_is_stored_and_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = durable(dir.path(), 0);
    let (mut c1, _) = s.login("1").await;
    let (mut c2, _) = s.login("2").await;
    c1.send("@mid=m1 SEND hello").await;
    assert_eq!(c1.line().await, "SENT 1");
    c1.send("@mid=m1 SEND hello").await;
    assert_eq!(c1.line().await, "SENT 1");
    // Twice in one pipelined burst: the second waits for the first's seq.
    c1.send_raw(b"@mid=m2 SEND again\n@mid=m2 SEND again\nSEND no mid\nSEND no mid\n")
        .await;
    for want in ["SENT 2", "SENT 2", "SENT 3", "SENT 4"] {
        assert_eq!(c1.line().await, want);
    }
    // 2 got each stored message once: 1, 2, 3, 4 and nothing else.
    let seqs: Vec<u64> = c2.msgs(4).await.into_iter().map(|m| m.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    // From another connection of the same id, the mid is still known…
    drop(c1);
    let (mut c1, _) = s.login("1").await;
    c1.send("@mid=m1 SEND hello").await;
    assert_eq!(c1.line().await, "SENT 1");
    // …but mids are per client id.
    let (mut c3, pending) = s.login("3").await;
    assert_eq!(c3.msgs(pending as usize).await.len(), 4);
    c3.send("@mid=m1 SEND hello").await;
    assert_eq!(c3.line().await, "SENT 5");
    assert_eq!(c2.msgs(1).await[0].0, 5);
    // Tags are checked.
    c3.send("@mid=has space SEND x").await;
    assert!(c3.line().await.starts_with("ERR BAD_FRAME"));
}

#[tokio::test]
async fn mids_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = durable(dir.path(), 0);
    let port = s.port;
    let (mut c1, _) = s.login("1").await;
    c1.send("@mid=keep SEND before the crash").await;
    assert_eq!(c1.line().await, "SENT 1");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = durable(dir.path(), port);
    let (mut c1, _) = s.login("1").await;
    c1.send("@mid=keep SEND before the crash").await;
    assert_eq!(c1.line().await, "SENT 1");
    let (_, pending) = s.login("2").await;
    assert_eq!(pending, 1);
}

/// Pipelined sends with mids, kill -9 mid-stream, restart, resend everything
/// unconfirmed with the same mids — five times: every line is stored exactly
/// once, in the order first stored.
#[tokio::test]
async fn resending_after_crashes_stores_every_line_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut port = 0;
    let mut unconfirmed: Vec<u64> = Vec::new();
    let mut next = 0u64;
    for round in 0..5u64 {
        let mut s = durable(dir.path(), port);
        port = s.port;
        let (mut w, _) = s.login("1").await;
        // Resend what was never confirmed, then new lines.
        for _ in 0..2000 {
            unconfirmed.push(next);
            next += 1;
        }
        let mut burst = String::new();
        for i in &unconfirmed {
            burst.push_str(&format!("@mid=line-{i} SEND line {i}\n"));
        }
        w.send_raw(burst.as_bytes()).await;
        let confirm = 300 + round as usize * 300;
        for _ in 0..confirm {
            let line = w.line().await;
            assert!(line.starts_with("SENT "), "{line}");
            unconfirmed.remove(0);
        }
        s.child.kill().unwrap();
        s.child.wait().unwrap();
    }
    let s = durable(dir.path(), port);
    let (mut w, _) = s.login("1").await;
    let mut burst = String::new();
    for i in &unconfirmed {
        burst.push_str(&format!("@mid=line-{i} SEND line {i}\n"));
    }
    w.send_raw(burst.as_bytes()).await;
    for _ in 0..unconfirmed.len() {
        assert!(w.line().await.starts_with("SENT "));
    }
    let (mut r, pending) = s.login("2").await;
    let log = r.msgs(pending as usize).await;
    let texts: Vec<String> = log.iter().map(|m| m.2.clone()).collect();
    let unique: HashSet<&String> = texts.iter().collect();
    assert_eq!(unique.len(), texts.len(), "a line was stored twice");
    assert_eq!(texts.len() as u64, next, "a line is missing");
    let numbers: Vec<u64> = texts.iter().map(|t| t[5..].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|p| p[0] < p[1]),
        "not in the order first sent"
    );
}
