//! The `server` and `client` binaries as a user runs them: flags, exit
//! statuses, stdin/stdout behaviour.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::{Server, DEADLINE};

fn client(port: u16, id: &str, extra: &[&str]) -> Command {
    common::client_command(port, id, extra)
}

/// Streams a child's stdout lines into a channel.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    common::lines_of(child.stdout.take().unwrap())
}

fn wait(child: &mut Child) -> (i32, String) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        assert!(std::time::Instant::now() < deadline, "process did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn clients_chat_through_stdin_and_stdout() {
    let s = Server::start(&["--memory", "--client-ids", "1,2"]);
    let mut listener = client(s.port, "2", &[]).spawn().unwrap();
    let lines = stdout_lines(&mut listener);
    // Whether 2 is logged in yet or not, it gets the lines (live or as its
    // backlog).
    let mut talker = client(s.port, "1", &["--exit-when-idle", "200"])
        .spawn()
        .unwrap();
    talker
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello there\n\nsecond line\n")
        .unwrap();
    let (code, err) = wait(&mut talker);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.recv_timeout(DEADLINE).unwrap(), "1: hello there");
    assert_eq!(lines.recv_timeout(DEADLINE).unwrap(), "1: second line");
    listener.kill().unwrap();
    let _ = listener.wait();
}

#[tokio::test]
async fn the_seed_spelling_works_for_both_binaries() {
    let s = Server::start_raw(&[
        "-client_ids",
        "1,2",
        "-port",
        "0",
        "-bind",
        "127.0.0.1",
        "-memory",
    ]);
    let port = s.port;
    let mut c = Command::new(env!("CARGO_BIN_EXE_client"))
        .args([
            "-client_id",
            "1",
            "-server_ip",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-exit_when_idle",
            "100",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let (code, err) = wait(&mut c);
    assert_eq!(code, 0, "{err}");
    let (mut c2, pending) = s.login("2").await;
    assert_eq!(pending, 1);
    assert_eq!(c2.msgs(1).await, vec![(1, "1".into(), "hi".into())]);
}

#[tokio::test]
async fn a_refused_login_exits_non_zero_with_the_reason() {
    let s = Server::start(&["--memory", "--client-ids", "1,2"]);
    let mut c = client(s.port, "7", &[]).spawn().unwrap();
    let (code, err) = wait(&mut c);
    assert_ne!(code, 0);
    assert!(err.contains("UNKNOWN_CLIENT"), "stderr: {err}");
}

#[tokio::test]
async fn sigterm_quits_politely_after_acknowledging_what_was_printed() {
    let s = Server::start(&["--memory", "--client-ids", "1,2"]);
    let mut c2 = client(s.port, "2", &[]).spawn().unwrap();
    let lines = stdout_lines(&mut c2);
    // 2 is online once a PING round trip after its login... we simply send
    // until it prints: messages sent before it logs in are its backlog.
    let (mut c1, _) = s.login("1").await;
    for t in ["one", "two", "three"] {
        c1.send(&format!("SEND {t}")).await;
    }
    for t in ["one", "two", "three"] {
        assert_eq!(lines.recv_timeout(DEADLINE).unwrap(), format!("1: {t}"));
    }
    let status = Command::new("kill")
        .args(["-TERM", &c2.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, err) = wait(&mut c2);
    assert_eq!(code, 0, "{err}");
    // Everything it printed was acknowledged: nothing is pending for 2.
    let (_, pending) = s.login("2").await;
    assert_eq!(pending, 0);
}

#[test]
fn bad_flags_exit_2_and_runtime_failures_exit_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--client-ids", "1", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_server")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "--client-ids is required");
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--client-ids", "bad id"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--port", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--client-id is required");

    // A port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--memory",
            "--client-ids",
            "1",
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen"), "{err}");
    assert!(out.stdout.is_empty());

    // Nothing listening.
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--client-id", "1", "--port", &free.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn a_server_that_never_answers_login_does_not_hang_the_client() {
    // A listener that accepts and says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (done, wait_done) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = silent.accept();
        // Hold the connection open, silent, until the client has given up.
        let _ = wait_done.recv();
        drop(conn);
    });
    let start = std::time::Instant::now();
    let out = client(port, "1", &["--exit-when-idle", "100"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer LOGIN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(15));
    done.send(()).unwrap();
    holder.join().unwrap();
}
