//! SIGHUP on the real binary: the allow-list (from the config file), the
//! secrets file and the TLS certificate are read again while connections
//! stay up; a bad file changes nothing and logs one line; a setting only a
//! restart applies is named in the log.

mod common;
#[path = "common/ws.rs"]
mod ws;

use std::time::{Duration, Instant};

use common::{Conn, Server, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Waits (bounded) until the server's log holds `n` lines containing
/// `needle`; returns those lines.
fn wait_log(s: &Server, needle: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let lines: Vec<String> = s
            .log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} log line(s) with {needle:?}; log:\n{}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of the log about SIGHUP.
fn hangup_lines(s: &Server) -> Vec<String> {
    s.log
        .lock()
        .unwrap()
        .lines()
        .filter(|l| l.contains("SIGHUP"))
        .map(str::to_owned)
        .collect()
}

/// Sends SIGHUP and waits for the `n`th reload outcome line (success or
/// failure); returns every SIGHUP line so far.
fn hangup(s: &Server, n: usize) -> Vec<String> {
    s.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let lines = hangup_lines(s);
        let outcomes = lines
            .iter()
            .filter(|l| l.contains("SIGHUP: reload") && !l.contains("only applied by a restart"))
            .count();
        if outcomes >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no reload outcome; log:\n{}",
            s.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An in-memory server reading `toml` (plus `args`) from a config file in
/// `dir`; returns it and the file's path.
fn with_config(dir: &std::path::Path, toml: &str, args: &[&str]) -> (Server, std::path::PathBuf) {
    let path = dir.join("herald.toml");
    std::fs::write(&path, toml).unwrap();
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend_from_slice(args);
    (Server::start(&all), path)
}

async fn send_and_confirm(c: &mut Conn, text: &str) -> String {
    c.send(&format!("SEND {text}")).await;
    let sent = c.line().await;
    assert!(sent.starts_with("SENT "), "{sent}");
    sent
}

#[tokio::test]
async fn an_id_removed_from_the_config_file_is_logged_out_and_an_added_one_can_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let (s, file) = with_config(
        dir.path(),
        "memory = true\nclient-ids = [\"1\", \"2\", \"3\"]\n",
        &[],
    );
    let (mut one, _) = s.login("1").await;
    let (mut two, _) = s.login("2").await;
    let (mut three, _) = s.login("3").await;
    std::fs::write(&file, "memory = true\nclient-ids = [\"1\", \"3\", \"4\"]\n").unwrap();
    let lines = hangup(&s, 1);
    assert!(
        lines.iter().any(|l| l.contains("SIGHUP: reloaded")
            && l.contains("added 4")
            && l.contains("removed 2 (1 connection(s) ended)")),
        "{lines:?}"
    );

    let err = two.line().await;
    assert!(err.starts_with("ERR UNKNOWN_CLIENT"), "{err}");
    assert_eq!(two.line().await, "BYE unknown-client");
    two.expect_eof().await;

    let (mut four, pending) = s.login("4").await;
    assert_eq!(pending, 0);
    send_and_confirm(&mut one, "after the reload").await;
    for c in [&mut three, &mut four] {
        let msgs = c.msgs(1).await;
        assert_eq!(
            (msgs[0].1.as_str(), msgs[0].2.as_str()),
            ("1", "after the reload")
        );
    }
    let mut again = s.connect().await;
    again.send("LOGIN 2").await;
    assert!(again.line().await.starts_with("ERR UNKNOWN_CLIENT"));
    assert_eq!(again.line().await, "BYE unknown-client");
}

#[tokio::test]
async fn a_changed_secret_works_for_a_new_login_and_the_old_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let write = |one: &str| {
        let text = format!(
            "{}\n{}\n",
            common::hash_line("1", one),
            common::hash_line("2", "two")
        );
        std::fs::write(&secrets, text).unwrap();
    };
    write("old-one");
    let s = Server::start(&["--memory", "--secrets-file", secrets.to_str().unwrap()]);
    let mut two = s.connect().await;
    two.send("LOGIN 2 two").await;
    assert!(two.line().await.starts_with("WELCOME 2 "));
    let mut one = s.connect().await;
    one.send("LOGIN 1 old-one").await;
    assert!(one.line().await.starts_with("WELCOME 1 "));

    write("new-one");
    let lines = hangup(&s, 1);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SIGHUP: reloaded") && l.contains("secrets")),
        "{lines:?}"
    );
    let mut old = s.connect().await;
    old.send("LOGIN 1 old-one").await;
    let refused = old.line().await;
    assert!(refused.starts_with("ERR AUTH_FAILED"), "{refused}");
    // The connection that logged in with the old secret is still up.
    send_and_confirm(&mut one, "still in").await;
    assert_eq!(two.msgs(1).await[0].2, "still in");

    let mut new = s.connect().await;
    new.send("LOGIN 1 new-one").await;
    let welcome = new.line().await;
    assert!(welcome.starts_with("WELCOME 1 "), "{welcome}");
}

