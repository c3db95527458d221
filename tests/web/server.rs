//! The real `server` binary with its HTTP listener on, for the browser
//! tests, on chosen ports so that a restart keeps the page's origin.

use std::path::Path;
use std::process::Command;

use crate::common::Server;

/// A running `server --http-bind 127.0.0.1:…`, killed when dropped.
pub struct WebServer {
    server: Server,
    /// The TCP protocol port.
    pub tcp_port: u16,
    /// The HTTP port (page at `/`, WebSocket at `/ws`).
    pub http_port: u16,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.args(["--bind", "127.0.0.1", "--port", &tcp_port.to_string()])
            .args(["--http-bind", &format!("127.0.0.1:{http_port}")])
            .args(args);
        let (server, lines) = Server::spawn_lines(cmd, 1);
        let http_port = lines[0]
            .strip_prefix("http on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("expected `http on 127.0.0.1:PORT`, got {:?}", lines[0]));
        WebServer {
            tcp_port: server.port,
            http_port,
            server,
        }
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.http_port)
    }

    /// Sends `SIGTERM` and waits (bounded) for a clean exit.
    pub fn stop(mut self) {
        self.server.signal("TERM");
        let code = self.server.wait_exit();
        let log = self
            .server
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        assert_eq!(code, Some(0), "server log:\n{log}");
    }
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
