//! The admin listener of the real `server` binary (`--admin-bind`): its
//! `admin on` line, `/metrics` parsed strictly in both text formats and
//! checked against a known workload over TCP, `/healthz`, and `/readyz`
//! following a PostgreSQL store that goes away and comes back.

mod common;
#[path = "common/exposition.rs"]
mod exposition;
#[path = "common/pg.rs"]
mod pg;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hash_line, lines_of, Conn, Server, DEADLINE};
use exposition::{parse_exposition, Format};

/// A broker started with `--admin-bind 127.0.0.1:0`.
struct Broker {
    server: Server,
    admin: SocketAddr,
    /// Keeps the server's stdout read.
    _stdout: std::sync::mpsc::Receiver<String>,
}

/// Starts `server` on loopback with an admin listener and `args`; checks
/// its first two stdout lines: `listening on …`, then `admin on …`.
fn start(args: &[&str]) -> Broker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .args(["--admin-bind", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    let stdout = lines_of(child.stdout.take().unwrap());
    let next_line = |what: &str| {
        stdout
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|e| panic!("no {what} line ({e}): {}", log.lock().unwrap()))
    };
    let first = next_line("listening on");
    let second = next_line("admin on");
    let main: SocketAddr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .parse()
        .unwrap();
    let admin: SocketAddr = second
        .strip_prefix("admin on ")
        .unwrap_or_else(|| panic!("second line {second:?}"))
        .parse()
        .unwrap();
    assert_eq!(admin.ip().to_string(), "127.0.0.1");
    assert_ne!(admin.port(), 0, "the admin line names the port bound");
    assert_ne!(admin.port(), main.port());
    Broker {
        server: Server {
            child,
            port: main.port(),
            log,
        },
        admin,
        _stdout: stdout,
    }
}

/// An HTTP response.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over a fresh HTTP/1.1 connection (closed after the reply),
/// with an `Accept` header when given.
fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Reply {
    let mut s = std::net::TcpStream::connect_timeout(&addr, DEADLINE).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    if let Some(len) = reply.header("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), reply.body.len());
    }
    reply
}

