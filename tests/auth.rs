//! Per-client secrets: the right secret logs in, a wrong or missing one is
//! refused with AUTH_FAILED (after a delay that grows with each failure),
//! `server hash-secret` output is what the server accepts, and guessing is
//! throttled: checks wait out the penalty of their address and id, an
//! address has at most four in progress, and other logins stay fast.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hash_line, Conn, Server, DEADLINE};
use tokio::io::BufReader;
use tokio::net::TcpSocket;

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

/// A connection to the server on `port` from the loopback address `from`
/// (Linux routes all of 127/8 to loopback), a different peer address as far
/// as the server can tell.
async fn connect_from(from: &str, port: u16) -> Conn {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, w) = stream.into_split();
    Conn {
        reader: BufReader::new(r),
        writer: w,
    }
}

/// Failed checks the server logged for `id` from `from`.
fn failures_logged(s: &Server, id: &str, from: &str) -> usize {
    let needle = format!("failed login as {id} from {from}:");
    s.log.lock().unwrap().matches(&needle).count()
}

/// The wait after the n-th failure in a row (docs/security.md).
fn penalty(n: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(n.min(20) - 1)).min(Duration::from_secs(10))
}

/// The most secret checks one address can get within `window`: two at once
/// (the verifier's two threads) while it has no failures, then one at a
/// time, each after the wait the failures before it earned.
fn most_checks(window: Duration) -> usize {
    let (mut checks, mut elapsed) = (2, Duration::ZERO);
    loop {
        elapsed += penalty(checks as u32);
        if elapsed > window {
            return checks;
        }
        checks += 1;
    }
}

/// What one guesser saw.
#[derive(Default)]
struct Guesses {
    limited: u32,
    refused: u32,
    gave_up: u32,
}

/// Guesses id 1's secret until `stop`: connects, sends a wrong `LOGIN`,
/// gives up after 150 ms without an answer, closes and starts over (at most
/// one attempt per 150 ms).
async fn guess(port: u16, who: usize, stop: Instant) -> Guesses {
    let mut seen = Guesses::default();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    while Instant::now() < stop {
        tick.tick().await;
        let mut c = Conn::connect(port).await;
        c.send(&format!("LOGIN 1 guess-{who}-{n}")).await;
        n += 1;
        match tokio::time::timeout(Duration::from_millis(150), c.try_line()).await {
            Err(_) => seen.gave_up += 1,
            Ok(Some(line)) if line.starts_with("ERR LIMIT ") => seen.limited += 1,
            Ok(Some(line)) => {
                assert!(line.starts_with("ERR AUTH_FAILED "), "{line}");
                seen.refused += 1;
            }
            Ok(None) => panic!("closed without an answer"),
        }
    }
    seen
}

#[tokio::test]
async fn guessers_on_parallel_connections_get_the_throttle_rate_and_others_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = secrets_file(&dir, &[hash_line("1", "one"), hash_line("2", "two")]);
    let s = Server::start(&["--memory", "--secrets-file", &file]);
    let attack = Duration::from_secs(6);
    let start = Instant::now();
    let stop = start + attack;
    let guessers: Vec<_> = (0..20)
        .map(|who| tokio::spawn(guess(s.port, who, stop)))
        .collect();

    // Meanwhile id 2 logs in from another address, again and again.
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(500),
        Duration::from_millis(600),
    );
    while Instant::now() + Duration::from_millis(600) < stop {
        tick.tick().await;
        let t = Instant::now();
        let mut c = connect_from("127.0.0.2", s.port).await;
        c.send("LOGIN 2 two").await;
        assert_eq!(c.line().await, "WELCOME 2 0");
        samples.push(t.elapsed());
        c.send("QUIT").await;
        assert_eq!(c.line().await, "BYE quit");
    }
    tokio::time::sleep_until(stop.into()).await;
    let checked = failures_logged(&s, "1", "127.0.0.1");
    let mut seen = Guesses::default();
    for g in guessers {
        let g = g.await.unwrap();
        seen.limited += g.limited;
        seen.refused += g.refused;
        seen.gave_up += g.gave_up;
    }
    samples.sort();
    eprintln!(
        "in {attack:?}: {checked} guesses checked ({:.1}/s); guessers saw {} refusals, {} LIMIT, gave up {} times; \
         id 2's logins: median {:?}, max {:?} over {}",
        checked as f64 / attack.as_secs_f64(),
        seen.refused,
        seen.limited,
        seen.gave_up,
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        samples.len(),
    );
    assert!(checked >= 2, "the guesses were never checked");
    assert!(
        checked <= most_checks(attack),
        "{checked} guesses checked in {attack:?}, the throttle allows {}",
        most_checks(attack)
    );
    // Beyond four logins in progress, the address is told so at once.
    assert!(seen.limited > 0);
    assert!(samples.len() >= 5, "{samples:?}");
    assert!(
        samples.iter().all(|d| *d < Duration::from_secs(1)),
        "{samples:?}"
    );
    assert_eq!(failures_logged(&s, "2", "127.0.0.2"), 0);
}

