//! Per-client secrets: the right secret logs in, a wrong or missing one is
//! refused with AUTH_FAILED (after a delay that grows with each failure),
//! `server hash-secret` output is what the server accepts.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, DEADLINE};

/// `server hash-secret --client-id ID` with `secret` on stdin.
fn hash_line(id: &str, secret: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["hash-secret", "--client-id", id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn secrets_file(dir: &tempfile::TempDir, lines: &[String]) -> String {
    let path = dir.path().join("secrets");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_right_secret_logs_in_and_a_wrong_or_missing_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = secrets_file(
        &dir,
        &[hash_line("1", "correct-horse"), hash_line("2", "battery")],
    );
    let s = Server::start(&["--memory", "--secrets-file", &file]);

    let mut c = s.connect().await;
    c.send("LOGIN 1 correct-horse").await;
    assert_eq!(c.line().await, "WELCOME 1 0");

    for login in ["LOGIN 2 wrong", "LOGIN 2"] {
        let mut bad = s.connect().await;
        bad.send(login).await;
        bad.send("SEND must not be stored").await;
        assert!(bad.line().await.starts_with("ERR AUTH_FAILED "), "{login}");
        assert_eq!(bad.line().await, "BYE auth-failed");
        bad.expect_eof().await;
    }
    // An id without a line in the file is unknown, as on any allow-list.
    let mut unknown = s.connect().await;
    unknown.send("LOGIN 3 whatever").await;
    assert!(unknown.line().await.starts_with("ERR UNKNOWN_CLIENT "));
    assert_eq!(unknown.line().await, "BYE unknown-client");

    // A SEND pipelined behind a good LOGIN is kept until the check is done.
    let mut two = s.connect().await;
    two.send_raw(b"LOGIN 2 battery\nSEND pipelined\n").await;
    assert_eq!(two.line().await, "WELCOME 2 0");
    assert_eq!(two.line().await, "SENT 1");
    assert_eq!(c.msgs(1).await, vec![(1, "2".into(), "pipelined".into())]);
    assert!(s.log.lock().unwrap().contains("failed login as 2"));
}

#[tokio::test]
async fn the_client_binary_sends_its_secret_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = secrets_file(&dir, &[hash_line("1", "s1"), hash_line("2", "s2")]);
    let s = Server::start(&["--memory", "--secrets-file", &file]);
    let secret_path = dir.path().join("my-secret");
    std::fs::write(&secret_path, "s1\n").unwrap();
    let mut a = common::client_command(
        s.port,
        "1",
        &["--secret-file", secret_path.to_str().unwrap()],
    )
    .spawn()
    .unwrap();
    let a_err = common::lines_of(a.stderr.take().unwrap());
    assert!(a_err
        .recv_timeout(DEADLINE)
        .unwrap()
        .starts_with("logged in as 1"));
    let mut b = common::client_command(s.port, "2", &[])
        .env("HERALD_SECRET", "s2")
        .spawn()
        .unwrap();
    let b_err = common::lines_of(b.stderr.take().unwrap());
    assert!(b_err
        .recv_timeout(DEADLINE)
        .unwrap()
        .starts_with("logged in as 2"));
    let out = common::client_command(s.port, "2", &[])
        .env("HERALD_SECRET", "not-it")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_FAILED"));
    a.kill().unwrap();
    b.kill().unwrap();
    let _ = (a.wait(), b.wait());
}

#[tokio::test]
async fn repeated_failures_from_one_address_wait_longer_and_longer() {
    let dir = tempfile::tempdir().unwrap();
    let file = secrets_file(&dir, &[hash_line("1", "right")]);
    let s = Server::start(&["--memory", "--secrets-file", &file]);
    let mut waits = Vec::new();
    for _ in 0..4 {
        let mut c = s.connect().await;
        let start = Instant::now();
        c.send("LOGIN 1 wrong").await;
        assert!(c.line().await.starts_with("ERR AUTH_FAILED "));
        waits.push(start.elapsed());
    }
    // 100 ms, 200 ms, 400 ms, 800 ms of deliberate delay on top of hashing.
    assert!(waits[3] >= Duration::from_millis(800), "{waits:?}");
    assert!(
        waits[3] > waits[0] + Duration::from_millis(500),
        "{waits:?}"
    );
    // The right secret still gets in, and resets the count.
    let mut c = s.connect().await;
    c.send("LOGIN 1 right").await;
    assert_eq!(c.line().await, "WELCOME 1 0");
}

#[test]
fn a_bad_secrets_file_stops_the_server_with_its_line_number() {
    let dir = tempfile::tempdir().unwrap();
    let good = hash_line("1", "x");
    let file = secrets_file(
        &dir,
        &["# ids and their hashes".into(), good, "2:not-a-hash".into()],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--bind", "127.0.0.1", "--memory", "--secrets-file", &file])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--bind",
            "127.0.0.1",
            "--memory",
            "--secrets-file",
            "/no/such/file",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read secrets file"));
}

#[tokio::test]
async fn with_both_flags_only_ids_in_both_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let file = secrets_file(&dir, &[hash_line("1", "a"), hash_line("2", "b")]);
    let s = Server::start(&["--memory", "--secrets-file", &file, "--client-ids", "2,3"]);
    let mut c = s.connect().await;
    c.send("LOGIN 1 a").await;
    assert!(c.line().await.starts_with("ERR UNKNOWN_CLIENT "));
    let mut c = s.connect().await;
    c.send("LOGIN 2 b").await;
    assert_eq!(c.line().await, "WELCOME 2 0");
}
