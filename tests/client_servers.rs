//! The `client` binary's `--servers` list: it logs in to the first server
//! listed, moves on to the next when a connection is lost or cannot be made
//! (wrapping around), takes its unconfirmed lines along with their mids,
//! checks each server's own TLS name, and refuses a bad list.

mod common;

use std::io::Write;
use std::process::Child;

use common::{wait_for, Fake, Server, DEADLINE};
use tokio::net::TcpListener;

fn client(port: u16, id: &str, extra: &[&str]) -> Child {
    common::client_command(port, id, extra).spawn().unwrap()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
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
        notes[0].starts_with(&format!(
            "cannot connect to 127.0.0.1:{}: the server's certificate is not trusted",
            s.port
        )),
        "{notes:?}"
    );
    assert!(
        notes[0].contains("does not carry the name checked"),
        "{notes:?}"
    );
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
