//! The server's memory stays bounded in bytes whatever its clients do:
//! readers that log in to a big backlog and do not read, and a connection
//! that floods frames while an answer to it is still owed. Measured as the
//! server's anonymous resident memory (`RssAnon` in `/proc/PID/status`;
//! SQLite's memory map of the database is file-backed, reclaimable, and not
//! counted).

mod common;
#[path = "common/rss.rs"]
mod rss;

use std::time::{Duration, Instant};

use rss::{rss_anon_kib, Sampler, MAX_RSS_ANON_KIB};

use common::{parse_msg, Server, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The text of message `i`: its number, then padding up to `size` bytes.
/// Reads a reader's `WELCOME` and `n` messages of `size` bytes, slowly (a
/// pause every `pause_every` messages), checking they come in order.
async fn read_all(stream: TcpStream, id: String, n: usize, size: usize, pause_every: usize) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::new();
    let mut next_line = async |line: &mut Vec<u8>| {
        line.clear();
        let got = tokio::time::timeout(DEADLINE, reader.read_until(b'\n', line))
            .await
            .expect("timed out waiting for a message")
            .unwrap();
        assert!(got > 0, "connection closed early");
        line.pop();
        String::from_utf8(std::mem::take(line)).unwrap()
    };
    let welcome = next_line(&mut line).await;
    assert_eq!(welcome, format!("WELCOME {id} {n}"));
    for i in 0..n {
        let got = next_line(&mut line).await;
        let (seq, from, t) = parse_msg(&got).unwrap_or_else(|| panic!("not a MSG: {:.80}", got));
        assert_eq!((seq, from.as_str()), (i as u64 + 1, "w"), "{id}");
        assert_eq!(t.len(), size);
        assert!(t.starts_with(&format!("{i:08}-")), "{id}: message {i}");
        if i % pause_every == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Fills a durable server with `n` messages of `size` bytes, logs two
/// readers in that do not read for a while, then lets them read slowly;
/// returns the server's highest `RssAnon` while stalled and in all.
async fn catch_up(extra: &[&str], n: usize, size: usize, pause_every: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--client-ids",
        "w,r1,r2",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--sync",
        "none",
    ];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    let sampler = Sampler::start(s.child.id());
    let started = Instant::now();
    s.fill("w", n, size).await;
    eprintln!("filled {n} x {size} B in {:?}", started.elapsed());
    // Two readers log in and do not read.
    let mut readers = Vec::new();
    for id in ["r1", "r2"] {
        let mut stream = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        stream
            .write_all(format!("LOGIN {id}\n").as_bytes())
            .await
            .unwrap();
        readers.push((stream, id));
    }
    // A measurement period: the server has a second to push them as much
    // as it ever would.
    let stalled_from = sampler.max_kib();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stalled = sampler.max_kib();
    eprintln!("RssAnon: {stalled_from} KiB after the fill, {stalled} KiB with two stalled readers");
    let reading = Instant::now();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|(stream, id)| tokio::spawn(read_all(stream, id.to_owned(), n, size, pause_every)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let max = sampler.max_kib();
    eprintln!(
        "read in {:?}; RssAnon at most {max} KiB; total {:?}",
        reading.elapsed(),
        started.elapsed()
    );
    (stalled, max)
}

#[tokio::test]
async fn big_messages_to_stalled_readers_keep_memory_bounded() {
    let (stalled, max) = catch_up(&["--max-frame-bytes", "1048576"], 2_000, 512 * 1024, 16).await;
    assert!(stalled < MAX_RSS_ANON_KIB, "{stalled} KiB while stalled");
    assert!(max < MAX_RSS_ANON_KIB, "{max} KiB");
}

#[tokio::test]
async fn many_messages_to_stalled_readers_keep_memory_bounded() {
    // 64 KiB frames at the default --max-frame-bytes ("SEND " included).
    let (stalled, max) = catch_up(&[], 20_000, 64 * 1024 - 5, 256).await;
    assert!(stalled < MAX_RSS_ANON_KIB, "{stalled} KiB while stalled");
    assert!(max < MAX_RSS_ANON_KIB, "{max} KiB");
}

#[tokio::test]
async fn a_flood_behind_a_refused_login_keeps_memory_bounded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, common::hash_line("1", "right") + "\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = Server::start(&["--memory", "--secrets-file", secrets.to_str().unwrap()]);
    let pid = s.child.id();
    // Failures in a row make the throttle hold the next refusal back longer
    // (seconds), which is when answers pile up behind the owed one.
    for _ in 0..4 {
        let mut c = s.connect().await;
        c.send("LOGIN 1 nope").await;
        assert!(c.line().await.starts_with("ERR AUTH_FAILED "));
        assert_eq!(c.line().await, "BYE auth-failed");
        c.expect_eof().await;
    }
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let closed_line = format!("connection from {} closed", stream.local_addr().unwrap());
    // A wrong secret: the refusal is held back by the throttle; meanwhile
    // 200 MB of PINGs and empty lines, never reading an answer.
    stream.write_all(b"LOGIN 1 nope\n").await.unwrap();
    // (The secret check itself takes memory of its own, ~19 MiB per
    // verifier thread, that the allocator keeps: measure from after it.)
    let deadline = Instant::now() + DEADLINE;
    while s.log.lock().unwrap().matches("failed login").count() < 5 {
        assert!(Instant::now() < deadline, "the secret was never checked");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = rss_anon_kib(pid);
    let sampler = Sampler::start(pid);
    let chunk: Vec<u8> = b"PING\n\n".repeat(64 * 1024 / 6);
    let mut sent = 0usize;
    while sent < 200_000_000 {
        match tokio::time::timeout(DEADLINE, stream.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            // The server closes a refused connection once its grace runs out.
            Ok(Err(_)) => break,
            Err(_) => panic!("the server stopped reading for {DEADLINE:?}"),
        }
    }
    let during = sampler.max_kib();
    eprintln!(
        "sent {} MB in {:?}; RssAnon {before} KiB before, at most {during} KiB",
        sent / 1_000_000,
        started.elapsed()
    );
    drop(stream);
    // Once the connection is closed, the memory is given back.
    let deadline = Instant::now() + DEADLINE;
    while !s.log.lock().unwrap().contains(&closed_line) {
        assert!(Instant::now() < deadline, "the connection never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = rss_anon_kib(pid);
    eprintln!("RssAnon after the close: {after} KiB");
    assert!(during < MAX_RSS_ANON_KIB, "{during} KiB during the flood");
    // Held to a few reply windows beyond what the server had before.
    assert!(
        during < before + 16 * 1024,
        "{during} KiB during the flood, {before} KiB before it"
    );
    assert!(after < MAX_RSS_ANON_KIB, "{after} KiB after the close");
    // The server still serves.
    let mut c = s.connect().await;
    c.send("LOGIN 1 right").await;
    assert_eq!(c.line().await, "WELCOME 1 0");
}

/// A session keeps its write buffer only while something waits to be
/// written: 500 idle clients that each read three 16 KiB broadcasts leave
/// the server's memory within 2 MiB of where it was (if every session kept
/// the buffer of its last write, 500 of 16 KiB would be 8 MiB more).
#[tokio::test]
async fn idle_connections_keep_no_write_buffer_after_a_broadcast() {
    const N: usize = 500;
    const SIZE: usize = 16 * 1024;
    let ids: Vec<String> = (0..N).map(|i| format!("i{i}")).collect();
    let all = format!("w,{}", ids.join(","));
    let s = Server::start(&["--memory", "--client-ids", &all]);
    let pid = s.child.id();
    let mut readers = Vec::with_capacity(N);
    for id in &ids {
        readers.push(s.login(id).await.0);
    }
    let (mut w, _) = s.login("w").await;
    let before = rss_anon_kib(pid);
    let text = "x".repeat(SIZE);
    for seq in 1..=3 {
        w.send(&format!("SEND {text}")).await;
        assert_eq!(w.line().await, format!("SENT {seq}"));
        for r in &mut readers {
            let got = r.msgs(1).await;
            assert_eq!((got[0].0, got[0].2.len()), (seq, SIZE));
        }
    }
    let after = rss_anon_kib(pid);
    eprintln!("RssAnon {before} KiB before three broadcasts, {after} KiB after them");
    assert!(
        after < before + (N * SIZE / 1024) as u64 / 4,
        "{after} KiB after three broadcasts of {SIZE} B to {N} idle clients, {before} KiB before"
    );
}
