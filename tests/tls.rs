//! TLS between the real binaries, with certificates made in the test (a
//! private CA and a server certificate for 127.0.0.1 and localhost).

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{Server, DEADLINE};

/// A private CA and a server certificate for 127.0.0.1 and localhost, as
/// `tag`-ca.pem, `tag`-server.pem and `tag`-server.key in `dir`.
fn make_certs(dir: &std::path::Path, tag: &str) -> (String, String, String) {
    common::make_certs_for(dir, tag, &["localhost", "127.0.0.1"])
}

/// An in-memory server for `ids` speaking TLS with `cert` and `key`.
fn tls_server(ids: &str, cert: &str, key: &str) -> Server {
    Server::start(&[
        "--memory",
        "--client-ids",
        ids,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ])
}

#[tokio::test]
async fn clients_chat_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path(), "a");
    let s = tls_server("1,2", &cert, &key);
    let mut listener = common::client_command(s.port, "2", &["--tls", "--ca-file", &ca])
        .spawn()
        .unwrap();
    let out = common::lines_of(listener.stdout.take().unwrap());
    let err = common::lines_of(listener.stderr.take().unwrap());
    assert!(err
        .recv_timeout(DEADLINE)
        .unwrap()
        .starts_with("logged in as 2"));
    let mut talker = common::client_command(
        s.port,
        "1",
        &["--tls", "--ca-file", &ca, "--exit-when-idle", "200"],
    )
    .spawn()
    .unwrap();
    talker
        .stdin
        .take()
        .unwrap()
        .write_all(b"secret plans\n")
        .unwrap();
    let status = talker.wait().unwrap();
    assert!(status.success());
    assert_eq!(out.recv_timeout(DEADLINE).unwrap(), "1: secret plans");
    listener.kill().unwrap();
    let _ = listener.wait();
}

#[tokio::test]
async fn a_plain_client_on_a_tls_port_fails_cleanly_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path(), "b");
    let s = tls_server("1", &cert, &key);
    let mut plain = s.connect().await;
    plain.try_send("LOGIN 1").await;
    // The server gives up on the handshake and closes; no frame comes back.
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut plain.reader, &mut buf),
    )
    .await
    .expect("the server did not close the plain connection");
    assert!(!String::from_utf8_lossy(&buf).contains("WELCOME"));
    // The client binary without --tls says it lost the connection, and
    // that TLS may be why.
    let out = common::client_command(s.port, "1", &["--no-reconnect"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS"), "no hint at TLS: {err}");
    // And the server goes on serving TLS clients.
    let ok = common::client_command(
        s.port,
        "1",
        &["--tls", "--ca-file", &ca, "--exit-when-idle", "100"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(s.log.lock().unwrap().contains("TLS handshake"));
}

#[test]
fn a_tls_client_on_a_plain_port_is_told_to_drop_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = make_certs(dir.path(), "e");
    let s = Server::start(&["--memory", "--client-ids", "1"]);
    let out = common::client_command(s.port, "1", &["--tls", "--ca-file", &ca])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("drop --tls"), "{err}");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = make_certs(dir.path(), "c");
    let (other_ca, _, _) = make_certs(dir.path(), "d");
    let s = tls_server("1", &cert, &key);
    let out = common::client_command(s.port, "1", &["--tls", "--ca-file", &other_ca])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn bad_certificate_or_key_paths_stop_the_server() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--memory",
            "--client-ids",
            "1",
            "--tls-cert",
            "/no/cert.pem",
            "--tls-key",
            "/no/key.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/cert.pem"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--memory",
            "--client-ids",
            "1",
            "--tls-cert",
            "/no/cert.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--tls-cert needs --tls-key");
}
