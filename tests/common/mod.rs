//! Helpers for tests that run the real `server` binary and talk to it over
//! loopback sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long any single expectation may wait before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `server` process, killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// stderr, drained by a thread so the server never blocks on it.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `server` with `args` (plus `--bind 127.0.0.1 --port 0`) and
    /// waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Server {
        let mut all = vec!["--bind", "127.0.0.1", "--port", "0"];
        all.extend_from_slice(args);
        Server::start_raw(&all)
    }

    /// Starts `server` with exactly `args` (they must bind 127.0.0.1).
    pub fn start_raw(args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.args(args);
        Server::spawn(cmd)
    }

    /// A durable server on loopback at `port` (0: any) over `dir`, for the
    /// comma-separated `ids`; the same port and directory again restart it.
    pub fn durable_on(dir: &std::path::Path, port: u16, ids: &str) -> Server {
        let port = port.to_string();
        Server::start_raw(&[
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--client-ids",
            ids,
            "--data-dir",
            dir.to_str().unwrap(),
        ])
    }

    /// Runs `cmd` (which must end up exec'ing the server) and waits for its
    /// `listening on` line.
    pub fn spawn(cmd: Command) -> Server {
        Server::spawn_lines(cmd, 0).0
    }

    /// Starts `server` with `args` (plus `--bind 127.0.0.1 --port 0
    /// --http-bind 127.0.0.1:0`) and waits for its `listening on` and
    /// `http on` lines; returns the HTTP port too.
    pub fn start_http(args: &[&str]) -> (Server, u16) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--http-bind",
            "127.0.0.1:0",
        ]);
        cmd.args(args);
        let (server, lines) = Server::spawn_lines(cmd, 1);
        let addr = lines[0]
            .strip_prefix("http on 127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected second line {:?}", lines[0]));
        (server, addr.parse().unwrap())
    }

    /// [`Server::spawn`], then reads `more` further stdout lines and
    /// returns them; the rest of stdout is then read and dropped by a
    /// thread, so the server never writes to a closed pipe.
    pub fn spawn_lines(mut cmd: Command, more: usize) -> (Server, Vec<String>) {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        stdout.read_line(&mut line).expect("read listening line");
        let mut lines = Vec::new();
        for _ in 0..more {
            let mut next = String::new();
            stdout.read_line(&mut next).expect("read a start line");
            lines.push(next.trim_end().to_owned());
        }
        if more > 0 {
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        }
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        (Server { child, port, log }, lines)
    }

    pub async fn connect(&self) -> Conn {
        Conn::connect(self.port).await
    }

    /// Sends `n` messages of `size` bytes as `id`, pipelined, and waits for
    /// every `SENT` (the server must be empty: seqs are counted from 1).
    /// Message `i` (from 0) starts with `{i:08}-`, padded with `p`.
    pub async fn fill(&self, id: &str, n: usize, size: usize) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let (c, _) = self.login(id).await;
        let Conn {
            mut reader,
            mut writer,
        } = c;
        let answers = tokio::spawn(async move {
            let mut line = Vec::new();
            for i in 1..=n {
                line.clear();
                let got = tokio::time::timeout(DEADLINE, reader.read_until(b'\n', &mut line))
                    .await
                    .expect("timed out waiting for SENT")
                    .unwrap();
                assert!(got > 0, "connection closed after {i} SENTs");
                assert_eq!(line, format!("SENT {i}\n").as_bytes());
            }
        });
        // One frame, its number rewritten for each message.
        let mut frame = format!("SEND {:08}-{}\n", 0, "p".repeat(size - 9)).into_bytes();
        for i in 0..n {
            frame[5..13].copy_from_slice(format!("{i:08}").as_bytes());
            writer.write_all(&frame).await.unwrap();
        }
        answers.await.unwrap();
    }

    /// A connection that is logged in as `id` and has read its WELCOME;
    /// returns the announced backlog size too.
    pub async fn login(&self, id: &str) -> (Conn, u64) {
        Conn::login(self.port, id).await
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the server to exit and returns its status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's resident set high-water mark in KiB (Linux).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw protocol connection.
pub struct Conn {
    pub reader: AsyncBufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Conn {
    /// A connection to `port` that is logged in as `id` and has read its
    /// WELCOME; returns the announced backlog size too.
    pub async fn login(port: u16, id: &str) -> (Conn, u64) {
        let mut c = Conn::connect(port).await;
        c.send(&format!("LOGIN {id}")).await;
        let welcome = c.line().await;
        let pending = welcome
            .strip_prefix(&format!("WELCOME {id} "))
            .unwrap_or_else(|| panic!("expected WELCOME, got {welcome:?}"))
            .parse()
            .unwrap();
        (c, pending)
    }

    pub async fn connect(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        Conn {
            reader: AsyncBufReader::new(r),
            writer: w,
        }
    }

    /// Writes one frame (a newline is added).
    pub async fn send(&mut self, frame: &str) {
        self.writer.write_all(frame.as_bytes()).await.unwrap();
        self.writer.write_all(b"\n").await.unwrap();
    }

    /// Writes one frame, reporting instead of panicking when the server has
    /// already closed the connection.
    pub async fn try_send(&mut self, frame: &str) -> bool {
        let line = format!("{frame}\n");
        self.writer.write_all(line.as_bytes()).await.is_ok()
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next line from the server, without its newline; panics on EOF or
    /// after the deadline.
    pub async fn line(&mut self) -> String {
        self.try_line()
            .await
            .expect("connection closed while a line was expected")
    }

    /// The next line, or `None` at EOF.
    pub async fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(DEADLINE, self.reader.read_until(b'\n', &mut buf))
            .await
            .expect("timed out waiting for the server")
            .expect("read failed");
        if n == 0 {
            return None;
        }
        assert_eq!(buf.pop(), Some(b'\n'), "line without newline: {buf:?}");
        Some(String::from_utf8(buf).expect("server sent invalid UTF-8"))
    }

    /// Asserts the server closes the connection next.
    pub async fn expect_eof(&mut self) {
        if let Some(line) = self.try_line().await {
            panic!("expected the connection to close, got {line:?}");
        }
    }

    /// Reads `n` MSG frames and returns (seq, from, text) for each.
    pub async fn msgs(&mut self, n: usize) -> Vec<(u64, String, String)> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let line = self.line().await;
            out.push(parse_msg(&line).unwrap_or_else(|| panic!("expected MSG, got {line:?}")));
        }
        out
    }
}

