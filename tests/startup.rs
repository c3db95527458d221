//! How the server starts and what it starts with: a failed start prints
//! exactly one line on stderr, it listens on loopback unless told
//! otherwise, its data is readable by its owner only, it fits its
//! connections to the open-file limit, and secrets never reach its log.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{assert_one_line_failure, failed_start, Server, DEADLINE};

#[test]
fn a_port_in_use_fails_with_exactly_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for level in ["info", "debug"] {
        let out = failed_start(
            &[
                "--client-ids",
                "1",
                "--port",
                &port,
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &[("RUST_LOG", level)],
        );
        assert_one_line_failure(&out, &port);
        let out = failed_start(
            &["--client-ids", "1", "--port", &port, "--memory"],
            &[("RUST_LOG", level)],
        );
        assert_one_line_failure(&out, "in use");
    }
}

#[test]
fn a_bad_data_dir_fails_with_exactly_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for level in ["info", "debug"] {
        let out = failed_start(
            &["--client-ids", "1", "--data-dir", file.to_str().unwrap()],
            &[("RUST_LOG", level)],
        );
        assert_one_line_failure(&out, "not a directory");
    }
    // A store held by a running server.
    let data = dir.path().join("data");
    let _running = Server::durable_on(&data, 0, "1");
    let out = failed_start(
        &["--client-ids", "1", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert_one_line_failure(&out, "in use by another server");
}

#[test]
fn it_listens_on_loopback_by_default_and_says_how_to_open_up() {
    // Server::start_raw asserts the `listening on 127.0.0.1:` line.
    let s = Server::start_raw(&["--port", "0", "--memory", "--client-ids", "1"]);
    wait_for_log(&s, "--bind 0.0.0.0");
}

#[tokio::test]
async fn a_sighup_with_unchanged_settings_keeps_serving_and_says_so() {
    let mut s = Server::start_raw(&["--port", "0", "--memory", "--client-ids", "1,2"]);
    let (mut a, _) = s.login("1").await;
    s.signal("HUP");
    let log = wait_for_log(&s, "SIGHUP: reloaded: 2 allowed client id(s)");
    assert!(!log.contains("restart"), "{log}");
    // Still serving, the open connection included.
    let (mut b, _) = s.login("2").await;
    a.send("SEND after the hangup").await;
    assert_eq!(a.line().await, "SENT 1");
    assert!(b.line().await.ends_with(" 1 after the hangup"));
    s.signal("TERM");
    assert_eq!(s.wait_exit(), Some(0));
}

/// Polls the server's log until it holds `needle`; returns the log.
fn wait_for_log(s: &Server, needle: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = s.log.lock().unwrap().clone();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn the_data_directory_and_database_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::durable_on(&data, 0, "1");
    let mode = |name: &str| {
        std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for file in ["herald.db", "herald.lock", "herald.db-wal", "herald.db-shm"] {
        if data.join(file).exists() {
            assert_eq!(mode(file), 0o600, "{file}");
        }
    }
    assert!(data.join("herald.db").exists());
    drop(s);
}

/// Connects, logs in as `id` and returns the first answer and, for a
/// refusal, the line after it; the connection when it was welcomed.
async fn try_login(port: u16, id: String) -> (String, Option<String>, Option<common::Conn>) {
    let mut c = common::Conn::connect(port).await;
    c.try_send(&format!("LOGIN {id}")).await;
    let first = c.try_line().await.unwrap_or_default();
    if first.starts_with("WELCOME") {
        return (first, None, Some(c));
    }
    let second = c.try_line().await;
    (first, second, None)
}

#[tokio::test]
async fn under_a_low_open_file_limit_every_connection_is_welcomed_or_refused() {
    const N: usize = 100;
    let ids: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_server"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--memory"])
        .args(["--client-ids", &ids.join(","), "--max-connections", "1000"]);
    let s = Server::spawn(cmd);
    // The warning comes before the info line that follows `listening on`.
    let log = wait_for_log(&s, "for 100 client id(s)");
    let warned = log
        .lines()
        .filter(|l| l.contains("open-file limit (64)"))
        .count();
    assert_eq!(warned, 1, "{log}");

    let port = s.port;
    let attempts = ids
        .into_iter()
        .map(|id| tokio::spawn(try_login(port, id)))
        .collect::<Vec<_>>();
    let mut welcomed = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        let (first, second, conn) = tokio::time::timeout(DEADLINE, attempt)
            .await
            .expect("a connection hung")
            .unwrap();
        match conn {
            Some(c) => welcomed.push(c),
            None => {
                assert!(first.starts_with("ERR LIMIT "), "{first:?}");
                assert_eq!(second.as_deref(), Some("BYE limit"));
                refused += 1;
            }
        }
    }
    assert!(
        !welcomed.is_empty() && welcomed.len() < 64,
        "{}",
        welcomed.len()
    );
    assert_eq!(welcomed.len() + refused, N);
    // The welcomed ones still work.
    for c in &mut welcomed {
        c.send("PING ok").await;
        assert_eq!(c.line().await, "PONG ok");
    }
}

