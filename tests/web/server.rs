//! The real `server` binary with its HTTP listener on, for the browser
//! tests: it reads both start lines (`listening on`, then `http on`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// A running `server --http-bind 127.0.0.1:…`, killed when dropped.
pub struct WebServer {
    child: Child,
    /// The TCP protocol port.
    pub tcp_port: u16,
    /// The HTTP port (page at `/`, WebSocket at `/ws`).
    pub http_port: u16,
    /// stderr, drained by a thread so the server never blocks on it.
    pub log: Arc<Mutex<String>>,
}

impl WebServer {
    /// Starts `server --bind 127.0.0.1 --port 0 --http-bind 127.0.0.1:0`
    /// plus `args`.
    pub fn start(args: &[&str]) -> WebServer {
        WebServer::start_on(0, 0, args)
    }

    /// Starts a server on the given ports (0: any), as a restart on the
    /// same ports needs.
    pub fn start_on(tcp_port: u16, http_port: u16, args: &[&str]) -> WebServer {
        let tcp = tcp_port.to_string();
        let http = format!("127.0.0.1:{http_port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--bind", "127.0.0.1", "--port", &tcp, "--http-bind", &http])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let tcp_port = port_after(&mut out, "listening on ", &log);
        let http_port = port_after(&mut out, "http on ", &log);
        // Keep draining stdout so that later lines never block the server.
        std::thread::spawn(move || for _ in out.lines().map_while(Result::ok) {});
        WebServer {
            child,
            tcp_port,
            http_port,
            log,
        }
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.http_port)
    }

    /// Sends `SIGTERM` and waits (bounded) for a clean exit.
    pub fn stop(mut self) {
        crate::common::signal_child(&self.child, "TERM");
        let code = crate::common::wait_child(&mut self.child, super::DEADLINE);
        assert_eq!(code, Some(0), "server log:\n{}", self.log_text());
    }

    /// What the server logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the next stdout line, which must be `prefix` then `127.0.0.1:PORT`.
fn port_after(out: &mut impl BufRead, prefix: &str, log: &Arc<Mutex<String>>) -> u16 {
    let mut line = String::new();
    let n = out.read_line(&mut line).expect("read the server's stdout");
    let addr = line.trim().strip_prefix(prefix).unwrap_or_else(|| {
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        panic!("expected `{prefix}…` ({n} bytes), got {line:?}; server log:\n{log}")
    });
    let port = addr.strip_prefix("127.0.0.1:").and_then(|p| p.parse().ok());
    port.unwrap_or_else(|| panic!("bad address in {line:?}"))
}

/// Writes a secrets file in `dir` with one `id:hash` line per
/// `(id, secret)`, hashed by `server hash-secret`; returns its path.
pub fn secrets_file(dir: &Path, pairs: &[(&str, &str)]) -> String {
    let lines: Vec<String> = pairs
        .iter()
        .map(|(id, secret)| crate::common::hash_line(id, secret))
        .collect();
    let path = dir.join("secrets");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the secrets file");
    path.to_str().expect("utf-8 path").to_owned()
}
