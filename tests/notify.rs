//! Readiness notification of the real `server` binary: with
//! `NOTIFY_SOCKET` naming a Unix datagram socket (as systemd's
//! `Type=notify` does), `READY=1` arrives once every listener accepts and
//! after the start lines are on stdout, `STOPPING=1` at SIGTERM; a socket
//! nobody listens on costs a warn line and nothing else.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};

use common::{Conn, Server, DEADLINE};

/// A socket standing in for the service manager's, with its directory.
struct Manager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Manager {
    fn bind() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        Manager {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next notification (one datagram of `KEY=value` lines); panics
    /// after the deadline.
    fn next(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("no notification within the deadline");
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        text.lines().map(str::to_owned).collect()
    }
}

/// Kills the server when a test fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn value<'a>(notification: &'a [String], key: &str) -> Option<&'a str> {
    notification
        .iter()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The port after `<name> on 127.0.0.1:` in a `STATUS=` text.
fn port_in(status: &str, name: &str) -> u16 {
    let prefix = format!("{name} on 127.0.0.1:");
    let at = status
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {name} address in {status:?}"));
    let rest = &status[at + prefix.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

#[tokio::test]
async fn ready_comes_after_the_start_lines_when_every_listener_accepts() {
    let manager = Manager::bind();
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout");
    // stdout in a file: what it holds when READY=1 arrives was written
    // before, whatever the scheduling of a reader.
    let server = Running(
        Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--client-ids", "1,2", "--bind", "127.0.0.1", "--port", "0"])
            .args(["--http-bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("NOTIFY_SOCKET", &manager.path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let ready = manager.next();
    assert_eq!(value(&ready, "READY"), Some("1"), "{ready:?}");
    let status = value(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS in {ready:?}"));
    let printed = std::fs::read_to_string(&stdout).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "start lines before READY=1: {printed:?}");
    assert_eq!(
        status,
        lines.join(", "),
        "STATUS names what stdout announced"
    );

    let port = port_in(status, "listening");
    let (mut a, _) = Conn::login(port, "1").await;
    let (mut b, _) = Conn::login(port, "2").await;
    a.send("SEND hello").await;
    assert!(a.line().await.starts_with("SENT "));
    let got = b.msgs(1).await;
    assert_eq!((got[0].1.as_str(), got[0].2.as_str()), ("1", "hello"));
    for name in ["http", "admin"] {
        tokio::net::TcpStream::connect(("127.0.0.1", port_in(status, name)))
            .await
            .unwrap_or_else(|e| panic!("{name} listener not accepting at READY=1: {e}"));
    }
    drop(server);
}

#[tokio::test]
async fn stopping_is_sent_at_sigterm_and_the_server_exits_cleanly() {
    let manager = Manager::bind();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args([
        "--client-ids",
        "1",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--memory",
    ])
    .env("NOTIFY_SOCKET", &manager.path);
    let mut server = Server::spawn(cmd);
    let ready = manager.next();
    assert_eq!(value(&ready, "READY"), Some("1"), "{ready:?}");
    let (mut c, _) = server.login("1").await;

    server.signal("TERM");
    let stopping = manager.next();
    assert_eq!(value(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    assert_eq!(c.line().await, "BYE shutdown");
    assert_eq!(server.wait_exit(), Some(0));
}

#[tokio::test]
async fn a_notify_socket_nobody_listens_on_is_logged_and_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no-such-dir").join("notify");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args([
        "--client-ids",
        "1,2",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--memory",
    ])
    .env("NOTIFY_SOCKET", &gone);
    let mut server = Server::spawn(cmd);
    let (mut a, _) = server.login("1").await;
    let (mut b, _) = server.login("2").await;
    a.send("SEND still here").await;
    assert!(a.line().await.starts_with("SENT "));
    assert_eq!(b.msgs(1).await[0].2, "still here");

    server.signal("TERM");
    assert_eq!(server.wait_exit(), Some(0));
    let log = server.log.lock().unwrap().clone();
    for what in ["READY=1", "STOPPING=1"] {
        assert!(
            log.contains(&format!("cannot send {what} to the service manager")),
            "no warning for {what} in {log:?}"
        );
    }
}