/// A TLS connection to `port` trusting only the CA in `ca`.
async fn tls_connect(
    port: u16,
    ca: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = herald::net::tls::client_config(std::path::Path::new(ca)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
}

/// A logged-in line-reading TLS connection.
struct TlsConn {
    io: BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

impl TlsConn {
    async fn login(port: u16, ca: &str, id: &str) -> TlsConn {
        let tls = tls_connect(port, ca).await.expect("TLS handshake");
        let mut c = TlsConn {
            io: BufReader::new(tls),
        };
        c.send(&format!("LOGIN {id}")).await;
        let welcome = c.line().await;
        assert!(welcome.starts_with(&format!("WELCOME {id} ")), "{welcome}");
        c
    }

    async fn send(&mut self, frame: &str) {
        let w = self.io.get_mut();
        w.write_all(format!("{frame}\n").as_bytes()).await.unwrap();
        w.flush().await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut buf = String::new();
        let n = tokio::time::timeout(DEADLINE, self.io.read_line(&mut buf))
            .await
            .expect("timed out waiting for the server")
            .unwrap();
        assert!(n > 0, "connection closed");
        buf.trim_end().to_owned()
    }
}

#[tokio::test]
async fn a_new_certificate_serves_new_connections_and_old_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["localhost", "127.0.0.1"];
    let (ca_a, cert_a, key_a) = common::make_certs_for(dir.path(), "a", &names);
    let (ca_b, cert_b, key_b) = common::make_certs_for(dir.path(), "b", &names);
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let s = Server::start(&[
        "--memory",
        "--client-ids",
        "1,2,3",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let mut old = TlsConn::login(s.port, &ca_a, "1").await;
    assert!(
        tls_connect(s.port, &ca_b).await.is_err(),
        "b's CA trusted before the reload"
    );

    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    let lines = hangup(&s, 1);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SIGHUP: reloaded") && l.contains("certificate")),
        "{lines:?}"
    );
    let mut new = TlsConn::login(s.port, &ca_b, "2").await;
    assert!(
        tls_connect(s.port, &ca_a).await.is_err(),
        "the old certificate still served"
    );
    old.send("SEND over the old connection").await;
    assert!(old.line().await.starts_with("SENT "));
    let msg = new.line().await;
    assert!(msg.ends_with(" 1 over the old connection"), "{msg}");

    // A broken certificate changes nothing and says so in one line.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let before = hangup_lines(&s).len();
    let lines = hangup(&s, 2);
    assert_eq!(lines.len(), before + 1, "{lines:?}");
    let last = lines.last().unwrap();
    assert!(
        last.contains("reload failed") && last.contains("server.pem"),
        "{last}"
    );
    let mut still_b = TlsConn::login(s.port, &ca_b, "3").await;
    // Its backlog first: the message sent above.
    assert!(still_b.line().await.ends_with(" 1 over the old connection"));
    still_b.send("SEND b still served").await;
    assert!(still_b.line().await.starts_with("SENT "));
}

#[tokio::test]
async fn a_broken_config_file_changes_nothing_and_logs_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (s, file) = with_config(
        dir.path(),
        "memory = true\nclient-ids = [\"1\", \"2\"]\n",
        &[],
    );
    let (mut one, _) = s.login("1").await;
    std::fs::write(&file, "memory = true\nclient-ids = [\"1\"\n").unwrap();
    let lines = hangup(&s, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("reload failed") && lines[0].contains("herald.toml"),
        "{lines:?}"
    );
    // A bad value is refused the same way.
    std::fs::write(&file, "memory = true\nclient-ids = [\"1\"]\nport = \"x\"\n").unwrap();
    let lines = hangup(&s, 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].contains("reload failed") && lines[1].contains("port"),
        "{lines:?}"
    );
    // Id 2 is still allowed and 1 still connected.
    let (mut two, _) = s.login("2").await;
    send_and_confirm(&mut one, "unchanged").await;
    assert_eq!(two.msgs(1).await[0].2, "unchanged");
}

