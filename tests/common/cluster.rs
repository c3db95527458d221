//! A broker of several nodes for black-box tests: a private PostgreSQL
//! (`pg.rs`) and N `server --database-url …` processes on one database of
//! it, each on its own loopback port. A node killed with SIGKILL restarts on
//! the same port, so a client's `--servers` list stays valid; PostgreSQL
//! can be killed and restarted too; the stored log is read straight from
//! the database. The clients that talk to it are in `cluster_clients.rs`.
//!
//! Include it next to `common` and `pg`:
//! `mod common; #[path = "common/pg.rs"] mod pg;
//! #[path = "common/cluster.rs"] mod cluster;`
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Server;
use crate::pg::PgServer;

/// How long a node may take to start (it connects to PostgreSQL first).
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Lines of each node's log shown when a test fails.
const LOG_TAIL: usize = 60;

/// Several nodes on one PostgreSQL database. Dropping it kills the nodes,
/// then PostgreSQL; when the test is failing it prints the tail of every
/// node's log first.
pub struct Cluster {
    /// The running nodes (`None` while killed). Declared before `pg` so
    /// the nodes die before the database does.
    nodes: Vec<Option<Server>>,
    ports: Vec<u16>,
    /// The allow-list every node is started with.
    pub ids: String,
    /// The database every node uses.
    pub url: String,
    /// The logs of node processes that were killed, oldest first.
    past_logs: Vec<(usize, String)>,
    pub pg: PgServer,
}

/// Starts one node at `port` (0: any); on failure its exit status and
/// stderr. (`Server::spawn` would panic without the failed process's
/// stderr, and a restart must be able to try again.)
fn try_start_node(url: &str, ids: &str, port: u16) -> Result<Server, String> {
    let port = port.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--bind", "127.0.0.1", "--port", &port])
        .args(["--client-ids", ids, "--database-url", url])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    // The first stdout line, read on a thread so the wait is bounded.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
        // Keep reading so the node never blocks on a full stdout pipe.
        let mut rest = String::new();
        while out.read_line(&mut rest).map(|n| n > 0).unwrap_or(false) {
            rest.clear();
        }
    });
    let line = rx.recv_timeout(START_DEADLINE).unwrap_or_default();
    let addr = line.trim().strip_prefix("listening on 127.0.0.1:");
    match addr.and_then(|p| p.parse().ok()) {
        Some(port) => Ok(Server { child, port, log }),
        None => {
            let _ = child.kill();
            let status = child.wait().ok();
            let _ = drain.join();
            let log = log.lock().unwrap().clone();
            Err(format!(
                "node did not start (first line {line:?}, {status:?}); its log:\n{log}"
            ))
        }
    }
}

