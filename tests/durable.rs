//! The durable store through the real binary: crashes (kill -9), clean
//! stops, restarts on the same data directory, unusable directories.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::Server;

fn durable(dir: &std::path::Path, ids: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--client-ids", ids, "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn kill9(mut s: Server) {
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

#[tokio::test]
async fn confirmed_messages_survive_kill_9_and_numbering_continues() {
    let dir = tempfile::tempdir().unwrap();
    let s = durable(dir.path(), "w,r", &[]);
    let (mut w, _) = s.login("w").await;
    let mut batch = String::new();
    for i in 0..2000 {
        batch.push_str(&format!("SEND m{i}\n"));
    }
    w.send_raw(batch.as_bytes()).await;
    for i in 1..=2000 {
        assert_eq!(w.line().await, format!("SENT {i}"));
    }
    kill9(s);

    let s = durable(dir.path(), "w,r", &[]);
    common::assert_2000_survived(&s).await;
}

#[tokio::test]
async fn sigterm_says_bye_and_keeps_messages_and_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = durable(dir.path(), "1,2,3", &["--sync", "always"]);
    let (mut c1, _) = s.login("1").await;
    let (mut c2, _) = s.login("2").await;
    for t in ["a", "b", "c"] {
        c1.send(&format!("SEND {t}")).await;
    }
    assert_eq!(c2.msgs(3).await.len(), 3);
    c2.send("ACK 3").await;
    // A PING round trip after the ACK: the ACK has reached the server.
    c2.send("PING sync").await;
    assert_eq!(c2.line().await, "PONG sync");
    s.signal("TERM");
    for c in [&mut c1, &mut c2] {
        loop {
            let line = c.line().await;
            if line == "BYE shutdown" {
                break;
            }
            assert!(line.starts_with("SENT "), "unexpected {line:?}");
        }
        c.expect_eof().await;
    }
    assert_eq!(s.wait_exit(), Some(0));

    let s = durable(dir.path(), "1,2,3", &[]);
    let (_, pending2) = s.login("2").await;
    assert_eq!(pending2, 0, "2's ack survived the clean stop");
    let (mut c3, pending3) = s.login("3").await;
    assert_eq!(pending3, 3);
    let texts: Vec<String> = c3.msgs(3).await.into_iter().map(|m| m.2).collect();
    assert_eq!(texts, ["a", "b", "c"]);
}

/// Kills the server in the middle of a stream of pipelined sends, again and
/// again: every confirmed seq must be there afterwards, the log has no holes
/// and holds no line twice.
async fn crash_loop(sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut confirmed: Vec<(u64, String)> = Vec::new();
    let mut next_text = 0u64;
    for round in 0..5u64 {
        let s = durable(dir.path(), "w,reader", &["--sync", sync]);
        let (mut w, _) = s.login("w").await;
        let mut batch = String::new();
        let first = next_text;
        for _ in 0..3000 {
            batch.push_str(&format!("SEND t{next_text}\n"));
            next_text += 1;
        }
        w.send_raw(batch.as_bytes()).await;
        // Wait for a different number of confirmations each round, then kill.
        let wait_for = 200 + round as usize * 450;
        for i in 0..wait_for {
            let line = w.line().await;
            let seq = line.strip_prefix("SENT ").unwrap().parse().unwrap();
            confirmed.push((seq, format!("t{}", first + i as u64)));
        }
        kill9(s);
    }
    let s = durable(dir.path(), "w,reader", &[]);
    let (mut r, pending) = s.login("reader").await;
    let all = r.msgs(pending as usize).await;
    let seqs: Vec<u64> = all.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (1..=pending).collect::<Vec<_>>(), "holes in the log");
    let texts: Vec<&str> = all.iter().map(|m| m.2.as_str()).collect();
    let unique: HashSet<&str> = texts.iter().copied().collect();
    assert_eq!(unique.len(), texts.len(), "a line is stored twice");
    for (seq, text) in &confirmed {
        let got = &all[*seq as usize - 1];
        assert_eq!(&got.2, text, "confirmed seq {seq} holds the wrong text");
    }
    // Stored in the order sent: texts of one writer's stream increase.
    let numbers: Vec<u64> = texts.iter().map(|t| t[1..].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "stored out of order"
    );
}

#[tokio::test]
async fn kill_9_mid_stream_loses_nothing_confirmed_sync_always() {
    crash_loop("always").await;
}

#[tokio::test]
async fn kill_9_mid_stream_loses_nothing_confirmed_sync_none() {
    // --sync none does not fsync, but what was written survives the death of
    // the process (the OS still has it).
    crash_loop("none").await;
}