#[tokio::test]
async fn a_change_that_needs_a_restart_is_logged_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let (s, file) = with_config(
        dir.path(),
        "memory = true\nclient-ids = [\"1\"]\nmax-connections = 100\n",
        &[],
    );
    std::fs::write(
        &file,
        "memory = true\nclient-ids = [\"1\", \"2\"]\nmax-connections = 200\nlogin-timeout = 5\n",
    )
    .unwrap();
    hangup(&s, 1);
    let restart = wait_log(&s, "only applied by a restart", 1);
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert!(
        restart[0].contains("max-connections") && restart[0].contains("login-timeout"),
        "{restart:?}"
    );
    assert!(!restart[0].contains("client-ids"), "{restart:?}");
    // What can be reloaded was: 2 is allowed now.
    s.login("2").await;
}

#[tokio::test]
async fn https_gets_the_new_certificate_too_and_an_old_wss_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["127.0.0.1"];
    let (ca_a, cert_a, key_a) = common::make_certs_for(dir.path(), "a", &names);
    let (ca_b, cert_b, key_b) = common::make_certs_for(dir.path(), "b", &names);
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let (s, port) = Server::start_http(&[
        "--memory",
        "--client-ids",
        "1,2",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let origin = format!("https://127.0.0.1:{port}");
    let mut old = ws::connect_tls(port, &ca_a, Some(&origin)).await;
    assert_eq!(old.login("1").await, 0);

    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    hangup(&s, 1);
    assert!(
        tls_connect(port, &ca_a).await.is_err(),
        "HTTPS still serves the old certificate"
    );
    let mut new = ws::connect_tls(port, &ca_b, Some(&origin)).await;
    assert_eq!(new.login("2").await, 0);
    old.send("SEND over the old wss").await;
    assert_eq!(old.line().await, "SENT 1");
    assert!(new.line().await.ends_with(" 1 over the old wss"));
}

#[tokio::test]
async fn switching_secrets_on_needs_a_restart_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, file) = with_config(
        dir.path(),
        "memory = true\nclient-ids = [\"1\", \"2\"]\n",
        &[],
    );
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, format!("{}\n", common::hash_line("1", "one"))).unwrap();
    std::fs::write(
        &file,
        format!(
            "memory = true\nclient-ids = [\"1\"]\nsecrets-file = {:?}\n",
            secrets.to_str().unwrap()
        ),
    )
    .unwrap();
    let lines = hangup(&s, 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("reload refused") && lines[0].contains("secrets-file"),
        "{lines:?}"
    );
    // Still no secrets asked, and 2 still allowed.
    s.login("2").await;
    s.login("1").await;
}

#[tokio::test]
async fn a_sighup_right_after_the_listening_line_reloads_and_does_not_end_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = with_config(dir.path(), "memory = true\nclient-ids = [\"1\"]\n", &[]);
    // Server::start returned on the `listening on` line: signal at once.
    let lines = hangup(&s, 1);
    assert!(
        lines.iter().any(|l| l.contains("SIGHUP: reloaded")),
        "{lines:?}"
    );
    s.login("1").await;
}