impl Cluster {
    /// A new PostgreSQL and `n` nodes started one after the other (the
    /// first creates the schema) for the comma-separated `ids`.
    pub fn start(n: usize, ids: &str) -> Cluster {
        let pg = PgServer::start();
        let url = pg.new_database();
        let mut c = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            ids: ids.to_owned(),
            url,
            past_logs: Vec::new(),
            pg,
        };
        for _ in 0..n {
            let node = try_start_node(&c.url, ids, 0).unwrap_or_else(|e| panic!("{e}"));
            c.ports.push(node.port);
            c.nodes.push(Some(node));
        }
        c
    }

    /// A new PostgreSQL and `n` nodes started at the same moment on its
    /// empty database; every one of them must come up.
    pub fn start_together(n: usize, ids: &str) -> Cluster {
        let pg = PgServer::start();
        let url = pg.new_database();
        let starts: Vec<_> = (0..n)
            .map(|_| {
                let (url, ids) = (url.clone(), ids.to_owned());
                std::thread::spawn(move || try_start_node(&url, &ids, 0))
            })
            .collect();
        let mut c = Cluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            ids: ids.to_owned(),
            url,
            past_logs: Vec::new(),
            pg,
        };
        let mut failures = Vec::new();
        for start in starts {
            match start.join().unwrap() {
                Ok(node) => {
                    c.ports.push(node.port);
                    c.nodes.push(Some(node));
                }
                Err(e) => failures.push(e),
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {n} nodes started together failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        c
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Node `i`, which must be running.
    pub fn node(&self, i: usize) -> &Server {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// Node `i`'s port (the same across restarts).
    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    /// Every node as `127.0.0.1:P1,127.0.0.1:P2,…`, node 0 first.
    pub fn servers(&self) -> String {
        self.servers_from(0)
    }

    /// The same list rotated to start at node `first`: clients given
    /// different rotations prefer different nodes.
    pub fn servers_from(&self, first: usize) -> String {
        let n = self.len();
        (0..n)
            .map(|k| format!("127.0.0.1:{}", self.ports[(first + k) % n]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` with SIGKILL and waits for it to be gone.
    pub fn kill9(&mut self, i: usize) {
        let mut node = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        node.child.kill().unwrap();
        node.child.wait().unwrap();
        let log = node.log.lock().unwrap().clone();
        self.past_logs.push((i, log));
    }

    /// Starts node `i` again on its port; tries again (bounded) when the
    /// start fails, e.g. while the port is still held.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match try_start_node(&self.url, &self.ids, self.ports[i]) {
                Ok(node) => {
                    self.nodes[i] = Some(node);
                    return;
                }
                Err(e) if Instant::now() >= deadline => panic!("restarting node {i}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Kills PostgreSQL (the postmaster) with SIGKILL.
    pub fn kill9_pg(&mut self) {
        self.pg.kill9();
    }

    /// Starts PostgreSQL again on the same port and data.
    pub fn restart_pg(&mut self) {
        self.pg.run();
    }

    /// Runs `f` with a fresh connection to the database, on a thread of
    /// its own (the blocking client must not run inside an async runtime).
    pub fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
    ) -> T {
        let url = self.url.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)
                .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
            f(&mut c)
        })
        .join()
        .unwrap()
    }

    /// Every stored message as (seq, sender, text), in seq order, read
    /// straight from the database.
    pub fn stored(&self) -> Vec<(u64, String, String)> {
        self.query(|c| {
            c.query("SELECT seq, sender, text FROM messages ORDER BY seq", &[])
                .unwrap()
                .iter()
                .map(|r| {
                    let seq: i64 = r.get(0);
                    let text: Vec<u8> = r.get(2);
                    (seq as u64, r.get(1), String::from_utf8(text).unwrap())
                })
                .collect()
        })
    }

    /// The database's last given seq (the counter).
    pub fn counter(&self) -> u64 {
        self.query(|c| {
            let last: i64 = c.query_one("SELECT last FROM counter", &[]).unwrap().get(0);
            last as u64
        })
    }

    /// The tail of every node's log, running or killed, for a failure
    /// message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let tail = |log: &str| {
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
        };
        for (i, log) in &self.past_logs {
            out.push_str(&format!("--- node {i} (killed) ---\n{}\n", tail(log)));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(node) = node {
                let log = node.log.lock().unwrap().clone();
                out.push_str(&format!("--- node {i} ---\n{}\n", tail(&log)));
            }
        }
        out
    }
}

impl Cluster {
    /// Writes every node's whole log to a file in the temporary directory
    /// and names it on stderr, for failures the tails do not explain.
    fn save_full_logs(&self) {
        let mut all = String::new();
        for (i, log) in &self.past_logs {
            all.push_str(&format!("--- node {i} (killed) ---\n{log}\n"));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(node) = node {
                let log = node.log.lock().unwrap().clone();
                all.push_str(&format!("--- node {i} ---\n{log}\n"));
            }
        }
        let path = std::env::temp_dir().join(format!(
            "herald-cluster-{}-{}.log",
            std::process::id(),
            self.pg.port
        ));
        match std::fs::write(&path, all) {
            Ok(()) => eprintln!("every node's whole log: {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster logs at the failure:\n{}", self.logs());
            self.save_full_logs();
        }
        for node in self.nodes.iter_mut().flatten() {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

/// Polls `cond` every 20 ms until it holds; fails with `what()` after
/// `within`.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "after {within:?}: {}", what());
        std::thread::sleep(Duration::from_millis(20));
    }
}
