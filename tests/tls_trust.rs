//! What a TLS client trusts: a self-signed certificate given as `--ca-file`
//! (as `openssl req -x509` makes it, `CA:TRUE`) is trusted as that exact
//! certificate, with its name and dates still checked; `server tls-init`
//! output works end to end; plain and TLS mixed up get a clear log line.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Server, DEADLINE};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A self-signed `CA:TRUE` certificate and its key for `names`, valid
/// from `from` to `to` (years), written as `<tag>.pem` and `<tag>.key`.
fn rcgen_self_signed(
    dir: &Path,
    tag: &str,
    names: &[&str],
    from: i32,
    to: i32,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].to_owned());
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (s(&cert_path), s(&key_path))
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// A self-signed certificate for localhost and 127.0.0.1 as a hurried user
/// makes it: with `openssl req -x509` when openssl is installed, else the
/// same shape (`CA:TRUE`, self-signed) with rcgen.
fn openssl_self_signed(dir: &Path, tag: &str) -> (String, String) {
    let (cert, key) = (
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(openssl) = openssl else {
        return rcgen_self_signed(dir, tag, &["localhost", "127.0.0.1"], 2020, 2999);
    };
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-keyout", &s(&key), "-out", &s(&cert)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = Command::new(openssl)
        .args(["x509", "-noout", "-text", "-in", &s(&cert)])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"));
    (s(&cert), s(&key))
}

fn tls_server(cert: &str, key: &str) -> Server {
    Server::start(&[
        "--memory",
        "--client-ids",
        "1,2",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ])
}

/// Sends "over tls" from client 1 to a listening client 2, both trusting
/// `ca` and connecting to `host`; returns what client 2 printed.
fn chat(port: u16, host: &str, ca: &str) -> String {
    let tls = ["--server-ip", host, "--tls", "--ca-file", ca];
    let mut listener = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--client-id", "2", "--port", &port.to_string()])
        .args(tls)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::lines_of(listener.stdout.take().unwrap());
    let err = common::lines_of(listener.stderr.take().unwrap());
    let first = err.recv_timeout(DEADLINE).unwrap();
    assert!(first.starts_with("logged in as 2"), "{first}");
    let mut talker = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--client-id", "1", "--port", &port.to_string()])
        .args(tls)
        .args(["--exit-when-idle", "200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    talker
        .stdin
        .take()
        .unwrap()
        .write_all(b"over tls\n")
        .unwrap();
    let done = talker.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let line = out.recv_timeout(DEADLINE).unwrap();
    listener.kill().unwrap();
    let _ = listener.wait();
    line
}

/// Runs a client that must be refused; returns its stderr.
fn refused(port: u16, ca: &str) -> String {
    let out = common::client_command(port, "1", &["--tls", "--ca-file", ca, "--no-reconnect"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn an_openssl_self_signed_certificate_works_as_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_self_signed(dir.path(), "self");
    let s = tls_server(&cert, &key);
    assert_eq!(chat(s.port, "127.0.0.1", &cert), "1: over tls");
    assert_eq!(chat(s.port, "localhost", &cert), "1: over tls");
}

#[tokio::test]
async fn a_different_self_signed_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_self_signed(dir.path(), "server");
    let (other, _) = openssl_self_signed(dir.path(), "other");
    let s = tls_server(&cert, &key);
    let err = refused(s.port, &other);
    assert!(err.contains("certificate"), "{err}");
    // Said in words a user can act on, and not retried: the same
    // certificate would come back (also without --no-reconnect).
    let out = common::client_command(s.port, "1", &["--tls", "--ca-file", &other])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not trusted") && err.contains("--ca-file") && !err.contains("Other("),
        "{err}"
    );
    assert!(!err.contains("reconnecting"), "{err}");
}

#[tokio::test]
async fn a_pinned_certificate_that_expired_or_names_another_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (old, old_key) =
        rcgen_self_signed(dir.path(), "old", &["localhost", "127.0.0.1"], 2001, 2002);
    let s = tls_server(&old, &old_key);
    let err = refused(s.port, &old);
    assert!(err.to_lowercase().contains("expired"), "{err}");

    let (wrong, wrong_key) =
        rcgen_self_signed(dir.path(), "wrong", &["elsewhere.example"], 2020, 2999);
    let s = tls_server(&wrong, &wrong_key);
    let err = refused(s.port, &wrong);
    assert!(err.contains("does not carry the name checked"), "{err}");
}

#[tokio::test]
async fn a_certificate_signed_by_a_self_signed_ca_still_needs_its_chain() {
    // tls-init's CA is in the CA file; a server certificate signed by a
    // different CA is not, even though both CAs are self-signed.
    let dir = tempfile::tempdir().unwrap();
    let a = tls_init(&dir.path().join("a"), &["localhost", "127.0.0.1"]);
    let b = tls_init(&dir.path().join("b"), &["localhost", "127.0.0.1"]);
    let s = tls_server(&s(&b.0.join("server.pem")), &s(&b.0.join("server.key")));
    let err = refused(s.port, &s_ca(&a.0));
    assert!(err.contains("certificate"), "{err}");
}

fn s_ca(dir: &Path) -> String {
    s(&dir.join("ca.pem"))
}

/// Runs `server tls-init DIR --host …`; returns DIR and its stdout lines.
fn tls_init(dir: &Path, hosts: &[&str]) -> (PathBuf, Vec<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.arg("tls-init").arg(dir);
    for h in hosts {
        cmd.args(["--host", h]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    (dir.to_owned(), lines)
}

/// The value after `flag` in a printed command line.
fn flag_value<'a>(line: &'a str, flag: &str) -> &'a str {
    let mut words = line.split_whitespace();
    words
        .find(|w| *w == flag)
        .unwrap_or_else(|| panic!("no {flag} in {line}"));
    words.next().unwrap()
}

#[tokio::test]
async fn tls_init_output_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (path, lines) = tls_init(&dir.path().join("tls"), &["localhost", "127.0.0.1"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (server_line, client_line) = (&lines[0], &lines[1]);
    // The lines name the binaries as tls-init was called (by full path).
    let server_bin = server_line.split_whitespace().next().unwrap();
    let client_bin = client_line.split_whitespace().next().unwrap();
    assert_eq!(server_bin, env!("CARGO_BIN_EXE_server"));
    assert_eq!(client_bin, env!("CARGO_BIN_EXE_client"));
    assert!(client_line.contains(" --tls "), "{client_line}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "server.key"] {
            let mode = std::fs::metadata(path.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
    let s = tls_server(
        flag_value(server_line, "--tls-cert"),
        flag_value(server_line, "--tls-key"),
    );
    let ca = flag_value(client_line, "--ca-file");
    let host = flag_value(client_line, "--server-ip");
    assert_eq!(host, "localhost");
    assert_eq!(chat(s.port, host, ca), "1: over tls");
    assert_eq!(chat(s.port, "127.0.0.1", ca), "1: over tls");

    // A second run never overwrites the keys.
    let again = Command::new(env!("CARGO_BIN_EXE_server"))
        .arg("tls-init")
        .arg(&path)
        .args(["--host", "localhost"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
}

#[test]
fn a_key_that_does_not_match_its_certificate_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = rcgen_self_signed(dir.path(), "a", &["localhost"], 2020, 2999);
    let (_, other_key) = rcgen_self_signed(dir.path(), "b", &["localhost"], 2020, 2999);
    let out = Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--memory",
            "--client-ids",
            "1",
            "--tls-cert",
            &cert,
            "--tls-key",
            &other_key,
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&cert) && err.contains(&other_key), "{err}");
}

/// Polls the server's log until it holds `needle`.
fn wait_for_log(s: &Server, needle: &str) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let log = s.log.lock().unwrap().clone();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test]
async fn plain_text_on_a_tls_port_is_named_in_one_log_line_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_self_signed(dir.path(), "self");
    let s = tls_server(&cert, &key);
    let mut plain = s.connect().await;
    plain.try_send("LOGIN 1 sekrit-word").await;
    let log = wait_for_log(&s, "spoke plain text");
    let line = log
        .lines()
        .find(|l| l.contains("spoke plain text"))
        .unwrap();
    assert!(
        line.contains("\"LOGIN …\"") && line.contains("--tls --ca-file"),
        "{line}"
    );
    assert!(!log.contains("sekrit-word"), "{log}");
}

#[tokio::test]
async fn a_tls_client_on_a_plain_port_is_named_in_the_log_and_told_nothing_confusing() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = openssl_self_signed(dir.path(), "self");
    let s = Server::start(&["--memory", "--client-ids", "1"]);
    let out = common::client_command(
        s.port,
        "1",
        &["--tls", "--ca-file", &cert, "--no-reconnect"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_ne!(out.status.code(), Some(0));
    wait_for_log(&s, "looks like a TLS handshake on a plain port");
    // The server wrote nothing back: no ERR lines that a TLS client would
    // take for a corrupt record.
    let mut raw = s.connect().await;
    raw.send_raw(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .await;
    let mut buf = Vec::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut raw.reader, &mut buf),
    )
    .await
    .expect("the server did not close the connection")
    .unwrap();
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    // Plain clients go on as before.
    let (mut c, _) = s.login("1").await;
    c.send("PING x").await;
    assert_eq!(c.line().await, "PONG x");
}

#[tokio::test]
async fn a_tls_connection_over_the_limit_is_refused_inside_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_self_signed(dir.path(), "self");
    let s = Server::start(&[
        "--memory",
        "--client-ids",
        "1,2",
        "--max-connections",
        "1",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let mut first = common::client_command(s.port, "1", &["--tls", "--ca-file", &cert])
        .spawn()
        .unwrap();
    let err = common::lines_of(first.stderr.take().unwrap());
    let line = err.recv_timeout(DEADLINE).unwrap();
    assert!(line.starts_with("logged in as 1"), "{line}");
    let out = common::client_command(
        s.port,
        "2",
        &["--tls", "--ca-file", &cert, "--no-reconnect"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("LIMIT"), "{said}");
    first.kill().unwrap();
    let _ = first.wait();
}