/// Calls `f` until it gives a value, every 50 ms, for at most `within`.
fn poll<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/metrics` in both formats, each parsed strictly; they must agree.
fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let om = get(
        admin,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert_eq!(om.status, 200);
    assert!(
        om.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0"),
        "{:?}",
        om.header("content-type")
    );
    let text = get(admin, "/metrics", None);
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        text.header("content-type")
    );
    let a = parse_exposition(&om.body, Format::OpenMetrics);
    let b = parse_exposition(&text.body, Format::Prometheus);
    // The same series in both: the second scrape may only have seen more.
    let mut names_a: Vec<&String> = a.keys().collect();
    let mut names_b: Vec<&String> = b.keys().collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    b
}

fn value(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no {series} in {m:#?}"))
}

/// A connection that counts the bytes it writes and reads.
struct Counted {
    conn: Conn,
    sent: usize,
    read: usize,
}

impl Counted {
    async fn connect(port: u16) -> Counted {
        Counted {
            conn: Conn::connect(port).await,
            sent: 0,
            read: 0,
        }
    }

    async fn send(&mut self, frame: &str) {
        self.conn.send(frame).await;
        self.sent += frame.len() + 1;
    }

    async fn line(&mut self) -> String {
        let l = self.conn.line().await;
        self.read += l.len() + 1;
        l
    }

    /// Reads until the server closes.
    async fn until_eof(&mut self) {
        while let Some(l) = self.conn.try_line().await {
            self.read += l.len() + 1;
        }
    }
}

fn secrets_file(dir: &tempfile::TempDir, lines: &[String]) -> String {
    let path = dir.path().join("secrets");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_owned()
}

const SENDS: usize = 5;

#[tokio::test]
async fn the_metrics_count_a_known_workload() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b", "c", "d"];
    let hashes: Vec<String> = ids
        .iter()
        .map(|id| hash_line(id, &format!("s-{id}")))
        .collect();
    let file = secrets_file(&dir, &hashes);
    let data = dir.path().join("data");
    let mut broker = start(&[
        "--secrets-file",
        &file,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let admin = broker.admin;

    let before = scrape(admin);
    assert_eq!(value(&before, "herald_logins_total"), 0.0);
    assert_eq!(value(&before, "herald_head_seq"), 0.0);

    let port = broker.server.port;
    let mut conns = Vec::new();
    for id in ["a", "b", "c"] {
        let mut c = Counted::connect(port).await;
        c.send(&format!("LOGIN {id} s-{id}")).await;
        assert_eq!(c.line().await, format!("WELCOME {id} 0"));
        conns.push(c);
    }
    for i in 0..SENDS {
        conns[0].send(&format!("SEND m{i}")).await;
    }
    for i in 0..SENDS {
        assert_eq!(conns[0].line().await, format!("SENT {}", i + 1));
    }
    for c in &mut conns[1..] {
        for i in 0..SENDS {
            let line = c.line().await;
            let (seq, from, text) = common::parse_msg(&line).unwrap();
            assert_eq!(
                (seq, from.as_str(), text),
                (i as u64 + 1, "a", format!("m{i}"))
            );
        }
    }
    // d logs in with a backlog of every message and is replayed it.
    let mut d = Counted::connect(port).await;
    d.send("LOGIN d s-d").await;
    assert_eq!(d.line().await, format!("WELCOME d {SENDS}"));
    for _ in 0..SENDS {
        assert!(d.line().await.starts_with("MSG "));
    }
    conns.push(d);

    // Refusals: an id not on the list, and a wrong secret.
    let mut unknown = Counted::connect(port).await;
    unknown.send("LOGIN zz whatever").await;
    assert!(unknown.line().await.starts_with("ERR UNKNOWN_CLIENT "));
    assert_eq!(unknown.line().await, "BYE unknown-client");
    unknown.until_eof().await;
    let mut wrong = Counted::connect(port).await;
    wrong.send("LOGIN b not-the-secret").await;
    assert!(wrong.line().await.starts_with("ERR AUTH_FAILED "));
    assert_eq!(wrong.line().await, "BYE auth-failed");
    wrong.until_eof().await;

    let sent: usize = conns.iter().map(|c| c.sent).sum::<usize>() + unknown.sent + wrong.sent;
    let read: usize = conns.iter().map(|c| c.read).sum::<usize>() + unknown.read + wrong.read;
    // Closing sessions and the last written bytes are counted as they
    // finish: wait for the counts to settle where they must end up.
    let m = poll("the connection counts to settle", DEADLINE, || {
        let m = scrape(admin);
        let settled = value(&m, "herald_connections_open{transport=\"tcp\"}") == 4.0
            && value(&m, "herald_sent_bytes_total") == read as f64
            && value(&m, "herald_sessions_replaying") == 0.0;
        settled.then_some(m)
    });
    let expect = [
        ("herald_connections_accepted_total{transport=\"tcp\"}", 6.0),
        ("herald_connections_accepted_total{transport=\"tls\"}", 0.0),
        ("herald_connections_open{transport=\"tls\"}", 0.0),
        ("herald_logins_total", 4.0),
        (
            "herald_login_refusals_total{reason=\"unknown_client\"}",
            1.0,
        ),
        ("herald_login_refusals_total{reason=\"auth_failed\"}", 1.0),
        ("herald_login_refusals_total{reason=\"limit\"}", 0.0),
        // With a secrets file an unknown id's secret is checked too.
        ("herald_auth_failures_total", 2.0),
        ("herald_messages_stored_total", SENDS as f64),
        // b and c live, d replayed.
        ("herald_deliveries_total", 3.0 * SENDS as f64),
        ("herald_received_bytes_total", sent as f64),
        ("herald_sent_bytes_total", read as f64),
        ("herald_head_seq", SENDS as f64),
        ("herald_sessions_paused", 0.0),
        ("herald_commit_batch_messages_sum", SENDS as f64),
    ];
    for (series, want) in expect {
        assert_eq!(value(&m, series), want, "{series}");
    }
    let commits = value(&m, "herald_commit_batch_messages_count");
    assert!((1.0..=SENDS as f64).contains(&commits), "{commits} commits");
    assert_eq!(value(&m, "herald_commit_duration_seconds_count"), commits);
    assert_eq!(
        value(&m, "herald_commit_duration_seconds_bucket{le=\"+Inf\"}"),
        commits
    );

    let health = get(admin, "/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = get(admin, "/readyz", None);
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    assert_eq!(get(admin, "/nothing-here", None).status, 404);

    // The admin listener stops with the server, which still says BYE.
    broker.server.signal("TERM");
    for c in &mut conns {
        assert_eq!(c.line().await, "BYE shutdown");
    }
    assert_eq!(broker.server.wait_exit(), Some(0));
}

#[test]
fn readyz_follows_a_postgresql_store_that_goes_away_and_comes_back() {
    let mut pg = pg::PgServer::start();
    let url = pg.new_database();
    let broker = start(&["--client-ids", "1,2", "--database-url", &url]);
    let admin = broker.admin;
    let ready = get(admin, "/readyz", None);
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    pg.kill9();
    let down = poll("/readyz to say 503", DEADLINE, || {
        let r = get(admin, "/readyz", None);
        (r.status == 503).then_some(r)
    });
    assert!(down.body.starts_with("not ready: "), "{:?}", down.body);
    assert!(down.body.ends_with('\n'));
    assert_eq!(down.body.lines().count(), 1, "{:?}", down.body);
    // Alive all the same.
    assert_eq!(get(admin, "/healthz", None).status, 200);

    pg.run();
    let up = poll("/readyz to say 200 again", Duration::from_secs(30), || {
        let r = get(admin, "/readyz", None);
        (r.status == 200).then_some(r)
    });
    assert_eq!(up.body, "ready\n");
}

#[test]
fn a_taken_admin_port_fails_the_start_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = common::failed_start(
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--memory",
            "--client-ids",
            "1",
            "--admin-bind",
            &addr,
        ],
        &[],
    );
    common::assert_one_line_failure(&out, &addr);
}

#[test]
fn without_admin_bind_there_is_no_admin_line() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--memory",
            "--client-ids",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let first = stdout.recv_timeout(DEADLINE).unwrap();
    assert!(first.starts_with("listening on "), "{first}");
    common::signal_child(&child, "TERM");
    assert_eq!(common::wait_child(&mut child, DEADLINE), Some(0));
    // stdout ends with the process: no second line came.
    let rest: Vec<String> = stdout.iter().collect();
    assert!(rest.is_empty(), "{rest:?}");
}

/// Messages of the backlog in the replay test, and their size: 30 MB,
/// far more than loopback socket buffers and the delivery window hold, so
/// the reader cannot have been pushed all of it before it reads.
const BACKLOG: usize = 1500;
const BACKLOG_TEXT: usize = 20_000;

/// PINGs sent without reading the PONGs, and their token size: 40 MB of
/// answers, more than the socket buffers hold, so replies pile up in the
/// session until it pauses reading.
const PINGS: usize = 5000;
const PING_TOKEN: usize = 8000;

/// Waits (every 50 ms, bounded) for the gauge `name` to read `want`,
/// scraping off the runtime's thread so that the test's tasks go on.
async fn wait_gauge(admin: SocketAddr, name: &'static str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = tokio::task::spawn_blocking(move || value(&scrape(admin), name))
            .await
            .unwrap();
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn paused_and_replaying_sessions_are_counted_while_they_last() {
    let broker = start(&["--memory", "--client-ids", "w,r,p"]);
    let admin = broker.admin;

    // p sends PINGs and reads nothing until its session has paused (before
    // there is a backlog that p would be sent too).
    let (p, _) = broker.server.login("p").await;
    let Conn {
        mut reader,
        mut writer,
    } = p;
    let writing = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let ping = format!("PING {}\n", "t".repeat(PING_TOKEN));
        for _ in 0..PINGS {
            writer.write_all(ping.as_bytes()).await.unwrap();
        }
        writer
    });
    wait_gauge(admin, "herald_sessions_paused", 1.0).await;
    let mut line = String::new();
    for _ in 0..PINGS {
        use tokio::io::AsyncBufReadExt;
        line.clear();
        tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(
            line.starts_with("PONG t"),
            "{:?}",
            &line[..line.len().min(40)]
        );
    }
    let writer = tokio::time::timeout(DEADLINE, writing)
        .await
        .unwrap()
        .unwrap();
    wait_gauge(admin, "herald_sessions_paused", 0.0).await;
    drop((reader, writer));

    // A backlog for r, stored in rounds of 100 pipelined SENDs.
    let (mut w, _) = broker.server.login("w").await;
    let text = "x".repeat(BACKLOG_TEXT);
    for round in 0..BACKLOG / 100 {
        for _ in 0..100 {
            w.send(&format!("SEND {text}")).await;
        }
        for i in 0..100 {
            assert_eq!(w.line().await, format!("SENT {}", round * 100 + i + 1));
        }
    }
    let (mut r, pending) = broker.server.login("r").await;
    assert_eq!(pending, BACKLOG as u64);
    wait_gauge(admin, "herald_sessions_replaying", 1.0).await;
    assert_eq!(r.msgs(BACKLOG).await.len(), BACKLOG);
    wait_gauge(admin, "herald_sessions_replaying", 0.0).await;
}

#[test]
fn a_tls_connection_is_counted_under_its_transport() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::make_certs_for(dir.path(), "m", &["localhost", "127.0.0.1"]);
    let broker = start(&[
        "--memory",
        "--client-ids",
        "1",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let mut client = common::client_command(broker.server.port, "1", &["--tls", "--ca-file", &ca])
        .spawn()
        .unwrap();
    let err = lines_of(client.stderr.take().unwrap());
    common::wait_for(&err, DEADLINE, |l| l.starts_with("logged in as 1"));
    let m = scrape(broker.admin);
    assert_eq!(value(&m, "herald_connections_open{transport=\"tls\"}"), 1.0);
    assert_eq!(
        value(&m, "herald_connections_accepted_total{transport=\"tls\"}"),
        1.0
    );
    assert_eq!(value(&m, "herald_connections_open{transport=\"tcp\"}"), 0.0);
    assert_eq!(value(&m, "herald_logins_total"), 1.0);
    client.kill().unwrap();
    client.wait().unwrap();
    poll("the TLS connection to be counted closed", DEADLINE, || {
        let m = scrape(broker.admin);
        (value(&m, "herald_connections_open{transport=\"tls\"}") == 0.0).then_some(())
    });
}

#[test]
fn the_exposition_parser_refuses_what_a_scraper_would() {
    let refused = |text: &'static str, format: Format| {
        std::panic::catch_unwind(|| parse_exposition(text, format)).is_err()
    };
    let good = "# HELP x_total Xs.\n# TYPE x_total counter\nx_total 1\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let m = parse_exposition(good, Format::Prometheus);
    assert_eq!(m.get("h_bucket{le=\"+Inf\"}"), Some(&2.0));
    assert_eq!(m.get("x_total"), Some(&1.0));
    assert!(!refused(
        "# TYPE x counter\nx_total{a=\"q\\\"\"} 1\n# EOF\n",
        Format::OpenMetrics
    ));
    for (text, format) in [
        // OpenMetrics counters are sampled as _total; 0.0.4 ones by name.
        ("# TYPE x counter\nx 1\n# EOF\n", Format::OpenMetrics),
        ("# TYPE x counter\nx_total 1\n", Format::Prometheus),
        // No # EOF, or something after it.
        ("# TYPE x gauge\nx 1\n", Format::OpenMetrics),
        ("# TYPE x gauge\nx 1\n# EOF\nx 2\n", Format::OpenMetrics),
        // A sample without a TYPE, of another family, or twice.
        ("x 1\n", Format::Prometheus),
        ("# TYPE x gauge\ny 1\n", Format::Prometheus),
        ("# TYPE x gauge\nx 1\nx 2\n", Format::Prometheus),
        // A family split in two, a HELP after its TYPE, a bad line.
        (
            "# TYPE x gauge\nx{a=\"1\"} 1\n# TYPE y gauge\ny 1\n# HELP x again\n",
            Format::Prometheus,
        ),
        ("# TYPE x gauge\n# HELP x late\nx 1\n", Format::Prometheus),
        ("# TYPE x gauge\nx 1 1700000000\n", Format::Prometheus),
        ("# TYPE x gauge\nx{a=1} 1\n", Format::Prometheus),
        ("# TYPE x gauge\nx one\n", Format::Prometheus),
        ("# TYPE h histogram\nh_bucket 1\n", Format::Prometheus),
        ("# comment\n# TYPE x gauge\nx 1\n", Format::Prometheus),
    ] {
        assert!(refused(text, format), "accepted {text:?}");
    }
}