/// Splits `MSG <seq> <unix_ms> <from> <text>`.
pub fn parse_msg(line: &str) -> Option<(u64, String, String)> {
    let rest = line.strip_prefix("MSG ")?;
    let mut parts = rest.splitn(4, ' ');
    let seq = parts.next()?.parse().ok()?;
    let _ms: u64 = parts.next()?.parse().ok()?;
    let from = parts.next()?.to_owned();
    let text = parts.next()?.to_owned();
    Some((seq, from, text))
}

/// A `client` command for `id` on `port`, all three streams piped.
pub fn client_command(port: u16, id: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_client"));
    c.args([
        "--client-id",
        id,
        "--server-ip",
        "127.0.0.1",
        "--port",
        &port.to_string(),
    ])
    .args(extra)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// A `client` command for `id` failing over between `servers`
/// (`host:port,…`, given as `-servers`, the seed's spelling), all three
/// streams piped.
pub fn servers_client_command(servers: &str, id: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_client"));
    c.args(["--client-id", id, "-servers", servers])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Streams the lines of a child's output into a channel.
pub fn lines_of(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs `bench --json ARGS` against `port` and returns its JSON report.
pub fn run_bench(port: u16, args: &[&str]) -> serde_json::Value {
    let port = port.to_string();
    run_bench_args(&[&["--port", &port][..], args].concat())
}

/// Runs `bench --json ARGS` (which name their servers) and returns its
/// JSON report.
pub fn run_bench_args(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

/// Sends a signal (`TERM`, `KILL`, …) to a child process.
pub fn signal_child(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (bounded by `within`) for a child to exit; its status code.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(std::time::Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `tag`-ca.pem, `tag`-server.pem and `tag`-server.key into `dir`:
/// a private CA and a server certificate for `names`; returns their paths.
pub fn make_certs_for(
    dir: &std::path::Path,
    tag: &str,
    names: &[&str],
) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let path = |name: &str| {
        dir.join(format!("{tag}-{name}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("server.pem"), cert.pem()).unwrap();
    std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

/// Waits (bounded by `within`) for the next line that satisfies `want`.
pub fn wait_for(
    lines: &std::sync::mpsc::Receiver<String>,
    within: Duration,
    mut want: impl FnMut(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if want(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no such line within {within:?}: {e}"),
        }
    }
}

/// A fake server's side of one connection, for tests that play the
/// server to a real `client`.
pub struct Fake {
    reader: AsyncBufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Fake {
    /// Accepts the next connection on `listener` (bounded by [`DEADLINE`]).
    pub async fn accept(listener: &tokio::net::TcpListener) -> Fake {
        let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("the client did not connect")
            .unwrap();
        Fake::from(stream)
    }

    /// Wraps an accepted connection.
    pub fn from(stream: TcpStream) -> Fake {
        let (r, w) = stream.into_split();
        Fake {
            reader: AsyncBufReader::new(r),
            writer: w,
        }
    }

    /// Writes raw bytes to the client.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next line from the client, or `None` once it closed.
    pub async fn line(&mut self) -> Option<String> {
        let mut buf = String::new();
        let n = tokio::time::timeout(DEADLINE, self.reader.read_line(&mut buf))
            .await
            .expect("the client said nothing")
            .ok()?;
        (n > 0).then(|| buf.trim_end().to_owned())
    }
}

/// `server hash-secret --client-id ID` with `secret` on stdin: one
/// `id:hash` line for a secrets file.
pub fn hash_line(id: &str, secret: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["hash-secret", "--client-id", id])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs the server with `args` (at `RUST_LOG=info`, then `env`) and waits,
/// bounded, for it to exit: for starts that must fail.
pub fn failed_start(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A failed start as the CLI contract says: exit 1, nothing on stdout, and
/// exactly one line on stderr, `error: …` holding `needle`.
pub fn assert_one_line_failure(out: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// After a crash following 2,000 `SEND`s `m0`…`m1999` from `w`: `r` gets
/// all of them in order, and `w`'s next `SEND` is seq 2001.
pub async fn assert_2000_survived(s: &Server) {
    let (mut r, pending) = s.login("r").await;
    assert_eq!(pending, 2000);
    for (i, (seq, from, text)) in r.msgs(2000).await.into_iter().enumerate() {
        assert_eq!(
            (seq, from.as_str(), text),
            (i as u64 + 1, "w", format!("m{i}"))
        );
    }
    let (mut w, _) = s.login("w").await;
    w.send("SEND after the crash").await;
    assert_eq!(w.line().await, "SENT 2001");
}

/// xorshift64*: a small, seedable random source for soak schedules, so a
/// failing run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pseudo-random number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
