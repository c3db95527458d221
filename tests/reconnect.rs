//! The client binary across server crashes: it reconnects by itself, sends
//! what was typed while the server was away, and prints nothing twice.

mod common;

use std::io::Write;
use std::process::Child;

use common::{Server, DEADLINE};

fn client(port: u16, id: &str, extra: &[&str]) -> Child {
    common::client_command(port, id, extra).spawn().unwrap()
}

#[tokio::test]
async fn the_client_reconnects_after_a_crash_and_prints_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::durable_on(dir.path(), 0, "1,2");
    let port = s.port;
    let mut c1 = client(port, "1", &[]);
    let out = common::lines_of(c1.stdout.take().unwrap());
    let status = common::lines_of(c1.stderr.take().unwrap());
    let mut stdin = c1.stdin.take().unwrap();
    assert!(status
        .recv_timeout(DEADLINE)
        .unwrap()
        .starts_with("logged in as 1"));

    let (mut c2, _) = s.login("2").await;
    for t in ["before one", "before two"] {
        c2.send(&format!("SEND {t}")).await;
    }
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), "2: before one");
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), "2: before two");

    // The server dies; a line typed meanwhile waits for the reconnection.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    writeln!(stdin, "typed while the server was down").unwrap();
    stdin.flush().unwrap();
    let s = Server::durable_on(dir.path(), port, "1,2");

    let (mut c2, pending) = s.login("2").await;
    let _ = pending;
    // 1's line arrives once, after its reconnection.
    let mut got = None;
    while got.is_none() {
        let line = c2.line().await;
        if let Some((_, from, text)) = common::parse_msg(&line) {
            assert_eq!(from, "1");
            got = Some(text);
        }
    }
    assert_eq!(got.as_deref(), Some("typed while the server was down"));
    c2.send("SEND after the restart").await;
    // 1 may be sent "before …" again (its last acks can die with the
    // server), but prints only what it had not printed.
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), "2: after the restart");
    let reconnecting: Vec<String> = status.try_iter().collect();
    assert!(
        reconnecting.iter().any(|l| l.contains("reconnect")),
        "no word on stderr about reconnecting: {reconnecting:?}"
    );
    drop(stdin);
    c1.kill().unwrap();
    c1.wait().unwrap();
}

#[tokio::test]
async fn with_no_reconnect_the_client_exits_when_the_server_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::durable_on(dir.path(), 0, "1,2");
    let mut c = client(s.port, "1", &["--no-reconnect"]);
    let status = common::lines_of(c.stderr.take().unwrap());
    assert!(status
        .recv_timeout(DEADLINE)
        .unwrap()
        .starts_with("logged in as 1"));
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    let code = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st.code();
        }
        assert!(std::time::Instant::now() < deadline, "client did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(code, Some(1));
}