#[tokio::test]
async fn secrets_never_reach_the_log_even_at_debug() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets");
    std::fs::write(
        &file,
        common::hash_line("1", "right-horse-staple")
            + "\n"
            + &common::hash_line("2", "other-battery")
            + "\n",
    )
    .unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "RUST_LOG=debug exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_server"))
        .args(["--bind", "127.0.0.1", "--port", "0", "--memory"])
        .args(["--secrets-file", file.to_str().unwrap()]);
    let s = Server::spawn(cmd);

    let mut good = s.connect().await;
    good.send("LOGIN 1 right-horse-staple").await;
    assert!(good.line().await.starts_with("WELCOME 1 "));
    let mut bad = s.connect().await;
    bad.send("LOGIN 2 wrong-guess-here").await;
    assert!(bad.line().await.starts_with("ERR AUTH_FAILED"));
    let mut plain = s.connect().await;
    plain.send("LOGIN 2 too many words").await;
    assert!(plain.line().await.starts_with("ERR BAD_FRAME"));

    // Debug logging is on and has logged both LOGIN frames.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let log = s.log.lock().unwrap().clone();
        if log.matches("<redacted>").count() >= 2 && log.contains("failed login as 2") {
            for secret in ["right-horse-staple", "wrong-guess-here", "too many words"] {
                assert!(!log.contains(secret), "{secret} in the log:\n{log}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(target_os = "linux")]
#[test]
fn hash_secret_at_a_terminal_asks_twice_without_echo() {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty with valid out-pointers and no name, settings or size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    // SAFETY: openpty returned these two descriptors, owned here from now on.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["hash-secret", "--client-id", "1"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // What the terminal shows: prompts, and any echo.
    let mut screen = std::fs::File::from(master.try_clone().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = screen.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    let wait_for = |needle: &str, shown: &mut Vec<u8>| {
        let deadline = Instant::now() + DEADLINE;
        while !String::from_utf8_lossy(shown).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(bytes) => shown.extend(bytes),
                Err(_) => panic!("no {needle:?}: {:?}", String::from_utf8_lossy(shown)),
            }
        }
    };
    let mut keyboard = std::fs::File::from(master);
    wait_for("secret: ", &mut shown);
    keyboard.write_all(b"pa55-w0rd\n").unwrap();
    wait_for("again: ", &mut shown);
    keyboard.write_all(b"pa55-w0rd\n").unwrap();
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "hash-secret did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("1:$argon2id$"), "{line}");
    while let Ok(bytes) = rx.try_recv() {
        shown.extend(bytes);
    }
    assert!(
        !String::from_utf8_lossy(&shown).contains("pa55"),
        "echoed: {:?}",
        String::from_utf8_lossy(&shown)
    );
}