#[tokio::test]
async fn a_right_secret_waits_out_the_penalty_of_its_address_and_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = secrets_file(&dir, &[hash_line("1", "right"), hash_line("2", "two")]);
    let s = Server::start(&["--memory", "--secrets-file", &file]);
    for _ in 0..3 {
        let mut c = s.connect().await;
        c.send("LOGIN 1 wrong").await;
        assert!(c.line().await.starts_with("ERR AUTH_FAILED "));
    }
    // The 4th failure from 127.0.0.1 against id 1 earns 800 ms: neither the
    // right secret of id 2 from the same address, nor the right secret of
    // id 1 from another address, is answered before that is over.
    let t = Instant::now();
    let wrong = answer_time(s.connect().await, "LOGIN 1 wrong");
    let deadline = Instant::now() + DEADLINE;
    while failures_logged(&s, "1", "127.0.0.1") < 4 {
        assert!(
            Instant::now() < deadline,
            "the 4th failure was never logged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let same_address = answer_time(s.connect().await, "LOGIN 2 two");
    let same_id = answer_time(connect_from("127.0.0.2", s.port).await, "LOGIN 1 right");
    let (line, at) = wrong.await.unwrap();
    assert!(line.starts_with("ERR AUTH_FAILED "), "{line}");
    assert!(at - t >= penalty(4), "{:?}", at - t);
    let (line, at) = same_address.await.unwrap();
    assert_eq!(line, "WELCOME 2 0");
    assert!(at - t >= penalty(4), "{:?}", at - t);
    let (line, at) = same_id.await.unwrap();
    assert_eq!(line, "WELCOME 1 0");
    assert!(at - t >= penalty(4), "{:?}", at - t);
    assert_eq!(failures_logged(&s, "1", "127.0.0.1"), 4);
}

/// Sends `login` on `c`; the task ends with the first answer and when it
/// came.
fn answer_time(mut c: Conn, login: &'static str) -> tokio::task::JoinHandle<(String, Instant)> {
    tokio::spawn(async move {
        c.send(login).await;
        let line = c.line().await;
        (line, Instant::now())
    })
}

#[tokio::test]
async fn an_address_with_four_logins_in_progress_is_refused_more_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = secrets_file(&dir, &[hash_line("1", "right"), hash_line("2", "two")]);
    let s = Server::start(&["--memory", "--secrets-file", &file]);
    for _ in 0..2 {
        let mut c = s.connect().await;
        c.send("LOGIN 1 wrong").await;
        assert!(c.line().await.starts_with("ERR AUTH_FAILED "));
    }
    // Whichever of these the server sees first is checked at once and fails
    // (the 3rd in a row); the others wait 400 ms and more for their turn,
    // one at a time, and those beyond four in progress are refused at once.
    let mut answers = Vec::new();
    for _ in 0..6 {
        let mut c = s.connect().await;
        c.send("LOGIN 1 wrong").await;
        answers.push(tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(line) = c.try_line().await {
                lines.push(line);
            }
            lines
        }));
    }
    // Another id from another address is not held back by them.
    let mut other = connect_from("127.0.0.3", s.port).await;
    other.send("LOGIN 2 two").await;
    assert_eq!(other.line().await, "WELCOME 2 0");
    // Each is answered in the end; none is left hanging.
    let mut limited = 0;
    for a in answers {
        let lines = a.await.unwrap();
        if lines[0] == "ERR LIMIT too many logins in progress from your address" {
            assert_eq!(lines[1..], ["BYE limit"]);
            limited += 1;
        } else {
            assert!(lines[0].starts_with("ERR AUTH_FAILED "), "{lines:?}");
            assert_eq!(lines[1..], ["BYE auth-failed"]);
        }
    }
    // Six at once: one checked, four waiting, and one or two refused
    // (depending on whether the first check was over when the last came).
    assert!((1..=2).contains(&limited), "{limited}");
}