#[tokio::test]
async fn memory_mode_writes_nothing_to_disk() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--memory", "--client-ids", "1,2", "--bind", "127.0.0.1"])
        .current_dir(cwd.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    let mut c = common::Conn::connect(port).await;
    c.send("LOGIN 1").await;
    c.line().await;
    c.send("SEND kept in memory").await;
    assert_eq!(c.line().await, "SENT 1");
    child.kill().unwrap();
    child.wait().unwrap();
    let entries: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(entries.is_empty(), "memory mode wrote {entries:?}");
}

fn start_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--client-ids", "1", "--bind", "127.0.0.1"])
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    err.lines().last().unwrap_or("").to_owned()
}

#[tokio::test]
async fn an_unusable_data_directory_is_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let err = start_fails(&["--data-dir", file.to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");

    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("herald.db"), vec![0x5a; 8192]).unwrap();
    let err = start_fails(&["--data-dir", garbage.to_str().unwrap()]);
    assert!(err.contains("refusing to use it"), "{err}");
    assert_eq!(
        std::fs::read(garbage.join("herald.db")).unwrap(),
        vec![0x5a; 8192],
        "left untouched"
    );

    let newer = tmp.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    rusqlite::Connection::open(newer.join("herald.db"))
        .unwrap()
        .execute_batch("PRAGMA user_version = 7;")
        .unwrap();
    let err = start_fails(&["--data-dir", newer.to_str().unwrap()]);
    assert!(err.contains("schema version 7"), "{err}");

    let busy = tmp.path().join("busy");
    let _running = durable(&busy, "1", &[]);
    let err = start_fails(&["--data-dir", busy.to_str().unwrap()]);
    assert!(err.contains("in use by another server"), "{err}");
}

#[tokio::test]
async fn retain_deletes_what_everyone_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let s = durable(dir.path(), "1,2", &["--retain", "1"]);
    let (mut c1, _) = s.login("1").await;
    let (mut c2, _) = s.login("2").await;
    for t in ["a", "b", "c"] {
        c1.send(&format!("SEND {t}")).await;
    }
    for seq in 1..=3 {
        assert_eq!(c1.line().await, format!("SENT {seq}"));
    }
    c2.msgs(3).await;
    c2.send("ACK 3").await;
    c2.send("SEND d").await;
    assert_eq!(c2.line().await, "SENT 4");
    c1.msgs(1).await;
    c1.send("ACK 4").await;
    // Acks are saved and pruning runs every 200 ms: poll the database.
    let db = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let n: i64 = db
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        // 1 acked everything up to 4, 2 up to 3: 1..=3 may go, the newest is kept.
        let min: i64 = db
            .query_row("SELECT min(seq) FROM messages", [], |r| r.get(0))
            .unwrap();
        if n == 1 && min == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not pruned: {n} left, oldest {min}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    kill9(s);
    let s = durable(dir.path(), "1,2", &["--retain", "1"]);
    let (mut c2, pending) = s.login("2").await;
    assert_eq!(pending, 0, "4 is 2's own message");
    c2.send("SEND e").await;
    assert_eq!(c2.line().await, "SENT 5");
}

#[tokio::test]
async fn a_full_disk_refuses_sends_and_loses_nothing_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A file size limit makes writes fail with EFBIG, as on a full disk
    // (SIGXFSZ ignored, so the write fails instead of killing the process).
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f 600; exec '{}' --client-ids 1,2 --bind 127.0.0.1 --port 0 --data-dir '{}'",
            env!("CARGO_BIN_EXE_server"),
            data.display()
        ));
    let s = Server::spawn(cmd);
    let (mut c, _) = s.login("1").await;
    let text = "y".repeat(900);
    let mut confirmed = Vec::new();
    let mut refused = 0;
    for i in 0..2000 {
        c.send(&format!("SEND {i} {text}")).await;
        let line = c.line().await;
        if let Some(seq) = line.strip_prefix("SENT ") {
            assert_eq!(refused, 0, "a SEND was confirmed after the disk filled up");
            confirmed.push((seq.parse::<u64>().unwrap(), i));
        } else {
            assert!(line.starts_with("ERR LIMIT "), "{line}");
            refused += 1;
        }
    }
    assert!(
        refused > 0 && !confirmed.is_empty(),
        "{} confirmed, {refused} refused",
        confirmed.len()
    );
    c.send("PING still-here").await;
    assert_eq!(c.line().await, "PONG still-here");
    kill9(s);

    let s = durable(&data, "1,2", &[]);
    let (mut r, pending) = s.login("2").await;
    assert_eq!(pending as usize, confirmed.len());
    for (got, (seq, i)) in r.msgs(confirmed.len()).await.into_iter().zip(&confirmed) {
        assert_eq!(got.0, *seq);
        assert!(got.2.starts_with(&format!("{i} ")));
    }
    let (mut c, _) = s.login("1").await;
    c.send("SEND with room again").await;
    assert_eq!(c.line().await, format!("SENT {}", confirmed.len() + 1));
}
